"""CPO and the CPO paper's baselines (PDO, TRPO, FPO) as on-policy LightningModules sharing one trust-region step.

Implementation details (paper -> code; "ours" marks our choices where the paper is silent):
1. Data: one on-policy collection per update from the TorchRL collector (`algos.onpolicy`); GAE (TorchRL
   `vec_generalized_advantage_estimate`) for reward and cost with V_r(s, eps), V_c(s, eps) critics fitted on it
   (`onpolicy.fit_value`). The actor is the project's `EpsActor` pi(a|s, eps) trained at one fixed threshold:
   `eps.behavior` must hold exactly one value, the limit d (so the shared any-eps evaluation applies, trivially).
2. Scales (see `equations`): J_c is the undiscounted episode cost (`onpolicy.episode_costs` of the collection),
   c = (J_c - d) / T per step, and b the gradient of the per-step cost surrogate mean(ratio A_c); A_c is only
   centred (a standardised A_c would change b's scale against c; FSRL standardises it, OmniSafe centres it).
   A_r is standardised: every step below is invariant to the scale of g. The episode length T is the env's
   `max_episode_steps` (the Circle tasks run full-length episodes; approximate where episodes end early).
3. CPO step (paper §6.1-6.2, Algorithm 1): g and b by autograd, rank-averaged; x = H^-1 g and p = H^-1 b by
   conjugate gradient with Fisher-vector products of the mean KL(pi_k || pi) (damping `cg_damping`, rank-averaged);
   q = g^T x, r = g^T p, s = b^T p; the analytic dual with all cases (`cpo_dual_solution`), the step of eq. (13)
   or the recovery step of eq. (14); a backtracking line search (`trust_region.backtracking_line_search`) that
   accepts KL <= delta and a cost-surrogate change <= max(-c, 0), plus a reward-surrogate gain when pi_k is
   feasible (`cpo_line_search_accepts`). A failed search keeps pi_k (OmniSafe; FSRL keeps the last try).
4. PDO (paper §7, eq. 16): the same trust-region step (TRPO's, paper §8.1: "equivalent trust region policy
   updates") on A_r - nu A_c, with nu stepped once per collection before the policy step by
   `lagrange.LagrangeMultipliers` (method `gradient` = eq. 16; J_c against d in episode-cost units).
   TRPO: nu = 0. FPO: fixed nu (`penalty_nu`; paper §8.3 uses 1, 5, 50). The combined advantage is standardised.
5. Cost shaping (paper §6.3, `cost_shaping=true`, any variant): an MLP classifier p(s) of "a cost > 0 within the
   next `shaping.horizon` steps of the episode" is trained on each collection (`shaping.epochs` passes, BCE, its own
   Adam) before the collection's advantages are computed; C+ = C + p(s') replaces C for the cost advantages and
   for J_c (`onpolicy.episode_costs` adds the shaping's mean per step times T), so CPO, PDO and FPO constrain C+.
   The logged episode costs and the evaluation use the env's true C.
6. Multi-constraint eq. (12) (`equations.multi_constraint_dual_solution`) is a tested pure function; the trainer's
   envs supply one cost signal, so this module always solves the single-constraint dual analytically.
7. Logged per update (`update/...`): case, lam, nu, step_fraction, backtracks, kl, surr_reward_change,
   surr_cost_change, c, q, r, s, j_c (and shaping_loss, shaping_positive with cost shaping).
8. DDP: g, b (one collective), every Fisher-vector product and the line-search statistics are rank means, so the
   CG iterates, the case and the accepted step are identical on every rank and so are the parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import Tensor, nn
from torchrl.modules import MLP

from ccpo_pl.algos import onpolicy
from ccpo_pl.algos import trust_region as tr
from ccpo_pl.algos.cpo import equations as eq
from ccpo_pl.algos.lagrange import LagrangeMultipliers
from ccpo_pl.algos.onpolicy import diag_normal_kl, diag_normal_log_prob
from ccpo_pl.algos.safe_module import SafeRLModule

VARIANTS = ("cpo", "pdo", "trpo", "fpo")
_TINY = 1e-8


class CPO(SafeRLModule):
    """Constrained Policy Optimization (Achiam et al. 2017) and, by `variant`, its baselines PDO, TRPO and FPO.

    Args:
        actor: `EpsActor`, trained at the single threshold eps.behavior[0].
        value: `ValueCritic` V_r(s, eps), V_c(s, eps).
        gamma, gae_lambda: discount and GAE lambda of reward and cost.
        lr_value, value_epochs: Adam step size of the critics, passes over the collection per critic fit.
        minibatch_size: transitions per critic (and cost-shaping classifier) minibatch.
        variant: "cpo" (constrained step), "pdo" (learned penalty, eq. 16), "trpo" (no penalty), "fpo" (fixed).
        target_kl: trust-region bound delta on the mean KL(pi_k || pi).
        cg_iters, cg_damping, cg_residual_tol: conjugate gradient and Fisher damping.
        max_backtracks, backtrack_coeff: the line search (tries shrink^0 .. shrink^max_backtracks).
        penalty_nu: FPO's fixed nu.
        lagrange: PDO's multiplier settings (`LagrangeMultipliers` kwargs: method, lam_init, lr, lam_max, pid).
        cost_shaping: constrain C+ = C + p (paper §6.3) instead of C.
        shaping: the classifier: horizon, hidden, lr, epochs, minibatch_size.
    """

    #: every gradient is taken by `torch.autograd.grad` and averaged across ranks by `onpolicy.mean_grads`: no
    #: backward runs through DDP's hooks, so DDP has no graph to search (`SafeRLModule.ddp_unused_parameters`)
    ddp_unused_parameters = False

    def __init__(self, actor: nn.Module, value: nn.Module, *, eps_behavior: Sequence[float], eps_range: Sequence[float],
                 eps_bin: float, horizon: int, gamma: float = 0.99, gae_lambda: float = 0.95, lr_value: float = 1e-3,
                 value_epochs: int = 10, minibatch_size: int = 512, variant: str = "cpo", target_kl: float = 0.01,
                 cg_iters: int = 10, cg_damping: float = 0.1, cg_residual_tol: float = 1e-10,
                 max_backtracks: int = 15, backtrack_coeff: float = 0.8, penalty_nu: float = 0.0,
                 lagrange: dict | None = None, cost_shaping: bool = False, shaping: dict | None = None,
                 total_frames: int | None = None, **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not allowed; use one of {', '.join(VARIANTS)}")
        if len(eps_behavior) != 1:
            raise ValueError(f"{variant} is single-threshold: eps.behavior={list(eps_behavior)} must hold one "
                             f"value (the cost limit), e.g. eps.behavior=[25]")
        if not target_kl > 0 or not 0 < backtrack_coeff < 1 or penalty_nu < 0:
            raise ValueError(f"need target_kl > 0, 0 < backtrack_coeff < 1, penalty_nu >= 0; got {target_kl}, "
                             f"{backtrack_coeff}, {penalty_nu}")
        super().__init__(eps_behavior=eps_behavior, eps_range=eps_range, eps_bin=eps_bin, horizon=horizon, **kwargs)
        self.save_hyperparameters(ignore=["actor", "value", "make_train_env", "make_eval_env"])
        onpolicy.attach(self, actor, value, eps_behavior, gamma=gamma, gae_lambda=gae_lambda, lr_value=lr_value,
                        value_epochs=value_epochs, minibatch_size=minibatch_size)
        self.variant = variant
        self.target_kl, self.cg_iters, self.cg_damping = float(target_kl), int(cg_iters), float(cg_damping)
        self.cg_residual_tol = float(cg_residual_tol)
        self.max_backtracks, self.backtrack_coeff = int(max_backtracks), float(backtrack_coeff)
        self.penalty_nu = float(penalty_nu)
        self.lagrange = LagrangeMultipliers(1, **(lagrange or {})) if variant == "pdo" else None
        self.cost_shaping = bool(cost_shaping)
        self.shaping_cfg = {"horizon": 10, "hidden": [64, 64], "lr": 1e-3, "epochs": 5, "minibatch_size": 2000,
                            **(shaping or {})}
        self.shaping = None
        if self.cost_shaping:
            obs_dim = int(kwargs.get("obs_dim") or actor.trunk[0].in_features - 1)
            self.shaping = MLP(obs_dim, 1, num_cells=list(self.shaping_cfg["hidden"]), activation_class=nn.ReLU)
        self._shaped: tuple[int, Tensor] | None = None
        self._shaping_stats: dict[str, Tensor] = {}

    optimizer, mean_grads = onpolicy.optimizer, onpolicy.mean_grads

    # ---------------------------------------------------------------- optimizers and the cost signal

    def configure_optimizers(self):
        return [torch.optim.Adam(self.value.parameters(), lr=self.lr_value), *self.policy_optimizers()]

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        """The policy is written directly (trust region); with cost shaping, the classifier's Adam."""
        if self.shaping is None:
            return []
        return [torch.optim.Adam(self.shaping.parameters(), lr=float(self.shaping_cfg["lr"]))]

    def cost_signal(self, batch: TensorDictBase) -> Tensor:
        """C, or with cost shaping C+ = C + p(s') (eq. 15), the classifier refitted once per collection first."""
        cost = batch["next", "cost"]
        if self.shaping is None:
            return cost
        key = self.rollouts.stream.collects if self.rollouts is not None else -1
        if self._shaped is None or self._shaped[0] != key:
            self.fit_shaping(batch)
            with torch.no_grad():
                delta = torch.sigmoid(self.shaping(batch["next", "observation"]))  # [envs, steps, 1]
            self._shaped = (key, eq.shaped_cost(cost, delta.to(cost)))
        return self._shaped[1]

    @torch.enable_grad()
    def fit_shaping(self, batch: TensorDictBase) -> None:
        """Paper §6.3: the classifier of "unsafe within H steps" on this collection (BCE, rank-averaged grads)."""
        labels = eq.unsafe_within_horizon(batch["next", "cost"].squeeze(-1), batch["next", "done"].squeeze(-1),
                                          int(self.shaping_cfg["horizon"])).reshape(-1)
        obs = batch["observation"].reshape(labels.shape[0], -1)
        params, opt = list(self.shaping.parameters()), self.optimizer(1)
        total, n = torch.zeros((), device=self.device), 0
        for _ in range(int(self.shaping_cfg["epochs"])):
            for idx in onpolicy.minibatches(labels.shape[0], int(self.shaping_cfg["minibatch_size"]), self.device):
                loss = F.binary_cross_entropy_with_logits(self.shaping(obs[idx]).squeeze(-1), labels[idx].float())
                self.check_finite({"cost-shaping loss": loss}, can_skip=False)
                onpolicy.apply_grads(opt, params, self.mean_grads(loss, params))
                total, n = total + loss.detach(), n + 1
        self._shaping_stats = {"shaping_loss": total / max(n, 1), "shaping_positive": labels.float().mean()}

    # ---------------------------------------------------------------- the algorithm box
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        """Algorithm 1 per collection: J_C(pi_k), the advantages A_r, A_c and V fit, then the trust-region step."""
        start = time.perf_counter()
        if not onpolicy.new_collection(self, batch):
            return
        cost = self.cost_signal(batch)  # C, or C+ = C + p(s') with cost shaping
        j_c = onpolicy.episode_costs(self, batch, cost, self.j_c)
        data = onpolicy.advantages(batch, self.actor, self.value, cost, self.gamma, self.gae_lambda)
        loss_value = onpolicy.fit_value(self, self.value, self.optimizer(0), data, self.value_epochs,
                                        self.minibatch_size)
        loss_policy = self.policy_update(data, j_c)  # g, b, H; the dual; the step of eq. (13)/(14); line search
        onpolicy.end_update(self, start, loss_value, loss_policy)

    def policy_update(self, data: TensorDictBase, j_c: Tensor) -> Tensor | None:
        """Algorithm 1 (CPO) or the penalised TRPO step (PDO, TRPO, FPO) from one collection."""
        d = float(self.eps_behavior_t[0])
        c = float(eq.constraint_value(j_c[0], d, self.hparams.horizon))
        adv_r = self._standardise(data["adv_r"])
        adv_c = data["adv_c"] - self.reduce_mean(data["adv_c"].mean())
        if self.variant == "cpo":
            return self.cpo_step(data, adv_r, adv_c, c, j_c)
        if self.variant == "pdo":
            nu = float(self.lagrange.update(j_c[:1], d)[0])  # eq. (16), before the step (OmniSafe's order)
        else:
            nu = self.penalty_nu  # trpo: 0
        adv = self._standardise(data["adv_r"] - nu * data["adv_c"])
        return self.penalty_step(data, adv, adv_c, nu, c, j_c)

    def cpo_step(self, data: TensorDictBase, adv_r: Tensor, adv_c: Tensor, c: float, j_c: Tensor) -> Tensor | None:
        """g, b, H^-1 g, H^-1 b, the analytic dual (its case), eq. (13)/(14), the line search; returns -gain."""
        params = list(self.actor.parameters())
        surr_r, surr_c, kl = self._surrogates(data, adv_r, adv_c)
        gb = torch.cat([tr.flat_grad(surr_r, params, retain_graph=True),
                        tr.flat_grad(surr_c, params, retain_graph=True)])
        g, b = self.reduce_mean(gb).chunk(2)  # one collective for both
        if not self.check_finite({"reward-surrogate gradient g": g, "cost-surrogate gradient b": b}):
            return None
        Fvp = tr.fisher_vector_product(kl, params, self.cg_damping, reduce=self._rank_mean)
        x = tr.conjugate_gradient(Fvp, g, self.cg_iters, self.cg_residual_tol)
        p = tr.conjugate_gradient(Fvp, b, self.cg_iters, self.cg_residual_tol)
        q, r, s = float(g @ x), float(g @ p), float(b @ p)
        sol = eq.cpo_dual_solution(q, r, s, c, self.target_kl)
        step = eq.cpo_step(x, p, sol)
        accept = lambda st, frac: eq.cpo_line_search_accepts(  # noqa: E731
            float(st["kl"]), float(st["d_r"]), float(st["d_c"]), c, self.target_kl, sol.case)
        res, base = self._line_search(data, adv_r, adv_c, step, accept)
        self.log_update({"case": sol.case, "lam": sol.lam, "nu": sol.nu, "c": c, "q": q, "r": r, "s": s,
                         **self._search_stats(res), "j_c": j_c[0], **self._shaping_stats})
        return -torch.as_tensor(float(res.stats["d_r"]) if res.accepted else 0.0, device=self.device)

    def penalty_step(self, data: TensorDictBase, adv: Tensor, adv_c: Tensor, nu: float, c: float,
                     j_c: Tensor) -> Tensor | None:
        """TRPO's natural-gradient step on the surrogate of A = A_r - nu A_c (PDO, TRPO, FPO); returns -gain.
        The line search accepts KL <= delta and a gain of the A surrogate; the A_c surrogate is only logged."""
        params = list(self.actor.parameters())
        surr, _, kl = self._surrogates(data, adv, adv_c)
        g = self.reduce_mean(tr.flat_grad(surr, params, retain_graph=True))
        if not self.check_finite({"surrogate gradient g": g}):
            return None
        Fvp = tr.fisher_vector_product(kl, params, self.cg_damping, reduce=self._rank_mean)
        step, _, q = tr.natural_gradient_step(g, Fvp, self.target_kl, self.cg_iters, self.cg_residual_tol)
        accept = lambda st, frac: bool(st["kl"] <= self.target_kl and st["d_r"] > 0)  # noqa: E731
        res, _ = self._line_search(data, adv, adv_c, step, accept)
        self.log_update({"nu": nu, "c": c, "q": float(q), **self._search_stats(res), "j_c": j_c[0],
                         **self._shaping_stats})
        return -torch.as_tensor(float(res.stats["d_r"]) if res.accepted else 0.0, device=self.device)

    # ---------------------------------------------------------------- helpers
    def _surrogates(self, data: TensorDictBase, adv_r: Tensor, adv_c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's per-step surrogates mean(ratio A_r), mean(ratio A_c) and mean KL(pi_k || pi)."""
        loc, scale = self.actor(data["observation"], data["eps"])
        ratio = torch.exp(diag_normal_log_prob(data["action"], loc, scale) - data["log_prob_old"])
        kl = diag_normal_kl(data["loc_old"], data["scale_old"], loc, scale).mean()
        return (ratio * adv_r).mean(), (ratio * adv_c).mean(), kl

    def _line_search(self, data, adv_r, adv_c, step, accept) -> tuple[tr.LineSearchResult, Tensor]:
        """Backtracking along `step`; statistics (KL, surrogate changes) are rank means, so are the decisions."""
        def stats() -> Tensor:
            s_r, s_c, kl = self._surrogates(data, adv_r, adv_c)
            return self.reduce_mean(torch.stack((s_r, s_c, kl)).detach())

        with torch.no_grad():
            base = stats()

        def evaluate() -> dict[str, Tensor]:
            s_r, s_c, kl = stats()
            return {"d_r": s_r - base[0], "d_c": s_c - base[1], "kl": kl}

        params = list(self.actor.parameters())
        res = tr.backtracking_line_search(params, step, evaluate, accept, self.max_backtracks, self.backtrack_coeff)
        return res, base

    @staticmethod
    def _search_stats(res: tr.LineSearchResult) -> dict[str, float]:
        """The accepted step's fraction, backtracks, KL and surrogate changes (zeros when none was accepted)."""
        taken = res.accepted
        pick = lambda k: float(res.stats[k]) if taken else 0.0  # noqa: E731
        return {"step_fraction": res.frac, "backtracks": res.backtracks, "kl": pick("kl"),
                "surr_reward_change": pick("d_r"), "surr_cost_change": pick("d_c")}

    def _standardise(self, adv: Tensor) -> Tensor:
        """(A - mean) / std over the whole collection, all ranks."""
        moments = self.reduce_mean(torch.stack((adv.mean(), (adv * adv).mean())))
        std = (moments[1] - moments[0] ** 2).clamp_min(0.0).sqrt()
        return (adv - moments[0]) / (std + _TINY)

    @property
    def _rank_mean(self):
        return self.reduce_mean if self.trainer.world_size > 1 else None

    def log_update(self, diagnostics: dict, per_behavior: dict | None = None) -> None:
        """`onpolicy.log_update`'s `update/...` logging; `update/multiplier` for PDO as well."""
        if self.lagrange is not None:
            diagnostics = {**diagnostics, "multiplier": self.lagrange.lam[0]}
        onpolicy.log_update(self, diagnostics, per_behavior)
