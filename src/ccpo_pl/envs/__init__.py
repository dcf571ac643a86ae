"""Batched TorchRL envs for versatile safe RL: per-step ``cost``, per-episode threshold ``eps``, episode sums.

The task table (`SUITES`, `TASKS`) is plain data; the env builders and transforms import TorchRL and the
simulators, and are imported on first use."""

from ccpo_pl.envs.tasks import SUITES, TASKS

_FACTORY = ("action_bounds", "make_base_env", "make_env")
_TRANSFORMS = ("EPS_MODES", "CostToReward", "EndOnNonFinite", "EpsSampler")


def __getattr__(name: str):
    """The builders and transforms, imported when first asked for (TorchRL and the simulators load with them)."""
    if name in _FACTORY:
        from ccpo_pl.envs import factory as module
    elif name in _TRANSFORMS:
        from ccpo_pl.envs import transforms as module
    else:
        raise AttributeError(f"module 'ccpo_pl.envs' has no attribute {name!r}")
    return getattr(module, name)


__all__ = ["EPS_MODES", "SUITES", "TASKS", "CostToReward", "EndOnNonFinite", "EpsSampler", "action_bounds",
           "make_base_env", "make_env"]
