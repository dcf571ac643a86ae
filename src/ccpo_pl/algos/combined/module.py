"""C-PPO-Lag and C-TRPO-Lag (the CCPO paper's linear-combination baselines) as on-policy LightningModules.

Both train one PPO-Lag / TRPO-Lag policy per behaviour threshold eps_i in one run and share everything but the
policy step. The actor is a `CombinedActor`: at eps = eps_i it is policy i exactly, so the behaviour-threshold
collection acts with each threshold's own policy, and at any other eps (evaluation) it is the paper's combination
pi(.|eps) = w1 pi(.|eps_1) + w2 pi(.|eps_2) (reading and extrapolation: `combined.actor`).

Implementation details (paper -> code; "ours" marks our choices; the paper gives only the combination rule):
1. Data: one collection per update (`algos.onpolicy`); every episode runs under one behaviour threshold drawn by
   the env, so policy i learns only from the transitions collected under eps_i (their loss reaches only policy i's
   parameters; losses are averaged within each threshold and summed, so each policy gets the gradient it would get
   alone). `collect.frames_per_collect` is three FSRL collections, so each policy sees about FSRL's data per update.
2. Critics: V_r(s, eps), V_c(s, eps), one network each with eps as an input (not one pair per
   threshold). In training eps takes only the behaviour values, so it acts as a threshold index: the critic is a
   per-threshold critic with a shared trunk. GAE(gamma, lambda) for reward and cost (TorchRL), fitted by
   `onpolicy.fit_value`.
3. Multipliers: one lam_i per behaviour threshold (`lagrange.LagrangeMultipliers`, gradient or PID, config
   `algo.lagrange.method`), stepped once per collection before the policy step (OmniSafe's order) with the
   episode-cost estimate J_c(eps_i) of `onpolicy.episode_costs` against eps_i (FSRL: raw episodic cost, no
   discount conversion).
4. Advantage: per threshold, A_r standardised (mean 0, std 1) and A_c centred (OmniSafe's default;
   `standardise_cost_adv=true` also divides by its std, FSRL's choice, which turns the value noise of a cost-free
   collection into unit-size advantages), both over the whole collection (ours; FSRL per minibatch); then the
   rescaled Lagrangian advantage (A_r - lam_i A_c) / (1 + lam_i) (`equations.lagrangian_advantage`).
5. C-PPO-Lag: TorchRL `ClipPPOLoss` on the combined actor with this advantage written to its `advantage` key and no
   critic (`onpolicy.fit_value` fits the critics); per-transition losses (`reduction="none"`) averaged per threshold.
   `ppo_epochs` passes of random minibatches, Adam, each policy's gradient clipped to `max_grad_norm` on its own;
   after each pass, the exact KL(pi_old || pi_i) per threshold over the collection: a policy whose KL exceeds
   1.5 target_kl stops for this collection (FSRL's early stop, made per threshold).
6. C-TRPO-Lag: per threshold, the natural-gradient step on the unclipped surrogate mean(r A) with KL bound
   `target_kl` by `algos.trust_region` (CG with damping, step sqrt(2 delta / x^T H x) x, backtracking line search
   accepting KL <= delta and a surrogate gain > 0). A failed line search keeps the old policy (FSRL keeps the last,
   smallest step; OmniSafe reverts, as here).
7. DDP: gradients, Fisher-vector products and line-search statistics are rank-averaged (`mean_grads`,
   `reduce_mean`); the early-stop decisions and multipliers then agree on every rank. Per-threshold batch sizes may
   differ between ranks (the env draws eps per episode): the rank mean then weights ranks equally.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import ClipPPOLoss

from ccpo_pl.algos import onpolicy
from ccpo_pl.algos import trust_region as tr
from ccpo_pl.algos.combined import equations as eq
from ccpo_pl.algos.combined.actor import CombinedActor
from ccpo_pl.algos.lagrange import LagrangeMultipliers
from ccpo_pl.algos.onpolicy import diag_normal_log_prob
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.nets import make_policy


class CombinedLagrangian(SafeRLModule):
    """Shared part: critics, multipliers per behaviour threshold and the combined advantage; subclasses take the
    policy step.

    Args:
        actor: the `CombinedActor`, one policy per behaviour threshold.
        value: `ValueCritic` V_r(s, eps), V_c(s, eps).
        gamma, gae_lambda: discount and GAE lambda of reward and cost.
        lr_value, value_epochs: Adam step size of the critics, passes over the collection per critic fit.
        minibatch_size: transitions per critic (and PPO) minibatch.
        lagrange: the multipliers' settings (`LagrangeMultipliers` kwargs).
        standardise_cost_adv: divide A_c by its std as well (implementation detail 4).
        target_kl: the KL bound (TRPO) or early-stop level (PPO).
    """

    #: every gradient is taken by `torch.autograd.grad` and averaged across ranks by `onpolicy.mean_grads`: no
    #: backward runs through DDP's hooks, so DDP has no graph to search (`SafeRLModule.ddp_unused_parameters`)
    ddp_unused_parameters = False

    def __init__(self, actor: CombinedActor, value: nn.Module, *, eps_behavior: Sequence[float],
                 eps_range: Sequence[float], eps_bin: float, horizon: int, total_frames: int, gamma: float = 0.99,
                 gae_lambda: float = 0.95, lr_value: float = 1e-3, value_epochs: int = 10, minibatch_size: int = 512,
                 lagrange: dict | None = None, standardise_cost_adv: bool = False, target_kl: float = 0.02,
                 **kwargs):
        super().__init__(eps_behavior=eps_behavior, eps_range=eps_range, eps_bin=eps_bin, horizon=horizon, **kwargs)
        # the init arguments of this class and of the subclass that called it (nets and env factories excluded)
        self.save_hyperparameters(ignore=["actor", "value", "make_train_env", "make_eval_env"])
        onpolicy.attach(self, actor, value, eps_behavior, gamma=gamma, gae_lambda=gae_lambda, lr_value=lr_value,
                        value_epochs=value_epochs, minibatch_size=minibatch_size)
        if actor.eps_behavior.tolist() != [float(e) for e in eps_behavior]:
            raise ValueError(f"the actor's thresholds {actor.eps_behavior.tolist()} differ from eps.behavior="
                             f"{list(eps_behavior)}")
        self.lagrange = LagrangeMultipliers(len(eps_behavior), **(lagrange or {}))
        self.standardise_cost_adv, self.target_kl = bool(standardise_cost_adv), float(target_kl)
        if not self.target_kl > 0:
            raise ValueError(f"algo.target_kl={target_kl} must be > 0")

    optimizer, mean_grads, log_update = onpolicy.optimizer, onpolicy.mean_grads, onpolicy.log_update

    def configure_optimizers(self):
        return [torch.optim.Adam(self.value.parameters(), lr=self.lr_value), *self.policy_optimizers()]

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of the policies (none for trust-region steps that write the parameters directly)."""
        return []

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        """Per collection: J_c(eps_i) and the advantages of every behaviour threshold, the critic fit, then per
        threshold lam_i and a PPO-Lag / TRPO-Lag step of policy i."""
        start = time.perf_counter()
        if not onpolicy.new_collection(self, batch):
            return
        cost = batch["next", "cost"]
        j_c = onpolicy.episode_costs(self, batch, cost, self.j_c)
        data = onpolicy.advantages(batch, self.actor, self.value, cost, self.gamma, self.gae_lambda)
        loss_value = onpolicy.fit_value(self, self.value, self.optimizer(0), data, self.value_epochs,
                                        self.minibatch_size)
        onpolicy.end_update(self, start, loss_value, self.policy_update(data, j_c))

    def policy_update(self, data: TensorDictBase, j_c: Tensor) -> Tensor | None:
        """Multipliers from J_c, the combined advantage, then the subclass's policy step."""
        lam = self.lagrange.update(j_c, self.eps_behavior_t)
        if not self.check_finite({"Lagrange multiplier lam": lam}):
            return None
        idx = self.actor.threshold_index(data["eps"])
        n = len(lam)
        adv_r = eq.standardise_per_threshold(data["adv_r"], idx, n)
        if self.standardise_cost_adv:
            adv_c = eq.standardise_per_threshold(data["adv_c"], idx, n)
        else:  # centred only
            adv_c = data["adv_c"] - eq.mean_per_threshold(data["adv_c"], idx, n)[idx]
        adv = eq.lagrangian_advantage(adv_r, adv_c, lam.to(adv_r)[idx])
        loss, stats = self.policy_step(data, idx, adv)
        if loss is None:
            return None
        self.log_update({"loss_policy": loss, **stats.pop("scalars", {})},
                        per_behavior={"lam": lam, "j_c": j_c, **stats})
        return loss

    def policy_step(self, data: TensorDictBase, idx: Tensor, adv: Tensor) -> tuple[Tensor | None, dict]:
        """Subclass: update every policy from its transitions; (loss, {name: [E] tensor, "scalars": {...}})."""
        raise NotImplementedError

    @torch.no_grad()
    def kl_per_threshold(self, data: TensorDictBase, idx: Tensor) -> Tensor:
        """Mean KL(pi_old || pi_i) over each threshold's transitions `[E]` (exact, diagonal Gaussians), rank mean."""
        loc, scale = self.actor(data["observation"], data["eps"])
        kl = eq.gaussian_kl(data["loc_old"], data["scale_old"], loc, scale)
        return self.reduce_mean(eq.mean_per_threshold(kl, idx, len(self.actor.policies)))


class CPPOLag(CombinedLagrangian):
    """C-PPO-Lag: a PPO-Lag policy per behaviour threshold (clipped surrogate by TorchRL's `ClipPPOLoss`)."""

    def __init__(self, actor: CombinedActor, value: nn.Module, *, lr_actor: float = 5e-4, ppo_epochs: int = 4,
                 clip_epsilon: float = 0.2, entropy_coeff: float = 0.0, max_grad_norm: float = 0.5, **kwargs):
        super().__init__(actor, value, **kwargs)
        self.lr_actor, self.ppo_epochs, self.max_grad_norm = float(lr_actor), int(ppo_epochs), float(max_grad_norm)
        if self.ppo_epochs < 1 or not 0 < clip_epsilon < 1:
            raise ValueError(f"algo.ppo_epochs={ppo_epochs} must be >= 1 and algo.clip_epsilon={clip_epsilon} "
                             f"in (0, 1)")
        # a plain attribute, not a submodule: it holds the actor, whose weights must be saved once (as `actor.*`)
        object.__setattr__(self, "ppo_loss", ClipPPOLoss(
            make_policy(actor), None, clip_epsilon=clip_epsilon, entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff, critic_coeff=None, normalize_advantage=False, reduction="none",
            functional=False))
        self.ppo_loss.set_keys(advantage="advantage", sample_log_prob="log_prob_old")

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.actor.parameters(), lr=self.lr_actor)]

    def policy_step(self, data, idx, adv):
        self.ppo_loss.to(self.device)
        n = len(self.actor.policies)
        td = data.select("observation", "eps", "action", "log_prob_old").set("advantage", adv.unsqueeze(-1))
        params = list(self.actor.parameters())
        groups = [list(p.parameters()) for p in self.actor.policies]
        active = torch.ones(n, dtype=torch.bool, device=self.device)  # FSRL's KL early stop, per threshold
        frozen: set[int] = set()
        total, clip_frac, steps, epochs = torch.zeros((), device=self.device), 0.0, 0, torch.zeros(n)
        for _ in range(self.ppo_epochs):
            for mb in onpolicy.minibatches(data.shape[0], self.minibatch_size, self.device):
                out = self.ppo_loss(td[mb])
                per_sample = out["loss_objective"].reshape(-1)
                if "loss_entropy" in out.keys():  # noqa: SIM118 - a TensorDict has no `in`
                    per_sample = per_sample + out["loss_entropy"].reshape(-1)
                loss = (eq.mean_per_threshold(per_sample, idx[mb], n) * active).sum()
                if not self.check_finite({"policy loss": loss}):
                    return None, {}
                grads = self.mean_grads(loss, params)
                clip_per_policy(grads, params, groups, self.max_grad_norm)
                grads = [None if id(p) in frozen else g for p, g in zip(params, grads)]  # Adam skips them
                onpolicy.apply_grads(self.optimizer(1), params, grads)
                total, clip_frac, steps = total + loss.detach(), clip_frac + out["clip_fraction"].detach(), steps + 1
            epochs += active.cpu().float()
            kl = self.kl_per_threshold(data, idx)
            active &= kl <= 1.5 * self.target_kl
            frozen = {id(p) for i, g in enumerate(groups) if not active[i] for p in g}
            if not bool(active.any()):
                break
        stats = {"kl": kl, "ppo_epochs": epochs, "scalars": {"clip_fraction": clip_frac / max(steps, 1)}}
        return total / max(steps, 1), stats


class CTRPOLag(CombinedLagrangian):
    """C-TRPO-Lag: a TRPO-Lag policy per behaviour threshold (natural gradient by `algos.trust_region`)."""

    def __init__(self, actor: CombinedActor, value: nn.Module, *, cg_iters: int = 10, cg_damping: float = 0.1,
                 max_backtracks: int = 10, backtrack_coeff: float = 0.8, **kwargs):
        super().__init__(actor, value, **kwargs)
        self.cg_iters, self.cg_damping = int(cg_iters), float(cg_damping)
        self.max_backtracks, self.backtrack_coeff = int(max_backtracks), float(backtrack_coeff)

    def policy_step(self, data, idx, adv):
        n = len(self.actor.policies)
        counts = self.reduce_mean(torch.bincount(idx, minlength=n).double())
        gains, kls, fracs = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        batch = data.select("observation", "action", "log_prob_old", "loc_old", "scale_old").set("adv", adv)
        for i, policy in enumerate(self.actor.policies):
            if counts[i] == 0:  # no transition of this threshold on any rank: nothing to learn from
                continue
            result = self.natural_step(policy, batch[idx == i])
            if result is None:
                return None, {}
            gains[i], kls[i], fracs[i] = result
        # the "loss" logged is minus the surrogate gain of the accepted steps (0 where the line search failed)
        return -gains.sum().to(self.device), {"kl": kls, "step_fraction": fracs, "surrogate_gain": gains}

    def natural_step(self, policy: nn.Module, batch: TensorDictBase) -> tuple[float, float, float] | None:
        """One TRPO step of one policy on its threshold's transitions: (surrogate gain, KL, accepted step
        fraction), zeros if the line search failed; None if skipped (non-finite gradient)."""
        params = list(policy.parameters())

        def surrogate_and_kl() -> tuple[Tensor, Tensor]:
            """This rank's mean surrogate and KL (0 where this rank has none of the threshold's transitions)."""
            loc, scale = policy(batch["observation"])
            log_prob = diag_normal_log_prob(batch["action"], loc, scale)
            surr = eq.importance_surrogate(log_prob, batch["log_prob_old"], batch["adv"])
            kl = eq.gaussian_kl(batch["loc_old"], batch["scale_old"], loc, scale)
            return surr.sum() / max(len(surr), 1), kl.sum() / max(len(kl), 1)

        def evaluate() -> dict[str, Tensor]:
            return dict(zip(("surr", "kl"), self.reduce_mean(torch.stack(surrogate_and_kl()))))

        surr, kl = surrogate_and_kl()
        g = torch.cat([x.reshape(-1) for x in self.mean_grads(surr, params, retain_graph=True)])
        if not self.check_finite({"surrogate gradient": g}):
            return None
        reduce = self.reduce_mean if self.trainer.world_size > 1 else None
        fvp = tr.fisher_vector_product(kl, params, self.cg_damping, reduce=reduce)
        step, _, _ = tr.natural_gradient_step(g, fvp, self.target_kl, self.cg_iters)
        surr0 = float(self.reduce_mean(surr.detach()))
        result = tr.backtracking_line_search(
            params, step, evaluate, lambda st, frac: bool(st["kl"] <= self.target_kl and st["surr"] > surr0),
            max_backtracks=self.max_backtracks, shrink=self.backtrack_coeff)
        if not result.accepted:
            return 0.0, 0.0, 0.0
        return float(result.stats["surr"]) - surr0, float(result.stats["kl"]), result.frac


def clip_per_policy(grads: list[Tensor], params: list[Tensor], groups: list[list[Tensor]], max_norm: float) -> None:
    """Scale, in place, each policy's gradients so that their joint L2 norm is at most `max_norm` (FSRL clips the
    whole model's; here each behaviour threshold's policy is clipped on its own, as if trained alone)."""
    where = {id(p): k for k, p in enumerate(params)}
    for group in groups:
        gs = [grads[where[id(p)]] for p in group]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(gs, scale)
