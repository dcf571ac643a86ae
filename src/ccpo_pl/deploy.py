"""Deploy one policy pi(a|s, eps) and pick the threshold eps at run time.

`load` turns a run directory or checkpoint of any algorithm into a `Policy` (without building an env or importing
the simulator: the checkpoint stores the action box) whose `predict(observation, eps)` takes
numpy or torch, one observation or a batch, and returns the action the env receives: the deterministic mean action
clipped to the task's action box (what `ccpo_pl.envs.make_env`'s `ClipTransform` does to every action in training
and evaluation). Observations are used as the env gives them: the env pipeline has no observation normalisation
(only a cast to float32). `run_episodes` runs the policy in a gymnasium env of the task with eps chosen per step by
a function of the episode so far; `remaining_budget` is the schedule that spends a total cost budget.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: The observation normalisation inside a policy: none, `make_env` feeds the simulator's observations as float32.
OBSERVATION_NORMALISATION = "none"


class DeployedPolicy(nn.Module):
    """(observation `[B, obs_dim]`, eps `[B]`) -> the mean action `[B, act_dim]` clipped to [low, high], and with
    `std` the policy's standard deviation `[B, act_dim]` as a second output (what `ccpo_pl.export` traces)."""

    def __init__(self, actor: nn.Module, low: float, high: float, std: bool = False):
        super().__init__()
        self.actor, self.low, self.high, self.std = actor, float(low), float(high), bool(std)

    def forward(self, observation: Tensor, eps: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The action `[B, act_dim]`, or (action, std) with `std`."""
        loc, scale = self.actor(observation, eps.unsqueeze(-1))
        action = loc.clamp(self.low, self.high)
        return (action, scale) if self.std else action


def policy_metadata(cfg: Mapping, obs_dim: int, act_dim: int, bounds: tuple[float, float]) -> dict[str, Any]:
    """What a deployed policy says about itself (`Policy.metadata`, stored in exported files): task, env id,
    algorithm, sizes, the trained eps range, the behaviour thresholds, the action box and the episode length."""
    return {
        "task": cfg["env"]["name"], "env_id": cfg["env"]["id"], "suite": cfg["env"]["suite"],
        "algo": cfg["algo"]["name"], "obs_dim": int(obs_dim), "act_dim": int(act_dim),
        "eps_range": [float(x) for x in cfg["eps"]["range"]],
        "eps_behavior": [float(x) for x in cfg["eps"]["behavior"]],
        "action_low": float(bounds[0]), "action_high": float(bounds[1]),
        "max_episode_steps": int(cfg["env"]["max_episode_steps"]),
        "observation_normalisation": OBSERVATION_NORMALISATION,
    }


class Policy:
    """A trained pi(a|s, eps) for deployment (see `load`): `predict` and `metadata`."""

    def __init__(self, actor: nn.Module, metadata: Mapping[str, Any], device: str | torch.device = "cpu"):
        self._meta = dict(metadata)
        self.device = torch.device(device)
        self._module = DeployedPolicy(actor, self._meta["action_low"], self._meta["action_high"])
        self._warned_outside = False  # `predict` at a threshold outside the trained range: warned once

    @property
    def metadata(self) -> dict[str, Any]:
        """Task, env id, algo, obs/action sizes, eps range and behaviour thresholds, action box (a copy)."""
        return copy.deepcopy(self._meta)

    def module(self, std: bool = False) -> DeployedPolicy:
        """The policy as a module of tensors only, `(observation [B, obs_dim], eps [B]) -> action [B, act_dim]`
        (and the std with `std=True`), for tracing or for use inside other torch code."""
        return DeployedPolicy(self._module.actor, self._module.low, self._module.high, std=std)

    @torch.no_grad()
    def predict(self, observation, eps, deterministic: bool = True):
        """The action for `observation` at cost threshold `eps`, as the env receives it (clipped to its box).

        Args:
            observation: one observation `[obs_dim]` or a batch `[B, obs_dim]`; a numpy array (or list) or a tensor.
            eps: the threshold in episode-cost units: a float, a 0-d array, or one per observation `[B]`; finite
                and > 0. Outside the trained `metadata["eps_range"]` the policy extrapolates: the first such call
                of a policy warns (`UserWarning`).
            deterministic: the mean action (the evaluation protocol); False samples N(mean, std^2) before clipping.

        Returns:
            `[act_dim]` or `[B, act_dim]` float32, numpy for numpy (or list) input, a tensor on the observation's
            device for tensor input.

        Raises:
            ValueError: an observation of the wrong size or with NaN/inf, or a bad eps; one line naming the value.
        """
        if not isinstance(deterministic, (bool, np.bool_)):
            raise TypeError(f"deterministic={deterministic!r} is not allowed; deterministic must be True or False")
        obs, e = self._check(real_values("observation", observation), real_values("eps", eps))
        if deterministic:
            action = self._module(obs, e)
        else:
            loc, std = self._module.actor(obs, e.unsqueeze(-1))
            action = (loc + std * torch.randn_like(loc)).clamp(self._module.low, self._module.high)
        if isinstance(observation, Tensor):
            return action.reshape(*observation.shape[:-1], -1).to(observation.device)
        return action.reshape(*np.shape(observation)[:-1], -1).cpu().numpy()

    def _check(self, observation, eps) -> tuple[Tensor, Tensor]:
        """(observation `[B, obs_dim]`, eps `[B]`) as float32 on the policy's device; a `ValueError` for bad input."""
        obs_dim = self._meta["obs_dim"]
        obs = torch.as_tensor(observation).to(self.device, torch.float32)
        if obs.ndim not in (1, 2) or obs.shape[-1] != obs_dim:
            raise ValueError(f"observation has shape {list(obs.shape)}; allowed: [{obs_dim}] or [B, {obs_dim}] "
                             f"({self._meta['env_id']} observations)")
        if not bool(torch.isfinite(obs).all()):
            where = tuple(torch.nonzero(~torch.isfinite(obs))[0].tolist())
            raise ValueError(f"observation has NaN or inf (first at index {where}: {obs[where].item()}); "
                             f"allowed: finite values")
        batch = obs.reshape(-1, obs_dim)
        e = eps.detach().cpu().double() if isinstance(eps, Tensor) else torch.from_numpy(np.asarray(eps, np.float64))
        if e.ndim > 1 or (e.ndim == 1 and (obs.ndim != 2 or e.shape[0] != batch.shape[0])):
            raise ValueError(f"eps has shape {list(e.shape)}; allowed: a float, a 0-d array, or [B] with B "
                             f"observations [B, {obs_dim}] (here {list(obs.shape)})")
        ok = torch.isfinite(e) & (e > 0) & (e.float() > 0) & torch.isfinite(e.float())  # in float32, as the policy
        if not bool(ok.all()):
            bad = e.item() if e.ndim == 0 else e[~ok].tolist()
            raise ValueError(f"eps={bad} is not allowed; eps must be finite and > 0 as a float32 (trained range "
                             f"{self._meta['eps_range']}; outside it the policy extrapolates)")
        low, high = self._meta["eps_range"]
        outside = (e < low) | (e > high)
        if not self._warned_outside and bool(outside.any()):
            self._warned_outside = True
            first = e.item() if e.ndim == 0 else e[outside][0].item()
            warnings.warn(f"eps={first:g} is outside the trained range [{low:g}, {high:g}]: the policy "
                          f"extrapolates there (said once per policy)", UserWarning, stacklevel=3)
        return batch, e.to(self.device, torch.float32).expand(batch.shape[0])


FLOAT32_MAX = float(np.finfo(np.float32).max)


def real_values(name: str, value) -> Tensor | np.ndarray:
    """`value` (a number, a nested list, a numpy array or a tensor) as an array of real numbers, checked: a
    `TypeError` naming `name` for anything else (strings, None, dicts, objects, booleans, complex numbers), a
    `ValueError` for a finite value beyond float32, the policy's precision."""
    allowed = "a number, a list, a numpy array or a tensor of real numbers"
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"{name} is a {value.dtype} tensor; allowed: {allowed}")
        array = value.detach().cpu().double().numpy()
    else:
        if isinstance(value, (bool, np.bool_, str, bytes, Mapping)) or value is None:
            raise TypeError(f"{name}={value!r} ({type(value).__name__}) is not allowed; allowed: {allowed}")
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):  # ragged nesting
            raise TypeError(f"{name} is not an array of numbers; allowed: {allowed}") from None
        if array.dtype.kind not in "iuf":
            what = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes"}.get(array.dtype.kind,
                                                                                            "objects")
            raise TypeError(f"{name} holds {what} ({array.dtype}); allowed: {allowed}")
        array = array.astype(np.float64)
    big = np.isfinite(array) & (np.abs(array) > FLOAT32_MAX)
    if big.any():
        where = tuple(int(i) for i in np.argwhere(big)[0])
        raise ValueError(f"{name} has {array[where]:g} (at index {where}), beyond float32, the policy's precision; "
                         f"allowed: values within +-3.4e38")
    return value


def load(run: str | Path, device: str | torch.device = "cpu") -> Policy:
    """The policy of a `ccpo_pl.fit` run directory (its `checkpoints/last.ckpt`) or checkpoint file, of any
    algorithm; only the policy's weights are read (`weights_only=True`). The action box is the one the checkpoint
    stores (`hyper_parameters.action_box`): no env is built and the simulator is not imported; for a checkpoint
    written before it was stored, one env of the task is built to read it. A missing or foreign file is a
    `ValueError` (`ccpo_pl.errors.ConfigError`) naming it."""
    from ccpo_pl import quiet

    quiet.drop_notices()  # gymnasium-robotics' notice on import (ccpo_pl.quiet); the warning filters stay as they are
    from ccpo_pl.errors import check_environment

    check_environment()  # before TorchRL imports MuJoCo
    from ccpo_pl.evaluation import actor_sizes, load_run

    _, _, ckpt, actor, cfg = load_run(run, device)
    box = ckpt["hyper_parameters"].get("action_box")
    if box is None:  # a checkpoint without the action box: the env's
        from ccpo_pl.envs import action_bounds

        box = action_bounds(cfg["env"])
    return Policy(actor, policy_metadata(cfg, *actor_sizes(ckpt), (float(box[0]), float(box[1]))), device)


@dataclass
class Episode:
    """One episode of `run_episodes`: its return, cost and length, and per step the eps used and the cost."""

    reward: float
    cost: float
    length: int
    eps: np.ndarray
    step_cost: np.ndarray


EpsFn = Callable[[int, Mapping[str, Any]], float]
#: the most episodes one `run_episodes` call runs
MAX_EPISODES = 100_000


def _integer(value) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _real(value) -> bool:
    """A real number: int, float or their numpy scalars, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def run_episodes(policy: Policy, env, eps_fn: EpsFn, episodes: int = 1, *, seed: int | None = None,
                 deterministic: bool = True) -> list[Episode]:
    """Run `policy` for `episodes` episodes in a gymnasium env of its task, with eps chosen at every step.

    Args:
        policy: from `load`.
        env: a gymnasium env (e.g. `gymnasium.make(policy.metadata["env_id"])`) whose episodes end (time limit).
            The per-step cost is the third value of a safety-gymnasium step (obs, reward, cost, terminated,
            truncated, info) or `info["cost"]` (bullet-safety-gym, 0 when absent).
        eps_fn: `eps_fn(step, so_far) -> eps`, called before every action; `step` counts from 0 in each episode and
            `so_far` holds `episode` (its index), `episode_reward` and `episode_cost` (sums up to this step) and
            `info` (the env's last info dict). A constant is `lambda step, so_far: 40.0`; `remaining_budget`
            spends a budget.
        episodes: how many episodes.
        seed: passed to the first `env.reset` (gymnasium's convention; bullet-safety-gym ignores it and draws from
            numpy's global RNG: seed that with `np.random.seed`).
        deterministic: the mean action (True) or sampled actions.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"policy ({type(policy).__name__}) is not allowed; allowed: a Policy, from ccpo_pl.deploy.load")
    if not callable(eps_fn):
        raise TypeError(f"eps_fn={eps_fn!r} is not callable; allowed: a function (step, so_far) -> eps, e.g. "
                        f"lambda step, so_far: 40.0")
    if not _integer(episodes) or not 0 < episodes <= MAX_EPISODES:
        raise ValueError(f"episodes={episodes!r} must be a positive integer, at most {MAX_EPISODES}")
    if seed is not None and not (_integer(seed) and 0 <= seed < 2**32):
        raise ValueError(f"seed={seed!r} must be None or an integer in [0, {2**32 - 1}]")
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic={deterministic!r} is not allowed; deterministic must be True or False")
    results = []
    for index in range(episodes):
        obs, info = env.reset(seed=seed if index == 0 else None)
        ep_reward = ep_cost = 0.0
        eps_used, costs, done = [], [], False
        while not done:
            so_far = {"episode": index, "episode_reward": ep_reward, "episode_cost": ep_cost, "info": info}
            eps = eps_fn(len(costs), so_far)
            if not _real(eps):
                raise TypeError(f"eps_fn returned {eps!r} ({type(eps).__name__}) at step {len(costs)}; allowed: a "
                                f"real number > 0")
            eps = float(eps)
            out = env.step(policy.predict(obs, eps, deterministic))
            if len(out) == 6:
                obs, reward, cost, terminated, truncated, info = out
            else:
                obs, reward, terminated, truncated, info = out
                cost = info.get("cost", 0.0)
            ep_reward += float(reward)
            ep_cost += float(cost)
            eps_used.append(eps)
            costs.append(float(cost))
            done = bool(terminated or truncated)
        results.append(Episode(ep_reward, ep_cost, len(costs), np.array(eps_used), np.array(costs)))
    return results


def remaining_budget(total_budget: float, horizon: int, eps_range: Sequence[float] | None = None) -> EpsFn:
    """The eps schedule that spends `total_budget` over an episode of `horizon` steps: at step t with cost C_t so
    far, eps_t = (total_budget - C_t) * horizon / (horizon - t), the remaining budget spread over the remaining
    steps, in the episode-cost units the policy was trained with (eps_0 = total_budget; a step without cost raises
    it, a costly one lowers it).

    Args:
        total_budget: the episode's cost budget, > 0.
        horizon: the episode length T (`policy.metadata["max_episode_steps"]`).
        eps_range: [low, high] to clip eps into, e.g. `policy.metadata["eps_range"]` (no extrapolation); None
            clips only from below, at 1e-6 of the budget (a spent budget asks for the safest policy).
    """
    if not _real(total_budget):
        raise TypeError(f"total_budget={total_budget!r} ({type(total_budget).__name__}) is not allowed; allowed: "
                        f"a finite number > 0")
    if not (math.isfinite(total_budget) and 0 < total_budget <= FLOAT32_MAX):
        raise ValueError(f"total_budget={total_budget!r} must be a finite number > 0 (at most 3.4e38, float32)")
    if not _integer(horizon) or horizon <= 0:
        raise ValueError(f"horizon={horizon!r} must be a positive integer (the episode length)")
    total_budget, horizon = float(total_budget), int(horizon)
    if eps_range is None:
        low, high = total_budget * 1e-6, math.inf
    else:
        pair = list(eps_range) if isinstance(eps_range, (list, tuple, np.ndarray)) else None
        if (pair is None or len(pair) != 2 or not all(_real(x) for x in pair)
                or not all(math.isfinite(x) and 0 < x <= FLOAT32_MAX for x in pair) or not pair[0] < pair[1]):
            raise ValueError(f"eps_range={eps_range!r} is not allowed; eps_range must be None or [low, high] with "
                             f"0 < low < high, both finite")
        low, high = float(pair[0]), float(pair[1])

    def eps_fn(step: int, so_far: Mapping[str, Any]) -> float:
        eps = (total_budget - so_far["episode_cost"]) * horizon / max(horizon - step, 1)
        return min(max(eps, low), high)

    return eps_fn
