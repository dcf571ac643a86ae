"""V-SAC-Lag and V-DDPG-Lag (CCPO paper, Table 1 baselines): SAC-Lag and DDPG-Lag with the cost threshold eps
appended to the actor and critic inputs, trained on episodes collected under the behaviour thresholds, one Lagrange
multiplier per behaviour threshold, evaluated at any eps by feeding it to the actor.

The implementation notes and the two algorithms stay together: they share one update.

Implementation details ("ours" marks our choices where the paper is silent; FSRL = its sac_lag / ddpg_lag):
1. Thresholds in updates: each transition is trained with the threshold it was collected under (`batch["eps"]`,
   `train_eps="collected"`, the literal reading of the paper). `train_eps="behavior"` relabels each sampled
   transition with a behaviour threshold drawn uniformly (valid off-policy: eps changes the policy, not the
   dynamics). No versatile (unseen) thresholds: that is what separates these baselines from CCPO.
2. Lagrange multipliers: `LagrangeMultipliers` (gradient or PID, `algo.lagrange.method`), one per behaviour
   threshold, stepped once per collection from the mean undiscounted episode cost of the episodes that finished
   under that threshold in the collection, against the threshold itself (episodic-cost units, no Q conversion):
   FSRL's choice (its PID is fed the on-policy episode cost of the last collect). A threshold with no finished
   episode in a collection keeps its multiplier. Under DDP the episode tallies are summed over ranks first.
3. Actor loss: (alpha log pi - Q_r + lam Q_c) / (1 + lam) per transition with the lam of its threshold
   (Stooke et al. rescaling, FSRL and OmniSafe). DDPG: alpha = 0 and the deterministic action.
4. Critics: `PlainCritic`s of (s, a, e) with reward and cost heads, on one shared trunk by default (ours, as CCPO's
   critic; `critic_trunk: separate` = FSRL's separate MLPs). SAC: two (clipped double-Q: the min of the two
   reward heads in targets and actor loss, SAC/TD3); the cost side uses the mean of the two cost heads (ours: FSRL's
   min under-estimates the cost, a max would over-estimate it). DDPG: one. One-step TD targets (FSRL: 2-step),
   bootstrapping through time-limit truncation; Polyak target critics (and target actor for DDPG), tau from config.
5. SAC: one tanh squash with the log-prob correction (FSRL squashes twice); next actions from the current policy;
   no entropy bonus in the cost target (FSRL adds it to every critic); auto-tuned temperature with target
   entropy -act_dim (SAC paper), log-alpha parameterisation. Collection samples the squashed Gaussian.
6. DDPG: deterministic tanh actor, Gaussian exploration noise of fixed std (FSRL 0.1), collected actions stored
   raw (the env clips them), no target-policy smoothing.
7. The actor step treats the critics as constants (no weight gradients are computed for them).
8. Numerical faults as in CCPO: batch and critic loss before the critic step, actor loss before the actor step,
   every parameter after the update.

Why not TorchRL's `SACLoss` / `DDPGLoss` for the reward side: `SACLoss.actor_loss` draws its reparameterised
action internally and returns only its log-probability, so the cost term lam Q_c(s, a) of the same action and the
per-transition 1 / (1 + lam) rescaling cannot be added to it (a second sample would only add variance); both
losses keep their own functional parameter copies and target parameters, so the cost critic would need a second
target mechanism, and the next-state actor call needs `("next", "eps")`, which the replay stream does not store.
The losses are therefore the pure functions of `equations.py` (a few lines each), on the project's own networks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor, nn

from ccpo_pl.algos.common import frozen_copy, polyak
from ccpo_pl.algos.lagrange import LagrangeMultipliers
from ccpo_pl.algos.lagrangian import equations as eq
from ccpo_pl.algos.lagrangian.nets import make_squashed_policy
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.faults import batch_suspects
from ccpo_pl.nets import nearest_threshold
from ccpo_pl.training_log import per_eps_tag

TRAIN_EPS = ("collected", "behavior")


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """Inside: gradients flow through `module` to its inputs, not into its parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class OffPolicyLagrangian(SafeRLModule):
    """What V-SAC-Lag and V-DDPG-Lag share: critics, per-threshold multipliers, the update order, logging.

    Subclasses give `next_values` (the critics' bootstrap values of s') and `actor_loss`, and may add optimizers.
    """

    def __init__(
        self,
        actor: nn.Module,
        critics: nn.ModuleList,
        *,
        eps_behavior: Sequence[float],
        eps_range: Sequence[float],
        eps_bin: float,
        horizon: int,
        gamma: float = 0.97,
        tau: float = 0.05,
        lr_actor: float = 5e-4,
        lr_critic: float = 1e-3,
        train_eps: str = "collected",
        lagrange: Mapping | None = None,
        **base_kwargs,
    ):
        super().__init__(eps_behavior=eps_behavior, eps_range=eps_range, eps_bin=eps_bin, horizon=horizon,
                         **base_kwargs)
        # collects this __init__'s arguments and those of the subclass __init__ that called it
        self.save_hyperparameters(ignore=["actor", "critics", "make_train_env", "make_eval_env"])
        if train_eps not in TRAIN_EPS:
            raise ValueError(f"algo.train_eps={train_eps!r} is not allowed; use {' or '.join(TRAIN_EPS)}")
        self.actor, self.critics = actor, critics
        self.critics_target = frozen_copy(critics)
        self.multipliers = LagrangeMultipliers(len(eps_behavior), **dict(lagrange or {}))
        # per behaviour threshold since the last collection: [updates' transitions, sum Q_r, sum Q_c], this rank's
        # (logging only; a plain tensor, not a buffer: it differs across ranks until reduced)
        self.q_sums = torch.zeros(len(eps_behavior), 3, dtype=torch.float64)
        self.register_buffer("eps_behavior_buf", self.eps_behavior_t.clone(), persistent=False)  # on the device

    # ---------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        hp = self.hparams
        fused = self.device.type in ("cpu", "cuda")
        return [torch.optim.Adam(self.critics.parameters(), lr=hp.lr_critic, fused=fused),
                torch.optim.Adam(self.actor.parameters(), lr=hp.lr_actor, fused=fused)]

    # ---------------------------------------------------------------- the algorithm box
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        self.on_new_data(batch)  # after each collection: the multipliers step on its episode costs
        eps = self.train_eps(batch)  # [B, 1]
        index = self.threshold_index(eps)  # [B] behaviour-threshold (= multiplier) of each transition
        loss_critic = self.critic_step(batch, eps)
        if loss_critic is None:  # on_nan=skip: nothing was updated
            return
        loss_actor = self.actor_step(batch["observation"], eps, index)
        self.update_targets()
        self.check_finite(self.parameter_tensors, can_skip=False)
        if loss_actor is not None:
            self.training_log.record_update(loss_critic, loss_actor, time.perf_counter() - start)

    def train_eps(self, batch: TensorDictBase) -> Tensor:
        """The threshold each transition is trained with (implementation detail 1)."""
        eps = batch["eps"].view(-1, 1)
        if self.hparams.train_eps == "collected":
            return eps
        pick = torch.randint(len(self.eps_behavior_buf), (eps.shape[0],), device=eps.device)
        return self.eps_behavior_buf[pick].view(-1, 1)

    def threshold_index(self, eps: Tensor) -> Tensor:
        """Index of the nearest behaviour threshold of each eps `[B, 1]` -> `[B]`."""
        return nearest_threshold(eps, self.eps_behavior_buf)

    def critic_values(self, critics: nn.ModuleList, obs: Tensor, action: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(Q_r, Q_c) `[B]` of a critic set: min of the reward heads (clipped double-Q), mean of the cost heads."""
        q = [critic(obs, action, eps) for critic in critics]
        q_r = torch.stack([x[0] for x in q]).amin(0)
        q_c = torch.stack([x[1] for x in q]).mean(0)
        return q_r, q_c

    def critic_step(self, batch: TensorDictBase, eps: Tensor) -> Tensor | None:
        """TD(0) fit of every reward and cost head; None if skipped (non-finite input)."""
        hp, nxt = self.hparams, batch["next"]
        with torch.no_grad():
            v_r, v_c = self.next_values(nxt["observation"], eps)
            terminated = nxt["terminated"].view(-1)
            y_r = eq.td_target(nxt["reward"].view(-1), terminated, hp.gamma, v_r)
            y_c = eq.td_target(nxt["cost"].view(-1), terminated, hp.gamma, v_c)
        loss = 0.0
        for critic in self.critics:
            q_r, q_c = critic(batch["observation"], batch["action"], eps)
            loss = loss + F.mse_loss(q_r, y_r) + F.mse_loss(q_c, y_c)
        if not self.check_finite({"critic loss": loss}, suspects=batch_suspects(batch)):
            return None
        self.optimizer_step(self.optimizers()[0], loss)
        return loss.detach()

    def actor_step(self, obs: Tensor, eps: Tensor, index: Tensor) -> Tensor | None:
        """One actor step on the Lagrangian loss (implementation detail 3); None if skipped."""
        with _no_param_grads(self.critics):  # the critics are constants here: no weight gradients to compute
            loss, q_r, q_c = self.actor_loss(obs, eps, self.multipliers.lam[index])
        if not self.check_finite({"actor loss": loss}):
            return None
        self.optimizer_step(self.optimizers()[1], loss)
        with torch.no_grad():
            self.q_sums = self.q_sums.to(q_r.device)  # no copy once there
            ones = torch.ones_like(q_r)
            self.q_sums.index_add_(0, index, torch.stack((ones, q_r.detach(), q_c.detach()), -1).double())
        return loss.detach()

    def update_targets(self) -> None:
        polyak(self.critics_target, self.critics, self.hparams.tau)

    def next_values(self, next_obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Subclasses: bootstrap values (V_r(s'), V_c(s')) `[B]` under the target networks."""
        raise NotImplementedError

    def actor_loss(self, obs: Tensor, eps: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Subclasses: (scalar actor loss, Q_r [B], Q_c [B]) of the policy's actions."""
        raise NotImplementedError

    # ---------------------------------------------------------------- Lagrange multipliers
    def on_new_collect(self) -> None:
        """After each collection: step each behaviour threshold's multiplier on its mean episode cost."""
        tallies = self.rollouts.stream.peek_episode_stats()[:, [0, 2]].to(self.device)  # [n_beh, (episodes, costs)]
        if self.trainer.world_size > 1:
            tallies = self.trainer.strategy.reduce(tallies.float(), reduce_op="sum")
        n, cost_sum = tallies[:, 0].double(), tallies[:, 1].double()
        have = (n > 0).nonzero().view(-1)
        if have.numel() > 0:
            mean_cost = (cost_sum[have] / n[have]).float()
            lam = self.multipliers.update(mean_cost, self.eps_behavior_buf[have], index=have)
            self.check_finite({"Lagrange multiplier lam": lam}, can_skip=False)
        self.log_multipliers()

    def log_multipliers(self) -> None:
        """`multipliers/lam/eps_<e>` and `critic/{q_r,q_c}/eps_<e>` per behaviour threshold (Q means over the last
        cycle's updates)."""
        sums = self.q_sums.to(self.device, copy=True)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.cpu()
        self.q_sums.zero_()
        metrics = {}
        for i, e in enumerate(self.hparams.eps_behavior):
            metrics[per_eps_tag("multipliers/lam", e)] = float(self.multipliers.lam[i])
            if sums[i, 0] > 0:
                metrics[per_eps_tag("critic/q_r", e)] = float(sums[i, 1] / sums[i, 0])
                metrics[per_eps_tag("critic/q_c", e)] = float(sums[i, 2] / sums[i, 0])
        metrics |= self.extra_metrics()
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_frames)

    def extra_metrics(self) -> dict[str, float]:
        return {}


class VSACLag(OffPolicyLagrangian):
    """V-SAC-Lag: threshold-conditioned SAC-Lag (Haarnoja et al. 2018 + Stooke et al. 2020 rescaling)."""

    def __init__(self, actor: nn.Module, critics: nn.ModuleList, *, act_dim: int, alpha_init: float = 1.0,
                 lr_alpha: float = 3e-4, target_entropy: float | str = "auto", learn_alpha: bool = True,
                 **kwargs):
        super().__init__(actor, critics, **kwargs)
        if not alpha_init > 0:
            raise ValueError(f"algo.alpha.init={alpha_init!r} is not allowed; use a temperature > 0")
        if target_entropy == "auto":
            target_entropy = -float(act_dim)  # SAC paper: -dim(A)
        elif isinstance(target_entropy, str):
            raise ValueError(f"algo.alpha.target_entropy={target_entropy!r} is not allowed; use 'auto' or a number")
        self.target_entropy = float(target_entropy)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)), requires_grad=bool(learn_alpha))

    def collection_policy(self):
        """Collection samples SAC's squashed Gaussian (the default policy would sample N(tanh(mu), sigma))."""
        return make_squashed_policy(self.actor)

    def configure_optimizers(self):
        opts = super().configure_optimizers()
        return [*opts, torch.optim.Adam([self.log_alpha], lr=self.hparams.lr_alpha)]

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def sample(self, obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised a ~ pi(.|s, eps) and log pi(a|s, eps)."""
        mu, scale = self.actor.pre_tanh(obs, eps)
        return eq.squashed_gaussian_rsample(mu, scale, torch.randn_like(mu))

    def next_values(self, next_obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        action, log_prob = self.sample(next_obs, eps)
        q_r, q_c = self.critic_values(self.critics_target, next_obs, action, eps)
        return eq.soft_state_value(q_r, log_prob, self.alpha), q_c  # no entropy bonus on the cost side

    def actor_loss(self, obs: Tensor, eps: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        action, log_prob = self.sample(obs, eps)
        q_r, q_c = self.critic_values(self.critics, obs, action, eps)
        loss = eq.lagrangian_actor_loss(q_r, q_c, lam, log_prob, self.alpha).mean()
        self._log_prob = log_prob.detach()  # for the temperature step
        return loss, q_r, q_c

    def policy_distribution(self, observation: Tensor, eps: Tensor) -> torch.distributions.Normal:
        """The Gaussian before the squash."""
        with torch.no_grad():
            return torch.distributions.Normal(*self.actor.pre_tanh(observation, eps), validate_args=False)

    def actor_step(self, obs: Tensor, eps: Tensor, index: Tensor) -> Tensor | None:
        loss = super().actor_step(obs, eps, index)
        if loss is not None and self.log_alpha.requires_grad:
            loss_alpha = eq.temperature_loss(self.log_alpha, self._log_prob, self.target_entropy)
            self.optimizer_step(self.optimizers()[2], loss_alpha)
            self._entropy = -self._log_prob.mean()
        return loss

    def extra_metrics(self) -> dict[str, float]:
        out = {"train/alpha": float(self.alpha)}
        if hasattr(self, "_entropy"):
            out["train/entropy"] = float(self._entropy)
        return out


class VDDPGLag(OffPolicyLagrangian):
    """V-DDPG-Lag: threshold-conditioned DDPG-Lag (Lillicrap et al. 2016 + Stooke et al. 2020 rescaling)."""

    def __init__(self, actor: nn.Module, critics: nn.ModuleList, **kwargs):
        super().__init__(actor, critics, **kwargs)
        self.actor_target = frozen_copy(actor)

    def policy_distribution(self, observation: Tensor, eps: Tensor) -> None:
        """A deterministic actor (its exploration noise is fixed): no spread to log."""
        return None

    def next_values(self, next_obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        action, _ = self.actor_target(next_obs, eps)
        return self.critic_values(self.critics_target, next_obs, action, eps)

    def actor_loss(self, obs: Tensor, eps: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        action, _ = self.actor(obs, eps)
        q_r, q_c = self.critic_values(self.critics, obs, action, eps)
        return eq.lagrangian_actor_loss(q_r, q_c, lam).mean(), q_r, q_c

    def update_targets(self) -> None:
        super().update_targets()
        polyak(self.actor_target, self.actor, self.hparams.tau)
