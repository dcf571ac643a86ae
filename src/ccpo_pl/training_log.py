"""What a training module logs after each collection, against environment frames, in one collective across ranks.

TensorBoard groups tags by their first path segment, so every tag has a few groups' prefix:
- per threshold-bin metrics of the module (`per_eps_metrics`): `<group>/<name>/eps_<eps>`, e.g.
  `multipliers/lam/eps_20`, `critic/q_c/eps_20`, `trust_region/kl_mean/eps_20`, `estep/cost_gap/eps_20`;
- the training episodes: `train/eps_<eps>/episode_{reward,cost}` per behaviour threshold, and
  `train/episode_{reward,cost}`, their mean over the behaviour thresholds that ended episodes in the collection;
- the policy (families with a stochastic actor, `policy_distribution`): `train/policy_std`, the standard deviation
  of its Gaussian (before any squash) averaged over action dimensions and states, and `train/policy_entropy`, that
  Gaussian's differential entropy averaged over states; both on the states of the first batch after a collection;
- the updates since the last log: `loss/{critic,actor}`, `time/update_ms`, `time/env_steps_per_s`;
- `train/frames`.
Update metrics of a cycle are logged after the next collection (`TrainingLog.record_update` accumulates them); the
ones not logged yet are part of the checkpoint's training state (`state_dict`), so a resumed run logs them.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from ccpo_pl.metrics import eps_tag
from ccpo_pl.timing import WallClock

#: TensorBoard regex of every threshold's tag of a per-threshold metric, after its escaped name
PER_EPS_PATTERN = r"/eps_[^/]+$"


def per_eps_tag(name: str, eps: float) -> str:
    """The tag of per-threshold metric `name` (`<group>/<name>`) at threshold `eps`: `<group>/<name>/eps_<eps>`."""
    return f"{name}/{eps_tag(eps)}"


def policy_spread(dist: torch.distributions.Normal) -> Tensor:
    """`[2]`: the mean standard deviation (over states and action dimensions) and the mean entropy (summed over
    action dimensions, averaged over states) of a diagonal Gaussian policy on a batch of states; states with a
    NaN (a corrupt batch, stopped or skipped by the update's own check) are left out."""
    std, entropy = dist.stddev.detach(), dist.entropy().detach().sum(-1)
    return torch.stack([std.nanmean(), entropy.nanmean()]).double().cpu()


class TrainingLog:
    """The module's training metrics: accumulates update losses and seconds, logs everything after a collection.

    `clock`: the module's `WallClock`, which keeps the run's update totals (for the benchmarks' `time/...`).
    """

    def __init__(self, clock: WallClock):
        self.clock = clock
        self.acc = torch.zeros(3, dtype=torch.float64)  # critic loss, actor loss, update seconds
        self.n_updates = 0

    def record_update(self, loss_critic: Tensor, loss_actor: Tensor, seconds: float) -> None:
        """One update's losses and its wall-clock seconds."""
        self.acc += torch.tensor([float(loss_critic), float(loss_actor), seconds], dtype=torch.float64)
        self.n_updates += 1
        self.clock.add_update(seconds)

    def state_dict(self) -> dict:
        """The update metrics not logged yet."""
        return {"acc": self.acc.clone(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        self.acc, self.n_updates = state["acc"].clone(), int(state["n_updates"])

    def log(self, module, batch: TensorDictBase | None = None) -> None:
        """For a `SafeRLModule`: reduce this cycle's metrics across ranks in one collective and log them at the
        global frame count; `batch` (observations and thresholds) gives the states of the policy's spread."""
        rollouts, world = module.rollouts, module.trainer.world_size
        names, values = [], []
        for name, col in module.per_eps_metrics().items():
            names += [per_eps_tag(name, e) for e in module.eps_bins]
            values.append(col.detach().double().cpu())
        dist = None if batch is None else module.policy_distribution(batch["observation"], batch["eps"])
        if dist is not None:  # the same on every rank: a property of the module's class
            names += ["train/policy_std", "train/policy_entropy"]
            values.append(policy_spread(dist))
        episodes = rollouts.stream.pop_episode_stats()  # [n_beh, 3] n, sum R, sum C
        n_upd = max(self.n_updates, 1)
        scalars = torch.tensor([self.acc[0] / n_upd, self.acc[1] / n_upd, 1e3 * self.acc[2] / n_upd,
                                rollouts.stream.collect_seconds, self.acc[2], float(self.n_updates)],
                               dtype=torch.float64)
        flat = torch.cat(values + [episodes.flatten(), scalars]).to(module.device)
        if world > 1:
            flat = module.trainer.strategy.reduce(flat.float(), reduce_op="sum").double() / world
        flat = flat.cpu()
        n_named = len(names)
        metrics = dict(zip(names, flat[:n_named].tolist()))
        episodes = flat[n_named:n_named + episodes.numel()].view(-1, 3)
        module.on_training_episodes(episodes)
        metrics |= episode_metrics(module.hparams.eps_behavior, episodes)
        loss_c, loss_a, ms, collect_s, update_s, n = flat[n_named + episodes.numel():].tolist()
        if n > 0:  # a cycle with updates (the first collection after a start has none)
            frames = rollouts.stream.frames_per_collect * world
            metrics.update({"loss/critic": loss_c, "loss/actor": loss_a, "time/update_ms": ms,
                            "time/env_steps_per_s": frames / (collect_s + update_s)})
        metrics["train/frames"] = float(module.global_frames)
        rollouts.stream.collect_seconds = 0.0
        self.acc.zero_()
        self.n_updates = 0
        module.on_metrics_logged()
        if module.logger is not None:
            module.logger.log_metrics(metrics, step=module.global_frames)


def episode_metrics(eps_behavior, episodes: Tensor) -> dict[str, float]:
    """`train/eps_<e>/episode_{reward,cost}` per behaviour threshold with ended episodes (`episodes [n_beh, 3]`:
    count, sum of rewards, sum of costs) and `train/episode_{reward,cost}`, their mean over those thresholds."""
    metrics, rewards, costs = {}, [], []
    for e, (n, r, c) in zip(eps_behavior, episodes.tolist()):
        if n > 0:
            rewards.append(r / n)
            costs.append(c / n)
            metrics[f"train/{eps_tag(e)}/episode_reward"] = rewards[-1]
            metrics[f"train/{eps_tag(e)}/episode_cost"] = costs[-1]
    if rewards:
        metrics["train/episode_reward"] = sum(rewards) / len(rewards)
        metrics["train/episode_cost"] = sum(costs) / len(costs)
    return metrics
