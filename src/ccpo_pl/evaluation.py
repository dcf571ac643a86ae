"""Evaluation of a threshold-conditioned policy: deterministic episodes per eps and the CCPO paper's metrics."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.nets import EpsActor, make_actor


def cost_violation(cost: Tensor, eps: Tensor) -> Tensor:
    """CCPO paper Table 1: CV(eps) = max(0, J_c(eps) - eps), the episodic cost above the threshold."""
    return (cost - eps).clamp_min(0.0)


def load_policy(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[EpsActor, dict]:
    """The actor pi(a|s, eps) of a `ccpo_pl.fit` checkpoint, loaded with `weights_only=True`, and the run's config.

    Network sizes come from the stored weights; everything else from the resolved config stored as plain data
    in the checkpoint (`hyper_parameters.run_config`). No training state is built.
    """
    ckpt = safe_load(ckpt_path, map_location=device)
    cfg = (ckpt.get("hyper_parameters") or {}).get("run_config")
    if not cfg or "state_dict" not in ckpt:
        raise ValueError(f"{str(ckpt_path)!r} is not a ccpo_pl.fit checkpoint")
    weights = {k.removeprefix("actor."): v for k, v in ckpt["state_dict"].items() if k.startswith("actor.")}
    obs_dim = weights["trunk.0.weight"].shape[1] - 1  # the actor's input is [observation, e]
    act_dim = weights["mu.weight"].shape[0]
    actor = make_actor(cfg["algo"], obs_dim, act_dim, cfg["eps"]["range"])
    actor.load_state_dict(weights)
    return actor.to(device).eval(), cfg


@torch.no_grad()
def rollout_episodes(env: EnvBase, policy, max_steps: int,
                     exploration: ExplorationType = ExplorationType.DETERMINISTIC) -> tuple[Tensor, Tensor]:
    """One deterministic episode per sub-env of a batched env; returns (episode reward `[N]`, episode cost `[N]`).

    Each sub-env keeps its own threshold (build the env with `eps_mode="fixed"`). The rollout runs until every
    sub-env finished at least once (`StepCounter` truncates at the episode length) and reads the episode sums at
    each sub-env's first `done`. `exploration`: DETERMINISTIC (the mean action, the paper's protocol) or RANDOM
    (sampled actions: the stochastic policy the E-step constrains).
    """
    with set_exploration_type(exploration):
        td = env.rollout(max_steps, policy, break_when_any_done=False, auto_cast_to_device=True)
    done = td["next", "done"].reshape(*td.batch_size[:2], -1)[..., 0]  # [N, T]
    if not bool(done.any(-1).all()):
        raise RuntimeError(f"some evaluation episodes did not finish within {max_steps} steps")
    first = done.float().argmax(-1)
    rows = torch.arange(done.shape[0])
    ep_r = td["next", "episode_reward"].reshape(*done.shape, -1)[rows, first, 0]
    ep_c = td["next", "episode_cost"].reshape(*done.shape, -1)[rows, first, 0]
    return ep_r.cpu(), ep_c.cpu()
