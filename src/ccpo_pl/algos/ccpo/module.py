"""CCPO as a LightningModule: VVE critic fit -> conditioned E-step -> multi-eps M-step, manual optimization.

The parts of one update (critic step, E-step, M-step, multipliers, threshold schedule, the w/o-CVI ablation) read
and write the same module state, so they stay in one file; the maths is `equations.py`.

Implementation details (paper -> code; "ours" marks our choices where the paper/slides are silent):
1. VVE critic (slides eq. 3): `critic(s, a, eps)` = psi_f(s,a)^T z_f(eps). Every sampled transition is trained
   for all `n_eps` thresholds of the update (psi is computed once per batch). TD(0) targets with the next action
   drawn from pi(.|s', eps) and a Polyak target critic (FSRL: tau 0.05, gamma 0.97). Bootstraps through time-limit
   truncation, not through `terminated`.
2. Conditioned E-step (slides eqs. 7-10): for each threshold eps_i, K actions per state from pi_old(.|s, eps_i),
   Q from the target critic (ours; FSRL uses the current one), eps_i converted to Q units
   (`eps_to_q_units`), and the convex dual in (eta_i, lam_i) solved per threshold by a batched projected Newton
   method, warm-started from the last solution of the nearest threshold bin (ours; FSRL takes one Adam step on one
   shared dual). Under DDP the dual statistics are averaged across ranks, so every rank gets the same duals.
   The constraint's state-level part, mean_s E_pi_old[Q_c] - eps_q, comes from a running estimate per threshold
   bin (`running_cost_gap`, weight `dual.gap_decay`), not from the batch's states alone; the batch decides the
   within-state reweighting (ours). Why: the per-state means of Q_c spread far more across states than within
   them, so a batch's mean moves more than the KL ball (kappa) can move E_w[Q_c], and the batch alone would decide
   feasibility: lam then sits at its cap where the population's lam is small. A running estimate keeps it off the
   cap and close to the population's; a persistent lam moved by small gradient steps (FSRL's kind) lags behind it
   (`benchmarks/estep_dual_noise.py`, measurements in benchmarks/results_notes.md).
3. Multi-eps M-step (slides "Versatile M-step"): decoupled weighted max-likelihood (MPO/CVPO) averaged over the
   thresholds, with KL trust regions on the mean and the covariance against pi_old, each with its own multiplier
   per threshold bin, updated by projected gradient ascent (the slides' constraint holds for every eps_i).
4. pi_old is refreshed after every collection (FSRL). The states of a batch are split over the thresholds
   (`states_per_eps`), so an update costs what one-threshold CVPO's does.
5. Thresholds per update (`n_eps`): behaviour thresholds only until `versatile_start` of the frame budget, then a
   `versatile_frac` share drawn uniformly from `eps_range` (the paper's fine-tuning stage; schedule ours).
6. Numerical faults (ours): the replay batch, both losses, the E-step duals and the KL multipliers are checked
   once, before anything is stepped or stored (`SafeRLModule.check_finite`: stop, or skip the update); every
   parameter stops the run if non-finite: in the CVI update's pass, as it enters the next update (nothing is
   stepped from it; every checkpoint checks them too), in the w/o-CVI ablation after each update.
7. Speed (ours): the critic and actor losses share no parameters and the E/M-steps do not read the critic being
   fitted, so one update evaluates all three objectives in one pass (`update_objectives`), runs one backward
   through their sum and steps both optimizers (`cvi_update`): the same update as the sequential steps, with one
   check, one backward and, under DDP, one gradient all-reduce. With `compile=True` that pass is one
   `torch.compile`d graph, forward and backward; the noise it uses is drawn outside it, so compiled and eager
   updates draw the same numbers.
8. Action penalty (`action_penalty` > 0, MO-MPO's action penalization, Abdolmaleki et al. 2020; off by default):
   a second E-step objective Q_pen = -||a - clip(a)|| with its own temperature per threshold bin (KL bound
   `action_penalty`), whose weights join the M-step's. Why: the actor's samples are raw Gaussian draws that the env
   clips, so nothing in the task's E-step keeps them in the box: many sampled coordinates lie outside it, the
   critic values a raw action differently from its clipped one (which the env cannot tell apart), the E-step ranks
   samples partly by that difference, and the sampled policy the constraint holds for drifts from the mean-action
   policy evaluated (`benchmarks/action_box.py`, measurements in benchmarks/results_notes.md).
Ablations: `cvi=False` replaces steps 2-3 by a Lagrangian actor loss with one multiplier per threshold bin driven
by Q_c against the Q-unit threshold (`lagrangian.method`: projected gradient or PID, `algos.lagrange`);
`vve=False` is a critic with eps appended to its input (`nets.PlainCritic`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor, nn

from ccpo_pl.algos.ccpo import equations as eq
from ccpo_pl.algos.ccpo.compiled import compiled_or_eager
from ccpo_pl.algos.common import frozen_copy, polyak
from ccpo_pl.algos.lagrange import METHODS, PID_GAINS, multiplier_step
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.checkpointing import TRAINING_STATE, training_state
from ccpo_pl.faults import all_finite, batch_suspects

#: Updates' thresholds drawn at once by `sample_train_eps`.
EPS_ROWS = 256
#: The columns of the `stats` buffer: running means per threshold bin, for logging.
STATS_COLUMNS = ("q_r", "q_c", "kl_mean", "kl_cov")


class EStep(NamedTuple):
    """The conditioned E-step of an update at thresholds `eps [E]` on states `[E, S]` with K actions each."""

    actions: Tensor  # [E, S, K, A], drawn from pi_old(.|s, eps_i)
    weights: Tensor  # [E, S, K], eq. (8), plus the action penalty's weights where it is on
    eta: Tensor  # [E], the dual solution
    lam: Tensor  # [E]
    eta_pen: Tensor  # [E], the action penalty's temperature (its warm start where the penalty is off)
    loc_old: Tensor  # [E, S, A], pi_old
    scale_old: Tensor  # [E, S, A]
    q_means: Tensor  # [2, E]: the batch means of q_r and q_c


class UpdateStats(NamedTuple):
    """Per-threshold statistics of an update `[E]` each, averaged across ranks."""

    kl_mean: Tensor
    kl_cov: Tensor
    q_r: Tensor
    q_c: Tensor


class Objectives(NamedTuple):
    """What one pass of `update_objectives` returns: the two losses, the values the duals and multipliers step to,
    the statistics, and the finiteness flags; all but the losses detached."""

    loss_critic: Tensor
    loss_actor: Tensor
    eta: Tensor  # [E], E-step dual
    lam: Tensor  # [E]
    eta_pen: Tensor  # [E], the action penalty's temperature
    alpha_mu: Tensor  # [E], KL multipliers after their step
    alpha_sigma: Tensor  # [E]
    c_gap: Tensor  # [E], the running cost-gap estimate with this batch folded in
    stats: UpdateStats
    params_finite: Tensor  # every parameter finite as the pass began (the last update's result)
    finite: Tensor  # all of the above finite


class CCPO(SafeRLModule):
    """Constraint-Conditioned Policy Optimization (Yao, Liu et al., NeurIPS 2023).

    `threshold`: train at that one threshold every update instead of drawing them (CVPO, `ccpo.cvpo`).
    """

    def __init__(
        self,
        actor: nn.Module,
        critic: nn.Module,
        *,
        eps_behavior: Sequence[float],
        eps_range: Sequence[float],
        eps_bin: float,
        horizon: int,
        total_frames: int,
        gamma: float = 0.97,
        tau: float = 0.05,
        lr_actor: float = 5e-4,
        lr_critic: float = 1e-3,
        n_eps: int = 4,
        versatile_start: float = 0.25,
        versatile_frac: float = 0.5,
        states_per_eps: int | None = None,
        num_samples: int = 16,
        kappa: float = 0.02,
        action_penalty: float = 0.0,
        episode_cost_decay: float = 0.0,
        dual: dict | None = None,
        kl_mean_bound: float = 0.005,
        kl_cov_bound: float = 0.0005,
        kl_lr: Sequence[float] = (1.0, 100.0),
        kl_max: Sequence[float] = (1.0, 10.0),
        cvi: bool = True,
        lagrangian: dict | None = None,
        compile: bool = False,
        estep_precision: str = "fp32",
        threshold: float | None = None,
        **base_kwargs,
    ):
        super().__init__(eps_behavior=eps_behavior, eps_range=eps_range, eps_bin=eps_bin, horizon=horizon,
                         **base_kwargs)
        self.save_hyperparameters(ignore=["actor", "critic", "make_train_env", "make_eval_env"])
        self.actor, self.critic = actor, critic
        self.actor_old = frozen_copy(actor)
        self.critic_target = frozen_copy(critic)
        self.dual = {"eta_init": 1.0, "lam_init": 0.0, "gap_decay": 0.003, "lam_max": 100.0, **(dual or {})}
        self.lagrangian = {"method": "gradient", "lr": 0.01, "lam_max": 100.0, "alpha": 0.0,
                           "pid": dict(PID_GAINS), **(lagrangian or {})}
        if self.lagrangian["method"] not in METHODS:
            raise ValueError(f"algo.lagrange.method={self.lagrangian['method']!r} is not allowed; use "
                             f"{' or '.join(METHODS)}")
        n_bins = len(self.eps_bins)
        self.register_buffer("eta", torch.full((n_bins,), float(self.dual["eta_init"])))
        self.register_buffer("lam", torch.full((n_bins,), float(self.dual["lam_init"])))
        self.register_buffer("eta_pen", torch.full((n_bins,), float(self.dual["eta_init"])))  # action penalty's
        self.register_buffer("alpha_mu", torch.zeros(n_bins))
        self.register_buffer("alpha_sigma", torch.zeros(n_bins))
        # per-bin running estimates for logging, columns `STATS_COLUMNS`
        self.register_buffer("stats", torch.zeros(n_bins, len(STATS_COLUMNS)))
        # running estimate of the E-step constraint's state-level gap, and the batches averaged into it, per bin
        self.register_buffer("c_gap", torch.zeros(n_bins))
        self.register_buffer("c_gap_n", torch.zeros(n_bins))
        # running mean episode cost of the training episodes per behaviour threshold (`episode_cost_decay`), and
        # the collections averaged into it; ordered as eps_behavior
        self.register_buffer("ep_cost", torch.zeros(len(eps_behavior)))
        self.register_buffer("ep_cost_n", torch.zeros(len(eps_behavior)))
        # updates and updates with lam at its cap since the last log, per bin (`estep/lam_at_cap/eps_<eps>`)
        self.register_buffer("lam_cap_count", torch.zeros(n_bins, 2), persistent=False)
        if not cvi and self.lagrangian["method"] == "pid":  # PID state of the w/o-CVI multipliers, per bin
            self.register_buffer("lam_integral", torch.zeros(n_bins))
            self.register_buffer("lam_prev_cost", torch.full((n_bins,), float("nan")))  # nan: no step yet
        self._eps_rows: Tensor | None = None  # this update's and the next ones' thresholds (`sample_train_eps`)
        self._eps_rows_versatile = 0
        # compile=True: the objectives of an update as one fused graph, forward and backward (w/o CVI: the TD loss)
        maybe = compiled_or_eager if compile else (lambda fn: fn)
        self.objectives_fn, self.td_loss_fn = maybe(self.update_objectives), maybe(self.td_loss)
        if not 0.0 <= episode_cost_decay <= 1.0:
            raise ValueError(f"algo.episode_cost_decay={episode_cost_decay!r} is not allowed; use a weight in [0, 1] "
                             "(0 = off)")
        if not action_penalty >= 0.0:
            raise ValueError(f"algo.action_penalty={action_penalty!r} is not allowed; use a KL bound >= 0 (0 = off)")
        if estep_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"algo.estep_precision={estep_precision!r} is not allowed; use auto, bf16 or fp32")

    # ---------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        hp = self.hparams
        fused = self.device.type in ("cpu", "cuda")  # one kernel per step instead of one per parameter
        return [torch.optim.Adam(self.critic.parameters(), lr=hp.lr_critic, fused=fused),
                torch.optim.Adam(self.actor.parameters(), lr=hp.lr_actor, fused=fused)]

    @property
    def ddp_unused_parameters(self) -> bool:
        """The CVI update's one backward reaches every trained parameter (critic and actor); the w/o-CVI ablation
        steps the critic and the actor one after the other (`SafeRLModule.ddp_unused_parameters`)."""
        return not self.hparams.cvi

    # ---------------------------------------------------------------- the algorithm box
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        self.on_new_data(batch)
        eps = self.sample_train_eps()
        bins = self.bin_index(eps)
        if self.hparams.cvi:
            losses = self.cvi_update(batch, eps, bins)
        else:
            losses = self.lagrangian_update(batch, eps, bins)
        if losses is None:  # on_nan=skip: a non-finite batch, loss, dual or multiplier; nothing was updated
            return
        polyak(self.critic_target, self.critic, self.hparams.tau)
        if not self.hparams.cvi:  # the CVI update checks them as they enter its next pass
            self.check_finite(self.parameter_tensors, can_skip=False)
        if losses[1] is not None:
            self.training_log.record_update(*losses, time.perf_counter() - start)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        rows = self._eps_rows
        checkpoint[TRAINING_STATE]["eps_rows"] = None if rows is None else (rows.cpu(), self._eps_rows_versatile)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        rows = training_state(checkpoint).get("eps_rows")  # absent from checkpoints before the table: drawn anew
        if rows is not None:
            self._eps_rows, self._eps_rows_versatile = rows[0], int(rows[1])

    def fill_state_defaults(self, state_dict: dict) -> None:
        """Adds the buffers a checkpoint without the running cost gap or the action penalty's temperature lacks, at
        their initial values, so that such checkpoints load strictly."""
        for name in ("c_gap", "c_gap_n", "ep_cost", "ep_cost_n"):
            state_dict.setdefault(name, torch.zeros_like(getattr(self, name)))
        state_dict.setdefault("eta_pen", torch.full_like(self.eta_pen, float(self.dual["eta_init"])))

    def on_training_episodes(self, episodes: Tensor) -> None:
        """After every collection, the training episodes that ended in it (`[n_beh, 3]`: count, reward sum, cost
        sum per behaviour threshold, the same on every rank): their mean cost folded into `ep_cost`."""
        decay = self.hparams.episode_cost_decay
        if decay <= 0:
            return
        episodes = episodes.to(self.ep_cost)
        n, cost = episodes[:, 0], episodes[:, 2]
        valid = n > 0
        self.ep_cost, self.ep_cost_n = eq.running_mean(self.ep_cost, self.ep_cost_n, cost / n.clamp(min=1e-12),
                                                       decay, valid)

    def gap_offset(self, eps: Tensor) -> Tensor | None:
        """`[E]`: the measured episode costs' correction of the E-step's state-level gap at thresholds `eps`
        (`eq.episode_cost_correction`); None with `episode_cost_decay` = 0."""
        if self.hparams.episode_cost_decay <= 0:
            return None
        hp = self.hparams
        beh = self.eps_behavior_t.to(eps)
        order = beh.argsort()
        beh_q = eq.eps_to_q_units(self.ep_cost - beh, hp.gamma, hp.horizon)
        critic_gap = self.c_gap[self.bin_index(beh)]
        return eq.episode_cost_correction(eps, beh[order], beh_q[order], critic_gap[order], self.ep_cost_n[order] > 0)

    def on_new_collect(self) -> None:
        """After every collection: the trust-region anchor pi_old becomes the policy that collected it (FSRL)."""
        self.actor_old.load_state_dict(self.actor.state_dict())

    def critic_step(self, batch: TensorDictBase, eps: Tensor) -> Tensor | None:
        """VVE fit alone (the w/o-CVI ablation's first step): TD(0) for every (transition, eps_i) pair, f in {r, c};
        None if skipped (non-finite input)."""
        nxt = batch["next"]
        act = batch["action"]
        noise = torch.randn(len(eps), *act.shape, device=act.device)  # next actions from pi(.|s', eps_i)
        loss = self.td_loss_fn(batch["observation"], act, nxt["observation"], nxt["reward"].view(-1),
                               nxt["cost"].view(-1), nxt["terminated"].view(-1), eps.view(-1, 1, 1), noise)
        if not self.check_finite({"critic loss": loss}, suspects=batch_suspects(batch)):
            return None
        self.optimizer_step(self.optimizers()[0], loss)
        return loss.detach()

    def td_loss(self, obs: Tensor, act: Tensor, next_obs: Tensor, reward: Tensor, cost: Tensor, terminated: Tensor,
                eps: Tensor, noise: Tensor) -> Tensor:
        """Slides eq. 3 fitted by TD(0): sum over f in {r, c} of MSE(Q_f(s,a|eps), f + gamma Q_f'(s',a'|eps)),
        a' = loc + scale * noise from pi(.|s', eps); `eps [E, 1, 1]` against `[B, ...]` transitions."""
        gamma = self.hparams.gamma
        with torch.no_grad():
            loc, scale = self.actor(next_obs, eps)  # [E, B, A]
            q_r_next, q_c_next = self.critic_target(next_obs, loc + scale * noise, eps)
            not_term = 1.0 - terminated.float()
            y_r = reward + gamma * not_term * q_r_next
            y_c = cost + gamma * not_term * q_c_next
        q_r, q_c = self.critic(obs, act, eps)
        return F.mse_loss(q_r, y_r) + F.mse_loss(q_c, y_c)

    def cvi_update(self, batch: TensorDictBase, eps: Tensor, bins: Tensor) -> tuple[Tensor, Tensor] | None:
        """One update of critic and actor: the VVE TD loss, the conditioned E-step (per-eps dual, eq. 10, weights
        eq. 8), the multi-eps M-step objective and the KL multipliers in one pass (`update_objectives`), checked
        once; then one backward through the sum of the two losses and a step of each optimizer. The losses share no
        parameters, and the E/M-steps read pi, pi_old and the target critic, which the critic step leaves alone: the
        same update as a critic step followed by the E/M-steps. (loss_critic, loss_actor), or None if skipped
        (on_nan=skip)."""
        hp = self.hparams
        act, nxt = batch["action"], batch["next"]
        states = self.split_states(batch["observation"], len(eps))
        noise_next = torch.randn(len(eps), *act.shape, device=act.device)  # next actions from pi(.|s', eps_i)
        noise = torch.randn(*states.shape[:2], hp.num_samples, hp.act_dim, device=act.device)  # K per state
        _ = self.estep_bf16, self.dual_reduce  # resolved once, outside the compiled pass
        out: Objectives = self.objectives_fn(
            batch["observation"], act, nxt["observation"], nxt["reward"].view(-1), nxt["cost"].view(-1),
            nxt["terminated"].view(-1), eps, noise_next, states, noise, self.eta[bins], self.lam[bins],
            self.eta_pen[bins], self.alpha_mu[bins], self.alpha_sigma[bins], self.c_gap[bins], self.c_gap_n[bins],
            self.gap_offset(eps))
        self.check_finite(self.parameter_tensors, can_skip=False, finite=out.params_finite)  # the last update's
        if not self.check_finite({"critic loss": out.loss_critic, "E-step dual eta": out.eta,
                                  "E-step dual lam": out.lam, "action penalty eta_pen": out.eta_pen,
                                  "actor loss": out.loss_actor,
                                  "KL multiplier alpha_mu": out.alpha_mu, "KL multiplier alpha_sigma": out.alpha_sigma,
                                  "E-step statistics": torch.stack(out.stats), "E-step cost gap": out.c_gap},
                                 suspects=batch_suspects(batch), finite=out.finite):
            return None
        critic_opt, actor_opt = self.optimizers()
        for p in self.trained_parameters:  # both optimizers' zero_grad(set_to_none=True), without their per-call
            p.grad = None  # overhead (torch's dynamo-disabling wrapper and profiler range, docs/performance.md)
        self.manual_backward(out.loss_critic + out.loss_actor)
        critic_opt.step()
        actor_opt.step()
        with torch.no_grad():
            self.eta[bins], self.lam[bins], self.eta_pen[bins] = out.eta, out.lam, out.eta_pen
            self.alpha_mu[bins], self.alpha_sigma[bins] = out.alpha_mu, out.alpha_sigma
            self.c_gap[bins], self.c_gap_n[bins] = out.c_gap, self.c_gap_n[bins] + 1
            self.update_stats(bins, **out.stats._asdict())
            at_cap = (out.lam >= self.dual["lam_max"]).to(self.lam_cap_count)
            self.lam_cap_count.index_put_((bins,), torch.stack((torch.ones_like(at_cap), at_cap), -1),
                                          accumulate=True)
        return out.loss_critic.detach(), out.loss_actor.detach()

    def update_objectives(self, obs: Tensor, act: Tensor, next_obs: Tensor, reward: Tensor, cost: Tensor,
                          terminated: Tensor, eps: Tensor, noise_next: Tensor, states: Tensor, noise: Tensor,
                          eta0: Tensor, lam0: Tensor, eta_pen0: Tensor, alpha_mu: Tensor, alpha_sigma: Tensor,
                          c_gap: Tensor, c_gap_n: Tensor, gap_offset: Tensor | None = None) -> Objectives:
        """The objectives of an update at thresholds `eps [E]`: `td_loss` on the batch, `estep` and
        `mstep_objective` on `states [E, S, obs]` (with the multipliers alpha_mu, alpha_sigma and the running cost
        gap c_gap of c_gap_n batches, plus gap_offset in the dual's solve), then the multipliers' step on the measured
        KL (`Objectives`)."""
        hp = self.hparams
        loss_critic = self.td_loss(obs, act, next_obs, reward, cost, terminated, eps.view(-1, 1, 1), noise_next)
        eps_q = eq.eps_to_q_units(eps, hp.gamma, hp.horizon)
        e = self.estep(states, eps, noise, eta0, lam0, c_gap, c_gap_n, eta_pen0, gap_offset)
        loss_actor, kl_mu, kl_sigma = self.mstep_objective(states, eps.view(-1, 1, 1), e.actions, e.weights,
                                                           e.loc_old, e.scale_old, alpha_mu, alpha_sigma)
        stats = torch.cat((torch.stack((kl_mu.detach(), kl_sigma.detach())), e.q_means))
        if self.dual_reduce is not None:  # DDP: one collective, every rank steps the multipliers identically
            stats = self.dual_reduce(stats)
        stats = UpdateStats(*stats)
        alpha_mu = eq.kl_multiplier_update(alpha_mu, stats.kl_mean, hp.kl_mean_bound, hp.kl_lr[0], hp.kl_max[0])
        alpha_sigma = eq.kl_multiplier_update(alpha_sigma, stats.kl_cov, hp.kl_cov_bound, hp.kl_lr[1], hp.kl_max[1])
        # the estimate kept: this batch's gap averaged across ranks (the one the solve used was the rank's own)
        c_gap, _ = eq.running_cost_gap(c_gap, c_gap_n, stats.q_c - eps_q, self.dual["gap_decay"])
        finite = all_finite({"losses": torch.stack((loss_critic, loss_actor)), "eta": e.eta, "lam": e.lam,
                             "eta_pen": e.eta_pen,
                             "alpha_mu": alpha_mu, "alpha_sigma": alpha_sigma, "stats": torch.stack(stats),
                             "c_gap": c_gap})
        return Objectives(loss_critic, loss_actor, e.eta, e.lam, e.eta_pen, alpha_mu, alpha_sigma, c_gap, stats,
                          all_finite(dict(self.named_parameters())), finite)

    @torch.no_grad()
    def estep(self, obs: Tensor, eps: Tensor, noise: Tensor, eta0: Tensor, lam0: Tensor, c_gap: Tensor,
              c_gap_n: Tensor, eta_pen0: Tensor, gap_offset: Tensor | None = None) -> EStep:
        """Conditioned E-step (slides eqs. 7-10) for `obs [E, S, obs]` at thresholds `eps [E]`: K = noise.shape[2]
        actions per state from pi_old(.|s, eps_i), their Q from the target critic, the dual (eta_i, lam_i) warm-
        started at (eta0, lam0) with the constraint's state-level part from the running estimate (c_gap of
        c_gap_n batches, this batch's folded in, plus `gap_offset` where given), and the weights (eq. 8). With
        `action_penalty` > 0, MO-MPO's second objective: the weights softmax_k(Q_pen / eta_pen) of
        `eq.action_penalty`, eta_pen warm-started at eta_pen0, are added (the M-step's weighted likelihood is linear
        in the weights: the sum of the two objectives' M-steps)."""
        hp = self.hparams
        loc_old, scale_old = self.actor_old(obs, eps.view(-1, 1, 1))  # [E, S, A]
        actions = loc_old.unsqueeze(2) + scale_old.unsqueeze(2) * noise  # [E, S, K, A]
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.estep_bf16):
            q_r, q_c = self.critic_target(obs.unsqueeze(2), actions, eps.view(-1, 1, 1, 1))  # [E, S, K]
        q_r, q_c = q_r.float(), q_c.float()
        eps_q = eq.eps_to_q_units(eps, hp.gamma, hp.horizon)
        q_means = torch.stack((q_r.mean((1, 2)), q_c.mean((1, 2))))
        eta, lam = eq.track_estep_dual(
            q_r, q_c, eps_q, hp.kappa, eta0, lam0, c_gap, c_gap_n, gap_offset=gap_offset, reduce=self.dual_reduce,
            **{k: v for k, v in self.dual.items() if k not in ("eta_init", "lam_init")},
        )
        weights = eq.estep_weights(q_r, q_c, eta, lam)
        eta_pen = eta_pen0
        if hp.action_penalty > 0:
            q_pen = eq.action_penalty(actions)  # the box [-1, 1]: the actor's tanh-bounded mean, the envs' actions
            eta_pen = eq.solve_penalty_temperature(q_pen, hp.action_penalty, eta_pen0, iters=self.dual["iters"],
                                                   reduce=self.dual_reduce)
            weights = weights + torch.softmax(q_pen / eta_pen[:, None, None], dim=-1)
        return EStep(actions, weights, eta, lam, eta_pen, loc_old, scale_old, q_means)

    def mstep_objective(self, obs: Tensor, eps: Tensor, actions: Tensor, weights: Tensor, loc_old: Tensor,
                        scale_old: Tensor, alpha_mu: Tensor, alpha_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Multi-eps M-step (slides "Versatile M-step"): decoupled weighted MLE plus the KL trust-region terms
        alpha_mu (kl_mean - bound) + alpha_sigma (kl_cov - bound), averaged over thresholds; (loss, kl_mu [E],
        kl_sigma [E])."""
        hp = self.hparams
        loc, scale = self.actor(obs, eps)
        loss_mle = eq.mstep_loss(actions, weights, loc, scale, loc_old, scale_old)
        kl_mu = eq.kl_mean(loc_old, loc, scale_old)
        kl_sigma = eq.kl_cov(scale_old, scale)
        loss = (loss_mle + alpha_mu * (kl_mu - hp.kl_mean_bound) + alpha_sigma * (kl_sigma - hp.kl_cov_bound)).mean()
        return loss, kl_mu, kl_sigma

    def lagrangian_update(self, batch: TensorDictBase, eps: Tensor,
                          bins: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """`cvi=False` ablation: the critic step, then the Lagrangian actor step against the updated critic;
        None if the critic step was skipped, (loss_critic, None) if only the actor step was (on_nan=skip)."""
        loss_critic = self.critic_step(batch, eps)
        if loss_critic is None:
            return None
        return loss_critic, self.lagrangian_step(self.split_states(batch["observation"], len(eps)), eps, bins)

    def lagrangian_step(self, obs: Tensor, eps: Tensor, bins: Tensor) -> Tensor | None:
        """`cvi=False` ablation: reparameterised Lagrangian actor loss, one multiplier per threshold bin."""
        hp, lag = self.hparams, self.lagrangian
        eps_b = eps.view(-1, 1, 1)
        loc, scale = self.actor(obs, eps_b)
        dist = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
        actions = dist.rsample()
        q_r, q_c = self.critic(obs, actions, eps_b)  # [E, S]; critic grads are discarded (zeroed next step)
        loss = eq.lagrangian_actor_loss(q_r, q_c, self.lam[bins], dist.log_prob(actions), lag["alpha"]).mean()
        if not self.check_finite({"actor loss": loss}):
            return None
        self.optimizer_step(self.optimizers()[1], loss)
        with torch.no_grad():
            q_r_mean, q_c_mean = self.reduce_mean(torch.stack((q_r.detach().mean(-1), q_c.detach().mean(-1))))
            eps_q = eq.eps_to_q_units(eps, hp.gamma, hp.horizon)
            integral = prev = started = None
            if lag["method"] == "pid":  # the PID state of these bins; nan: no step yet
                integral, prev = self.lam_integral[bins], self.lam_prev_cost[bins]
                started = ~torch.isnan(prev)
            # driven by Q_c against eps in Q units
            lam, integral, prev = multiplier_step(lag["method"], self.lam[bins], q_c_mean, eps_q, integral, prev,
                                                  started, lr=lag["lr"], lam_max=lag["lam_max"], pid=lag["pid"])
            if not self.check_finite({"Lagrange multiplier lam": lam}):
                return None
            self.lam[bins] = lam
            if lag["method"] == "pid":
                self.lam_integral[bins], self.lam_prev_cost[bins] = integral, prev
            kl = torch.zeros_like(q_c_mean)
            self.update_stats(bins, q_r=q_r_mean, q_c=q_c_mean, kl_mean=kl, kl_cov=kl)
        return loss.detach()

    # ---------------------------------------------------------------- helpers
    @functools.cached_property
    def trained_parameters(self) -> tuple[Tensor, ...]:
        """The parameters the optimizers step (critic, then actor)."""
        return tuple(p for opt in self.optimizers() for group in opt.param_groups for p in group["params"])

    @functools.cached_property
    def estep_bf16(self) -> bool:
        """Evaluate the E-step's K x S x E sampled Q values in bfloat16 (the update's largest matmul, ~3x faster
        where the hardware has native bf16; ~0.5% relative error, below the K-sample Monte-Carlo noise)."""
        choice = self.hparams.estep_precision
        if choice != "auto":
            return choice == "bf16"
        if self.device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return self.device.type == "cpu" and torch.backends.mkldnn.is_available() and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported())

    @functools.cached_property
    def dual_reduce(self) -> Callable | None:
        """The across-rank mean inside the compiled pass (the dual solver's statistics, then the KL and Q
        statistics): None on one process; under DDP kept out of torch.compile (a graph break that runs the
        collective eagerly). One object for the whole run, so that the compiled pass's guard on it holds."""
        if self.trainer.world_size == 1:
            return None
        return torch.compiler.disable(self.reduce_mean)

    def split_states(self, obs: Tensor, n_eps: int) -> Tensor:
        """`[B, obs]` -> `[E, S, obs]`: S = states_per_eps states per threshold (default B // E), distinct across
        thresholds while S * E <= B, else the first S states shared by every threshold."""
        per = self.hparams.states_per_eps or obs.shape[0] // n_eps
        if per * n_eps <= obs.shape[0]:
            return obs[: per * n_eps].view(n_eps, per, -1)
        return obs[:per].expand(n_eps, per, -1)

    def collection_eps(self) -> list[float]:
        """The thresholds the training envs draw: the behaviour ones, or with `threshold` set (CVPO) that one."""
        return super().collection_eps() if self.hparams.threshold is None else [float(self.hparams.threshold)]

    def sample_train_eps(self) -> Tensor:
        """Thresholds of this update (same on every rank): behaviour ones, plus versatile draws after the warm-up.
        Served from a table of `EPS_ROWS` updates' draws (`draw_train_eps`), drawn anew when it runs out or the
        stage changes: one set of generator calls per table instead of five per update (docs/performance.md).
        The unused rows are saved in checkpoints, so a resumed run draws what an uninterrupted one would.
        With `threshold` set (CVPO): that threshold alone, every update."""
        hp = self.hparams
        if hp.threshold is not None:  # CVPO: the one threshold of every update
            return torch.tensor([float(hp.threshold)], device=self.device)
        n_versatile = 0
        if self.global_frames >= hp.versatile_start * hp.total_frames:
            n_versatile = int(round(hp.n_eps * hp.versatile_frac))
        rows = self._eps_rows
        if rows is None or len(rows) == 0 or self._eps_rows_versatile != n_versatile:
            rows, self._eps_rows_versatile = self.draw_train_eps(EPS_ROWS, n_versatile), n_versatile
        if rows.device != self.device:
            rows = rows.to(self.device)
        self._eps_rows = rows[1:]
        return rows[0]

    def draw_train_eps(self, n: int, n_versatile: int) -> Tensor:
        """`[n, n_eps]` thresholds for n updates from the shared generator: per row, the behaviour thresholds in a
        random order (repeated at random when n_eps - n_versatile exceeds them), then n_versatile uniform draws
        from `eps_range`."""
        g, beh = self.eps_generator, self.eps_behavior_t
        n_beh = self.hparams.n_eps - n_versatile
        order = torch.rand(n, len(beh), generator=g).argsort(-1)  # a random permutation per row
        extra = torch.randint(len(beh), (n, max(0, n_beh - len(beh))), generator=g)
        picks = torch.cat([order, extra], -1)[:, :n_beh]
        lo, hi = self.eps_range
        return torch.cat([beh[picks], lo + (hi - lo) * torch.rand(n, n_versatile, generator=g)], -1)

    def update_stats(self, bins: Tensor, **values: Tensor) -> None:
        """Exponential moving averages per threshold bin of the `STATS_COLUMNS` (keywords), for logging."""
        new = torch.stack([values[name] for name in STATS_COLUMNS], -1).to(self.stats)
        self.stats[bins] = 0.9 * self.stats[bins] + 0.1 * new

    def per_eps_metrics(self) -> dict[str, Tensor]:
        """`multipliers/{lam,eta,alpha_mu,alpha_sigma}`, `critic/{q_r,q_c}`, `trust_region/{kl_mean,kl_cov}` and
        `estep/{lam_at_cap,cost_gap}` per threshold bin (w/o CVI: lam and the Q means)."""
        cols = {"multipliers/lam": self.lam, "critic/q_r": self.stats[:, 0], "critic/q_c": self.stats[:, 1]}
        if self.hparams.cvi:
            counts = self.lam_cap_count  # share of the updates since the last log with lam at its cap (0: none)
            cols |= {"multipliers/eta": self.eta, "multipliers/alpha_mu": self.alpha_mu,
                     "multipliers/alpha_sigma": self.alpha_sigma, "trust_region/kl_mean": self.stats[:, 2],
                     "trust_region/kl_cov": self.stats[:, 3],
                     "estep/lam_at_cap": counts[:, 1] / counts[:, 0].clamp(min=1.0),
                     "estep/cost_gap": self.c_gap}  # running mean_s E_pi_old[Q_c] - eps_q: > 0 is infeasible
            offset = self.gap_offset(torch.tensor(self.eps_bins, device=self.c_gap.device))
            if offset is not None:  # the measured episode costs' correction of that gap
                cols["estep/episode_gap_correction"] = offset
        return cols

    def on_metrics_logged(self) -> None:
        self.lam_cap_count.zero_()
