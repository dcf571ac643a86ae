"""`BulletBatchEnv`: a batch of bullet-safety-gym envs stepped in one loop, one tensordict per batched step.

Why not `SerialEnv(n, GymEnv)`: TorchRL's serial batching builds, checks and copies a tensordict per sub-env and
per step, which costs more than the simulator and its gym wrappers themselves (timings in docs/performance.md,
"Mechanisms"). This env keeps TorchRL's interface and semantics (specs taken from the TorchRL `GymEnv`
of the same task, partial resets through `_reset`, `cost` read from bullet's info dict as `CostReader` does)
and does the per-env work as a numpy loop. Gymnasium's `SyncVectorEnv` is not used because it resets an episode
inside `step` (the next observation of a time-limit step would be the new episode's first one).
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from ccpo_pl import compat
from ccpo_pl.envs.base import make_base_env


class BulletBatchEnv(EnvBase):
    """`num_envs` bullet-safety-gym envs of one task in this process; batch size `[num_envs]`.

    Entries and specs are those of `make_base_env("bullet", env_id)` (a TorchRL `GymEnv` with `CostReader`),
    stacked: `observation` float64 `[n, obs_dim]`, `cost` float32 `[n]`, `reward` float32 `[n, 1]`,
    `done`/`terminated`/`truncated` bool `[n, 1]` (the gym `TimeLimit` sets `truncated`).

    Seeding: bullet-safety-gym draws every random number from numpy's global RNG (see `BulletSafetyEnv`), so
    `set_seed(s)` seeds that stream once; the envs differ by drawing from it in turn, as in a `SerialEnv`.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int | None = None, device: str | torch.device = "cpu"):
        import gymnasium as gym

        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        template = make_base_env("bullet", env_id)
        n = torch.Size([num_envs])
        self.full_observation_spec = template.full_observation_spec.expand(n).to(self.device)
        self.full_action_spec = template.full_action_spec.expand(n).to(self.device)
        self.full_reward_spec = template.full_reward_spec.expand(n).to(self.device)
        self.full_done_spec = template.full_done_spec.expand(n).to(self.device)
        template.close()
        if seed is not None:  # construction may draw from numpy's global RNG too
            np.random.seed(seed % 2**32)
        with compat.process_std_streams():
            self._envs = [gym.make(env_id) for _ in range(num_envs)]
        obs_spec = self.full_observation_spec["observation"]
        self._obs = np.zeros(obs_spec.shape, dtype=np.float64)
        self._obs_dtype = obs_spec.dtype
        if seed is not None:
            self.set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            np.random.seed(seed % 2**32)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        """Reset the envs flagged in `_reset` (all if there is none); the others keep their current observation."""
        mask = None if tensordict is None else tensordict.get("_reset", None)
        which = range(len(self._envs)) if mask is None else mask.reshape(-1).nonzero().view(-1).tolist()
        for i in which:
            self._obs[i], _ = self._envs[i].reset()
        n = self.batch_size
        false = torch.zeros(*n, 1, dtype=torch.bool, device=self.device)
        return TensorDict({
            "observation": torch.as_tensor(self._obs.copy(), dtype=self._obs_dtype, device=self.device),
            "cost": torch.zeros(n, dtype=torch.float32, device=self.device),
            "done": false, "terminated": false.clone(), "truncated": false.clone(),
        }, batch_size=n, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get("action").detach().cpu().numpy()
        n = len(self._envs)
        reward, cost = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for i, env in enumerate(self._envs):
            self._obs[i], reward[i], terminated[i], truncated[i], info = env.step(actions[i])
            cost[i] = info.get("cost", 0.0)
        terminated_t = torch.as_tensor(terminated, device=self.device).unsqueeze(-1)
        truncated_t = torch.as_tensor(truncated, device=self.device).unsqueeze(-1)
        return TensorDict({
            "observation": torch.as_tensor(self._obs.copy(), dtype=self._obs_dtype, device=self.device),
            "reward": torch.as_tensor(reward, device=self.device).unsqueeze(-1),
            "cost": torch.as_tensor(cost, device=self.device),
            "done": terminated_t | truncated_t, "terminated": terminated_t, "truncated": truncated_t,
        }, batch_size=self.batch_size, device=self.device)

    def close(self, *, raise_if_closed: bool = True) -> None:
        for env in getattr(self, "_envs", []):
            env.close()
        self._envs = []
        super().close(raise_if_closed=raise_if_closed)
