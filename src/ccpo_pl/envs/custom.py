"""Any gymnasium env that reports a per-step cost, as a task of the `gymnasium` suite (`env=custom`).

`env.id` names the env as `module:Class` (any callable returning a `gymnasium.Env`, called with `env.kwargs`), as
`module:Id` (gymnasium's own form: import the module, which registers `Id`, then `gymnasium.make`) or as an id
already registered with gymnasium. The module is imported as Python imports anything: from the working directory
under `python -m`, else from `PYTHONPATH` or an installed package.

The cost is read from `info["cost"]` or from Safety-Gymnasium's 6-tuple step (obs, reward, cost, terminated,
truncated, info); `CostInInfo` turns the second into the first, and `ccpo_pl.envs.base.make_base_env` wraps the
env in TorchRL's `GymWrapper` with the `CostReader` of the bullet-safety-gym envs. `check_gym_env` builds the env
once, checks its spaces and that a first reset and step report a cost, and raises a one-line `ConfigError` naming
what is wrong; `make_env` calls it before building a batch, so a bad env is refused before a run writes anything.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from ccpo_pl.errors import ConfigError

SIX_TUPLE = "a 6-tuple (obs, reward, cost, terminated, truncated, info)"
SPACES = ("a 1-D gymnasium.spaces.Box observation space and a 1-D Box action space with bounds [-1, 1] "
          "(gymnasium.wrappers.RescaleAction maps another box there)")


class MissingCost(ValueError):
    """A step that reports no cost (`CostInInfo`)."""


def _line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class CostInInfo(gym.Wrapper):
    """Passes `info["cost"]` on as a float, or moves a 6-tuple step's cost there; a step with neither raises
    `MissingCost`."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self.env_id = env_id

    def step(self, action) -> tuple[Any, float, bool, bool, dict]:
        out = self.env.step(action)
        if len(out) == 6:
            obs, reward, cost, terminated, truncated, info = out
            info = dict(info)
        elif len(out) == 5 and isinstance(out[4], Mapping) and "cost" in out[4]:
            obs, reward, terminated, truncated, info = out
            info, cost = dict(info), info["cost"]
        else:
            keys = sorted(out[4]) if len(out) == 5 and isinstance(out[4], Mapping) else None
            got = f"a 5-tuple whose info has keys {keys}" if keys is not None else f"a {len(out)}-tuple"
            raise MissingCost(f"env.id={self.env_id!r}: its step reports no cost; give the cost in info['cost'] or "
                              f"as {SIX_TUPLE} (the step returned {got})")
        info["cost"] = float(np.asarray(cost, dtype=np.float64).reshape(()))
        return obs, reward, terminated, truncated, info


def _registered(env_id: str, full_id: str, known: str) -> None:
    if env_id not in gym.registry:
        near = difflib.get_close_matches(env_id, list(gym.registry), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"env.id={full_id!r}: {known}no gymnasium id {env_id!r} is registered{hint}; env.id must "
                          f"be 'module:Class', 'module:Id' or a registered gymnasium id")


def build_gym_env(env_id: str, kwargs: Mapping | None = None) -> gym.Env:
    """The gymnasium env `env_id` names (see the module docstring), built with `kwargs`; a `ConfigError` where the
    module does not import, the name is neither an attribute of it nor a registered id, or building fails."""
    kwargs = dict(kwargs or {})
    module_name, sep, name = env_id.rpartition(":")
    target = None
    if sep:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - ModuleNotFoundError, or the module's own import failing
            raise ConfigError(f"env.id={env_id!r}: cannot import module {module_name!r} ({_line(err)}); env.id must "
                              f"be 'module:Class' with the module importable (from the working directory under "
                              f"python -m, or on PYTHONPATH)") from None
        target = getattr(module, name, None)
        if target is None:
            _registered(name, env_id, f"module {module_name!r} has no {name!r} and ")
    else:
        _registered(env_id, env_id, "")
    try:
        env = target(**kwargs) if target is not None else gym.make(name, disable_env_checker=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - whatever the user's constructor raises
        raise ConfigError(f"env.id={env_id!r}: building it with env.kwargs={kwargs} failed ({_line(err)})") from None
    if not isinstance(env, gym.Env):
        raise ConfigError(f"env.id={env_id!r} gave a {type(env).__name__}, not a gymnasium.Env")
    return env


def _check_spaces(env: gym.Env, env_id: str) -> None:
    obs, act = env.observation_space, env.action_space
    for what, space in (("observation", obs), ("action", act)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(f"env.id={env_id!r}: {what} space {space} is not supported; env=custom needs {SPACES}")
    if not (np.all(act.low == -1.0) and np.all(act.high == 1.0)):
        raise ConfigError(f"env.id={env_id!r}: action space {act} is not supported; env=custom needs {SPACES}")


@functools.lru_cache(maxsize=16)
def _checked(env_id: str, kwargs_json: str) -> None:
    env = build_gym_env(env_id, json.loads(kwargs_json))
    try:
        _check_spaces(env, env_id)
        try:
            env.reset(seed=0)
            CostInInfo(env, env_id).step(env.action_space.sample())
        except MissingCost as err:
            raise ConfigError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - whatever the user's env raises
            raise ConfigError(f"env.id={env_id!r}: its first reset and step failed ({_line(err)})") from None
    finally:
        env.close()


def check_gym_env(env_id: str, kwargs: Mapping | None = None) -> None:
    """Build the env once, check its spaces (`SPACES`) and that a first reset and step report a cost; a one-line
    `ConfigError` naming what is wrong. Remembered per (id, kwargs) in this process."""
    _checked(env_id, json.dumps(dict(kwargs or {}), sort_keys=True, default=str))
