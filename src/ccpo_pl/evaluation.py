"""Evaluation of a threshold-conditioned policy: deterministic episodes per eps and the CCPO paper's metrics."""

from __future__ import annotations

import torch
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type


def cost_violation(cost: Tensor, eps: Tensor) -> Tensor:
    """CCPO paper Table 1: CV(eps) = max(0, J_c(eps) - eps), the episodic cost above the threshold."""
    return (cost - eps).clamp_min(0.0)


@torch.no_grad()
def rollout_episodes(env: EnvBase, policy, max_steps: int) -> tuple[Tensor, Tensor]:
    """One deterministic episode per sub-env of a batched env; returns (episode reward `[N]`, episode cost `[N]`).

    Each sub-env keeps its own threshold (build the env with `eps_mode="fixed"`). The rollout runs until every
    sub-env finished at least once (`StepCounter` truncates at the episode length) and reads the episode sums at
    each sub-env's first `done`.
    """
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.rollout(max_steps, policy, break_when_any_done=False, auto_cast_to_device=True)
    done = td["next", "done"].reshape(*td.batch_size[:2], -1)[..., 0]  # [N, T]
    if not bool(done.any(-1).all()):
        raise RuntimeError(f"some evaluation episodes did not finish within {max_steps} steps")
    first = done.float().argmax(-1)
    rows = torch.arange(done.shape[0])
    ep_r = td["next", "episode_reward"].reshape(*done.shape, -1)[rows, first, 0]
    ep_c = td["next", "episode_cost"].reshape(*done.shape, -1)[rows, first, 0]
    return ep_r.cpu(), ep_c.cpu()
