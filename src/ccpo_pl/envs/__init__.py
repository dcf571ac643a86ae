"""Batched TorchRL envs for versatile safe RL: per-step ``cost``, per-episode threshold ``eps``, episode sums."""

from ccpo_pl.envs.factory import SUITES, TASKS, action_bounds, make_base_env, make_env
from ccpo_pl.envs.transforms import EPS_MODES, CostToReward, EndOnNonFinite, EpsSampler

__all__ = ["EPS_MODES", "SUITES", "TASKS", "CostToReward", "EndOnNonFinite", "EpsSampler", "action_bounds",
           "make_base_env", "make_env"]
