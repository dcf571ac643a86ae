"""One unbatched TorchRL env of a task, with a shape-``()`` ``cost`` observation (`make_base_env`).

bullet-safety-gym reports the cost only in ``info["cost"]`` as a Python number, which TorchRL's
``default_info_dict_reader`` cannot read (it calls ``.dtype``), hence :class:`CostReader`; TorchRL's
``SafetyGymnasiumEnv`` turns safety-gymnasium's 6-tuple step into a float64 shape-``()`` ``cost`` observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase, GymEnv, GymWrapper
from torchrl.envs.gym_like import BaseInfoDictReader

from ccpo_pl import compat
from ccpo_pl.envs.tasks import SUITES


class CostReader(BaseInfoDictReader):
    """Info-dict reader that writes bullet's ``info["cost"]`` (a Python number, absent at reset) as float32 ``()``."""

    def __init__(self):
        self._spec = Composite(cost=Unbounded((), dtype=torch.float32), shape=())

    def __call__(self, info_dict: dict[str, Any], tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("cost", torch.as_tensor(info_dict.get("cost", 0.0), dtype=torch.float32))
        return tensordict

    def reset(self) -> None:
        """Nothing to reset; part of the reader interface TorchRL calls."""

    @property
    def info_spec(self) -> Composite:
        return self._spec


class BulletSafetyEnv(GymEnv):
    """``GymEnv`` for bullet-safety-gym whose ``set_seed`` also seeds numpy's global RNG.

    bullet-safety-gym 1.4.0 ignores ``reset(seed=...)``: every random draw (initial positions, noise) comes from
    the global ``np.random``. So seeding means ``np.random.seed``, which is per process: in a ``ParallelEnv`` each
    worker has its own; in a ``SerialEnv`` the sub-envs share one stream and differ by drawing from it in turn.
    """

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            np.random.seed(seed % 2**32)
        super()._set_seed(seed)


def make_base_env(suite: str, env_id: str, seed: int | None = None, kwargs: dict | None = None) -> EnvBase:
    """Builds one unbatched TorchRL env whose observations include a shape-``()`` ``cost``.

    Module-level so that ``ParallelEnv``'s spawn-started workers can unpickle it (and import ``ccpo_pl``, which
    installs the safety-gymnasium shim).

    Args:
        suite: ``"bullet"``, ``"safety_gymnasium"`` or ``"gymnasium"`` (any env with a cost,
            :mod:`ccpo_pl.envs.custom`).
        env_id: the gym id, e.g. ``"SafetyBallCircle-v0"``; for ``"gymnasium"`` also ``"module:Class"``.
        seed: if given, the env is seeded with it (``env.set_seed``) right after construction.
        kwargs: the env constructor's keyword arguments (``env.kwargs``; the ``"gymnasium"`` suite only).
    """
    if suite == "bullet":
        with compat.process_std_streams():
            import bullet_safety_gym  # noqa: F401  (registers the Safety*-v0 ids)

            env = BulletSafetyEnv(env_id)
        env.set_info_dict_reader(CostReader())
    elif suite == "safety_gymnasium":
        from torchrl.envs.libs.safety_gymnasium import SafetyGymnasiumEnv

        env = SafetyGymnasiumEnv(env_id)
    elif suite == "gymnasium":
        from ccpo_pl.envs.custom import CostInInfo, build_gym_env  # here: importing gymnasium prints warnings

        env = GymWrapper(CostInInfo(build_gym_env(env_id, kwargs), env_id))
        env.set_info_dict_reader(CostReader())
    else:
        raise ValueError(f"unknown env suite {suite!r}; allowed: {SUITES}")
    if seed is not None:
        env.set_seed(seed)
    return env
