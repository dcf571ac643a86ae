"""CCPO equations: pure tensor functions, vectorised over a leading threshold dim E.

Most of it is the E-step dual and its batched projected-Newton solver (derivatives, direction, candidate steps),
kept beside the equations it solves.

Order follows the algorithm: cost threshold -> Q units, conditioned E-step (dual, its derivatives, its solver,
the nonparametric weights), versatile M-step (decoupled KL, weighted max-likelihood, trust-region multiplier),
then the Lagrangian pieces of the `cvi=false` ablation. Sources: the CCPO paper and slides (Yao, Liu et al.,
NeurIPS 2023) and FSRL's CVPO implementation.
Shapes: E thresholds, S states, K sampled actions per state, A action dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_LINE_SEARCH_STEPS = (1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 32, 1 / 64)
_MARQUARDT = 1e-3  # minimum relative Levenberg-Marquardt damping of the Hessian diagonal
_MAX_LOG_STEP = math.log(100.0)  # one iteration moves eta by at most a factor 100
_TINY = 1e-12  # absolute floor of the damped Hessian diagonal (a constant Q_c gives zero curvature in lam)


def eps_to_q_units(eps: float | Tensor, gamma: float, horizon: int) -> float | Tensor:
    """FSRL/cvpo `qc_thres`: episodic cost budget -> per-state threshold on the discounted cost Q_c.

    eps_q = eps * (1 - gamma^T) / ((1 - gamma) * T): the budget spread evenly over T steps, then discounted.

    Args:
        eps: episodic cost threshold(s), a float or a tensor of any shape.
        gamma: discount factor in (0, 1].
        horizon: episode length T.

    Returns:
        eps_q with the type and shape of `eps`.

    Differs from the paper: the slides compare Q_c with eps directly; this conversion is FSRL's and assumes
    fixed-length episodes (approximate for tasks that terminate early).
    """
    if gamma == 1.0:
        return eps
    return eps * (1.0 - gamma**horizon) / ((1.0 - gamma) * horizon)


def episode_cost_correction(eps: Tensor, eps_behavior: Tensor, ep_gap_q: Tensor, critic_gap: Tensor,
                            measured: Tensor) -> Tensor:
    """The correction of the E-step constraint's state-level gap by the measured episode costs (OmniSafe's
    off-policy Lagrangian methods drive their multiplier by the measured episode cost for the same reason: the
    critic's mean over replay states is not the policy's own cost).

    At each behaviour threshold b the critic's running gap (`running_cost_gap`, over the mixed replay states of all
    behaviour policies) is replaced by the gap its own training episodes measure, in Q units
    (`eps_to_q_units(J_c(b) - b)`): bias_b = ep_gap_q_b - critic_gap_b, 0 where no episode was measured yet. At
    any other threshold the bias is interpolated linearly in eps between its neighbouring behaviour thresholds and
    held constant beyond the first and the last.

    Args:
        eps: [E] the update's thresholds.
        eps_behavior: [N] the behaviour thresholds, ascending.
        ep_gap_q: [N] running mean episode cost minus the threshold, in Q units.
        critic_gap: [N] the critic's running gap at the behaviour thresholds' bins.
        measured: [N] True where episodes were measured.

    Returns:
        [E], added to the critic's gap at the update's thresholds.
    """
    bias = torch.where(measured, ep_gap_q - critic_gap, torch.zeros_like(critic_gap))
    if eps_behavior.numel() == 1:
        return bias.expand(eps.shape)
    x = eps.clamp(eps_behavior[0], eps_behavior[-1])
    hi = torch.searchsorted(eps_behavior, x).clamp(1, eps_behavior.numel() - 1)
    lo = hi - 1
    t = (x - eps_behavior[lo]) / (eps_behavior[hi] - eps_behavior[lo])
    return bias[lo] + t * (bias[hi] - bias[lo])


def running_mean(mean: Tensor, count: Tensor, value: Tensor, decay: float, valid: Tensor) -> tuple[Tensor, Tensor]:
    """`running_cost_gap`'s average where `valid`: the plain mean of the first 1 / decay values, then an
    exponential moving average with weight `decay`; entries where `valid` is False are left as they are.
    Returns (mean, count)."""
    new_mean, new_count = running_cost_gap(mean, count, value, decay)
    return torch.where(valid, new_mean, mean), torch.where(valid, new_count, count)


def estep_dual(eta: Tensor, lam: Tensor, q_r: Tensor, q_c: Tensor, eps_q: Tensor, kappa: float) -> Tensor:
    """CCPO slides eq. (10): dual g(eta, lam) of the conditioned E-step, one per threshold.

    g = lam * eps_q + eta * kappa + eta * mean_s log mean_k exp((Q_r - lam * Q_c) / eta),
    with the inner log-mean-exp computed as logsumexp - log K.

    Args:
        eta: temperature [..., E] (> 0); extra leading dims (e.g. line-search candidates) broadcast.
        lam: cost multiplier [..., E] (>= 0).
        q_r: reward Q of K actions sampled from the old policy [E, S, K].
        q_c: cost Q of the same actions [E, S, K].
        eps_q: cost threshold in Q units [E].
        kappa: E-step KL bound.

    Returns:
        g [..., E].

    Differs from the paper: eq. (10) as printed drops the "+" between eta*kappa and eta*E[log ...] (typo).
    """
    eta_, lam_ = eta[..., None, None], lam[..., None, None]
    log_mean_exp = torch.logsumexp((q_r - lam_ * q_c) / eta_, dim=-1) - math.log(q_r.shape[-1])
    return lam * eps_q + eta * kappa + eta * log_mean_exp.mean(-1)


def running_cost_gap(gap: Tensor, count: Tensor, batch_gap: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """Running estimate of the E-step constraint's state-level part, gap = mean_s E_pi_old[Q_c(s, .)] - eps_q.

    new_gap = gap + rate * (batch_gap - gap), rate = max(decay, 1 / (count + 1)): the plain mean of the first
    1 / decay batches, then an exponential moving average with weight `decay` (no bias towards the initial 0).

    Args:
        gap: [E] current estimates (their bins' values).
        count: [E] batches already averaged into them (0: none; the batch's value is taken).
        batch_gap: [E] this batch's mean over its states of E_pi_old[Q_c] minus eps_q.
        decay: weight of a new batch once the estimate is warm, in (0, 1]; 1 = the batch alone.

    Returns:
        (new_gap [E], count + 1).
    """
    rate = torch.maximum(torch.full_like(count, decay), 1.0 / (count + 1.0))
    return gap + rate * (batch_gap - gap), count + 1.0


def _centre(q_r: Tensor, q_c: Tensor, eps_q: Tensor, c_gap: Tensor | None = None) -> tuple[Tensor, ...]:
    """Per-state centring of the Q values, done once per batch.

    Shifting A = Q_r - lam Q_c by a per-state constant only adds a constant to L_s, so g keeps its value
    once eps_q and an additive constant are corrected, and the derivatives are unchanged. Returns r and c
    [E, S, 1, K], powers (1, r, c, r^2, r c, c^2) [E, S, 6, K], the corrected threshold [E] and the constant [E].
    The corrected threshold is eps_q - mean_s c_bar_s, or -c_gap where a running estimate of that state-level
    gap is given (`solve_estep_dual`).
    """
    r_bar, c_bar = q_r.mean(-1, keepdim=True), q_c.mean(-1, keepdim=True)
    r, c = q_r - r_bar, q_c - c_bar
    powers = torch.stack((torch.ones_like(r), r, c, r * r, r * c, c * c), -2)
    eps_c = eps_q - c_bar.mean((-2, -1)) if c_gap is None else -c_gap
    return r[:, :, None], c[:, :, None], powers, eps_c, r_bar.mean((-2, -1))


def _dual_stats(eta: Tensor, lam: Tensor, centred: tuple[Tensor, ...], kappa: float) -> Tensor:
    """Packed [E, C, 6] = (g, dg/deta, dg/dlam, d2g/deta2, d2g/deta dlam, d2g/dlam2) at C points per threshold.

    eta, lam: [E, C]; centred: `_centre`'s output. All entries are means over states. The softmax moments of
    (r, c) are sums over the K samples (the last, contiguous axis: compiled, one vectorised reduction per
    moment; as a small batched matmul inductor parallelised each state's 16-term sum); those of A = r - lam c
    are combined from them after the state mean (Var_w(A) = Var r - 2 lam Cov(r, c) + lam^2 Var c is linear in
    the per-state moments).
    """
    r, c, powers, eps_c, r_const = centred
    inv_eta = 1.0 / eta
    z = torch.addcmul(r * inv_eta[:, None, :, None], c, (-lam * inv_eta)[:, None, :, None])  # [E, S, C, K]
    z_max = z.amax(-1, keepdim=True)
    moments = ((z - z_max).exp()[..., None, :] * powers[:, :, None]).sum(-1)  # [E, S, C, 6] unnormalised
    total = moments[..., 0]
    mean = moments[..., 1:] / total[..., None]  # E_w of r, c, r^2, r c, c^2
    mean_r, mean_c = mean[..., 0], mean[..., 1]
    outer = torch.stack((mean_r * mean_r, mean_r * mean_c, mean_c * mean_c), -1)
    log_mean_exp = total.log() + z_max[..., 0] - math.log(r.shape[-1])  # L_s
    state_mean = torch.cat((log_mean_exp[..., None], mean[..., :2], mean[..., 2:] - outer), -1).mean(1)
    log_mean_exp, mean_r, mean_c, var_r, cov_rc, var_c = state_mean.unbind(-1)  # [E, C] each
    eps_c, r_const = eps_c[:, None], r_const[:, None]
    return torch.stack(
        (
            lam * eps_c + eta * kappa + eta * log_mean_exp + r_const,
            kappa + log_mean_exp - (mean_r - lam * mean_c) * inv_eta,
            eps_c - mean_c,
            (var_r - 2 * lam * cov_rc + lam * lam * var_c) * inv_eta**3,  # Var_w(A) / eta^3
            (cov_rc - lam * var_c) * inv_eta**2,  # Cov_w(A, Q_c) / eta^2
            var_c * inv_eta,
        ),
        -1,
    )


def estep_dual_grad_hess(
    eta: Tensor, lam: Tensor, q_r: Tensor, q_c: Tensor, eps_q: Tensor, kappa: float
) -> tuple[Tensor, Tensor, Tensor]:
    """CCPO slides eq. (10): value, analytic gradient and Hessian of the E-step dual w.r.t. (eta, lam).

    With A = Q_r - lam * Q_c, w = softmax_k(A / eta) per state and L_s = log mean_k exp(A / eta):
    dg/dlam = eps_q - mean_s E_w[Q_c];  dg/deta = kappa + mean_s (L_s - E_w[A] / eta);
    d2g/dlam2 = mean_s Var_w(Q_c) / eta;  d2g/deta2 = mean_s Var_w(A) / eta^3;
    d2g/deta dlam = mean_s Cov_w(Q_c, A) / eta^2.
    All three outputs are means over states, so averaging them across equal-sized DDP shards gives the
    full-batch values.

    Args:
        eta, lam: [E] dual variables.
        q_r, q_c, eps_q, kappa: as in `estep_dual`.

    Returns:
        g [E], grad [E, 2] ordered (eta, lam), hess [E, 2, 2] (symmetric, positive semi-definite).

    Numerics: the variances are E_w[x^2] - E_w[x]^2 of per-state-centred Q values; in float32 they lose
    relative precision when the weights are nearly one-hot (the solver's line search absorbs that).
    """
    stats = _dual_stats(eta[:, None], lam[:, None], _centre(q_r, q_c, eps_q), kappa)[:, 0]
    h_ee, h_el, h_ll = stats[..., 3], stats[..., 4], stats[..., 5]
    hess = torch.stack((torch.stack((h_ee, h_el), -1), torch.stack((h_el, h_ll), -1)), -2)
    return stats[..., 0], stats[..., 1:3], hess


def _projected_newton_direction(x: Tensor, stats: Tensor, damping: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Damped Newton direction [E, 2] on the box [lo, hi]; a frozen coordinate stays, the other takes its 1-D
    Newton step."""
    g_eta, g_lam, h_ee, h_el, h_ll = stats[..., 1:].unbind(-1)
    a = h_ee * (1 + damping) + _TINY
    c = h_ll * (1 + damping) + _TINY
    det = a * c - h_el * h_el  # > 0: the Hessian is PSD and the diagonal is inflated
    full = torch.stack(((h_el * g_lam - c * g_eta) / det, (h_el * g_eta - a * g_lam) / det), -1)
    grad = torch.stack((g_eta, g_lam), -1)
    at_lo, at_hi = x <= lo, x >= hi
    frozen = (at_lo & (grad > 0)) | (at_hi & (grad < 0))  # KKT-active: Bertsekas' projected Newton
    # Else, a full step leaving the box is projected onto a possibly ascending edge: freeze that coordinate
    # (never both: the Newton step is a descent direction) and step the other one alone.
    leaves = (at_lo & (full < 0)) | (at_hi & (full > 0))
    frozen = torch.where(frozen.any(-1, keepdim=True), frozen, leaves)
    one_dim = torch.stack((-g_eta / a, -g_lam / c), -1)
    direction = torch.where(frozen.any(-1, keepdim=True), one_dim, full)
    return direction.masked_fill(frozen, 0.0)


def _candidates(x: Tensor, direction: Tensor, steps: Tensor) -> Tensor:
    """Line-search points [E, C - 1, 2]: eta moves along log eta, the step capped to a factor of
    exp(_MAX_LOG_STEP) and scaling the lam step alike (a damped step keeps the Newton direction)."""
    d_log = (direction[:, 0] / x[:, 0]).nan_to_num(0.0, 1e30, -1e30)
    scale = (_MAX_LOG_STEP / d_log.abs()).clamp(max=1.0)
    eta = x[:, :1] * torch.exp(steps * (d_log * scale)[:, None])
    lam = x[:, 1:] + steps * (direction[:, 1] * scale)[:, None]
    return torch.stack((eta, lam), -1)


def solve_estep_dual(
    q_r: Tensor,
    q_c: Tensor,
    eps_q: Tensor,
    kappa: float,
    eta0: Tensor,
    lam0: Tensor,
    *,
    eta_min: float = 1e-3,
    eta_max: float = 1e3,
    lam_max: float = 100.0,
    iters: int = 5,
    reduce: Callable[[Tensor], Tensor] | None = None,
    c_gap: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CCPO slides eq. (10): minimise the convex E-step dual for all E thresholds at once.

    Batched projected Newton on the box [eta_min, eta_max] x [0, lam_max], warm-started at (eta0, lam0).
    Each iteration takes the Levenberg-Marquardt-damped Newton direction (coordinates at an active bound
    whose gradient points outward are frozen, the other takes a 1-D Newton step), moves eta along log eta
    (at most a factor 100 per iteration), evaluates the dual and its derivatives at the step sizes
    1, 1/2, ..., 1/64 and 0 in one batched call, and keeps the best per threshold, so g never increases.
    A threshold whose line search fails gets 100x more damping (towards a scaled gradient step), one that
    succeeds 10x less. A fixed number of iterations (no data-dependent exit, no host sync).

    If the constraint cannot be met within the KL ball (every reweighting keeps mean E_w[Q_c] > eps_q), g
    decreases without bound in lam and lam ends at lam_max: the weights then mostly minimise Q_c.

    Args:
        q_r, q_c: [E, S, K] Q values of K actions sampled from the old policy.
        eps_q: [E] cost thresholds in Q units.
        kappa: E-step KL bound.
        eta0, lam0: [E] warm start (e.g. last batch's solution); clamped into the box.
        eta_min, eta_max: temperature box. 1e-3 keeps softmax(A / eta) finite in float32 for |A| <= ~1e4
            (FSRL: ~1e-6); 1e3 exceeds the optimum eta ~ std(A) / sqrt(2 kappa) for Q spreads up to ~40 at
            kappa = 0.02 (FSRL caps at 20, which binds for Q values O(10..100)).
        lam_max: cost-multiplier cap, 100 (FSRL: 20). Reached when the threshold is infeasible.
        iters: Newton iterations, 5 for the hot loop: warm-started from the previous update's solution,
            feasible thresholds converge in about 3; far moves (cold start, a threshold turning infeasible)
            need 10-25 and otherwise continue at the next update (g never increases). Compiled inside the
            CCPO update, the whole solve is one generated kernel (timings in docs/performance.md).
        reduce: applied to every packed (g, grad, hess) tensor before it is used, e.g. an all-reduce mean over
            DDP ranks holding equal-sized shards of states, so every rank reaches the same solution.
            None = identity.
        c_gap: [E] the constraint's state-level part, mean_s E_pi_old[Q_c] - eps_q, from outside the batch (a
            running estimate, `running_cost_gap`); the batch then decides only the within-state reweighting.
            None = this batch's states alone. It enters g and dg/dlam linearly, so ranks holding different
            estimates solve the problem of their mean.

    Returns:
        eta [E], lam [E] (detached).
    """
    reduce = reduce or (lambda t: t)
    with torch.no_grad():
        centred = _centre(q_r, q_c, eps_q, c_gap)
        lo = q_r.new_tensor([eta_min, 0.0])
        hi = q_r.new_tensor([eta_max, lam_max])
        steps = q_r.new_tensor(_LINE_SEARCH_STEPS)  # [C - 1]
        x = torch.stack((eta0, lam0), -1).to(q_r.dtype).clamp(lo, hi)  # [E, 2]
        stats = reduce(_dual_stats(x[:, 0:1], x[:, 1:2], centred, kappa))[:, 0]
        index = torch.arange(x.shape[0], device=x.device)
        damping = torch.full_like(x[:, 0], _MARQUARDT)
        for _ in range(iters):
            direction = _projected_newton_direction(x, stats, damping, lo, hi)
            cand = torch.cat((x[:, None], _candidates(x, direction, steps)), 1)
            cand = cand.clamp(lo, hi)  # [E, C, 2]; candidate 0 = stay
            cand_stats = reduce(_dual_stats(cand[..., 0], cand[..., 1], centred, kappa))
            best = cand_stats[..., 0].nan_to_num(torch.inf).argmin(1)  # ties keep the current point
            x, stats = cand[index, best], cand_stats[index, best]
            # Levenberg-Marquardt: no decrease -> damp harder (towards scaled gradient steps), else relax.
            damping = torch.where(best > 0, damping * 0.1, damping * 100.0).clamp(_MARQUARDT, 1e8)
    return x[:, 0], x[:, 1]


def track_estep_dual(
    q_r: Tensor,
    q_c: Tensor,
    eps_q: Tensor,
    kappa: float,
    eta0: Tensor,
    lam0: Tensor,
    c_gap: Tensor,
    c_gap_n: Tensor,
    *,
    gap_decay: float,
    gap_offset: Tensor | None = None,
    **solver,
) -> tuple[Tensor, Tensor]:
    """CCPO slides eq. (10) as solved once per update: this batch's state-level gap folded into the running
    estimate (`running_cost_gap`), then `solve_estep_dual` with that estimate as the constraint's state-level part.

    Args:
        q_r, q_c, eps_q, kappa, eta0, lam0: as in `solve_estep_dual`.
        c_gap, c_gap_n: [E] running estimates and their batch counts (`running_cost_gap`).
        gap_decay: a warm estimate's weight of a new batch; 1 = the batch alone.
        gap_offset: [E] added to the estimate for the solve (`episode_cost_correction`); None = 0.
        solver: further keyword arguments of `solve_estep_dual` (iters, lam_max, reduce, ...).

    Returns:
        eta [E], lam [E] (detached).
    """
    gap, _ = running_cost_gap(c_gap, c_gap_n, q_c.mean((1, 2)) - eps_q, gap_decay)
    if gap_offset is not None:
        gap = gap + gap_offset
    return solve_estep_dual(q_r, q_c, eps_q, kappa, eta0, lam0, c_gap=gap, **solver)


def action_penalty(actions: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """MO-MPO action penalization (Abdolmaleki et al. 2020, sec. 5): Q_pen(s, a) = -||a - clip(a, low, high)||_2.

    A second E-step objective: the distance of a sampled action from the action box the env clips it to, 0 inside
    the box. Outside it the env cannot tell the actions apart, so the critic's values there carry no signal.

    Args:
        actions: [..., K, A] actions sampled from the old policy.
        low, high: the action box.

    Returns:
        [..., K], <= 0.
    """
    return -(actions - actions.clamp(low, high)).norm(dim=-1)


def solve_penalty_temperature(q_pen: Tensor, kappa_pen: float, eta0: Tensor, **solver) -> Tensor:
    """MO-MPO's per-objective E-step for the action penalty: the temperature eta_pen minimising the
    unconstrained dual g(eta) = eta * kappa_pen + eta * mean_s log mean_k exp(Q_pen / eta) (eq. 10 with lam = 0).

    Args:
        q_pen: [E, S, K] `action_penalty` of the sampled actions.
        kappa_pen: the penalty objective's KL bound (how far its weights may move from pi_old).
        eta0: [E] warm start.
        solver: further keyword arguments of `solve_estep_dual` (iters, eta_min, eta_max, reduce).

    Returns:
        eta_pen [E] (detached). Where no sample leaves the box, g = eta * kappa_pen and eta_pen goes to eta_min;
        the weights softmax_k(Q_pen / eta_pen) are then uniform whatever eta_pen is.
    """
    zeros = torch.zeros_like(eta0)
    eta, _ = solve_estep_dual(q_pen, torch.zeros_like(q_pen), torch.ones_like(eta0), kappa_pen, eta0, zeros,
                              lam_max=0.0, **solver)
    return eta


def estep_weights(q_r: Tensor, q_c: Tensor, eta: Tensor, lam: Tensor) -> Tensor:
    """CCPO slides eq. (8): nonparametric q_i* over the K sampled actions, softmax_k((Q_r - lam Q_c) / eta).

    Args:
        q_r, q_c: [E, S, K] Q values of actions sampled from the old policy (so pi_old cancels).
        eta, lam: [E] dual solution.

    Returns:
        w [E, S, K], detached, rows sum to 1.
    """
    logits = (q_r - lam[:, None, None] * q_c) / eta[:, None, None]
    return torch.softmax(logits, dim=-1).detach()


def kl_mean(mu_old: Tensor, mu: Tensor, sigma_old: Tensor) -> Tensor:
    """MPO/CVPO decoupled KL of the mean: KL(N(mu_old, sigma_old) || N(mu, sigma_old)), diagonal Gaussian.

    mean_s sum_d (mu - mu_old)^2 / (2 sigma_old^2).

    Args:
        mu_old, sigma_old: [E, S, A] old policy (treated as constants by the caller).
        mu: [E, S, A] new mean.

    Returns:
        [E] mean over states.
    """
    return (0.5 * (mu - mu_old) ** 2 / sigma_old**2).sum(-1).mean(-1)


def kl_cov(sigma_old: Tensor, sigma: Tensor) -> Tensor:
    """MPO/CVPO decoupled KL of the scale: KL(N(mu_old, sigma_old) || N(mu_old, sigma)), diagonal Gaussian.

    mean_s sum_d (log(sigma^2 / sigma_old^2) + sigma_old^2 / sigma^2 - 1) / 2.

    Args:
        sigma_old: [E, S, A] old standard deviation.
        sigma: [E, S, A] new standard deviation.

    Returns:
        [E] mean over states.

    Differs from FSRL: no 1e-6 floor on the variances (the policy bounds log sigma).
    """
    ratio = (sigma_old / sigma) ** 2
    return (0.5 * (ratio - torch.log(ratio) - 1.0)).sum(-1).mean(-1)


def mstep_loss(
    actions: Tensor, weights: Tensor, mu: Tensor, sigma: Tensor, mu_old: Tensor, sigma_old: Tensor
) -> Tensor:
    """CCPO slides versatile M-step: decoupled weighted max-likelihood (MPO sec. 4.2.1, as in CVPO).

    loss = -mean_s sum_k w_k [log N(a_k | mu, sigma_old) + log N(a_k | mu_old, sigma)].

    Args:
        actions: [E, S, K, A] actions sampled from the old policy.
        weights: [E, S, K] E-step weights q* (rows sum to 1; detached).
        mu, sigma: [E, S, A] new policy (gradients flow).
        mu_old, sigma_old: [E, S, A] old policy (constants).

    Returns:
        [E] loss per threshold; the slides average it over thresholds.

    Differs from FSRL: sum over k of weights summing to 1 (the expectation under q*), where FSRL takes the
    mean over the K * S pairs, i.e. FSRL's loss is this one divided by K.

    Computed from the weighted moments of the actions (constants): with W = sum_k w_k, a_bar = sum_k w_k a_k / W
    and V = sum_k w_k (a_k - a_bar)^2, sum_k w_k (a_k - m)^2 = V + W (a_bar - m)^2 for any m. The same value and
    gradient as summing the K log-likelihoods, but the graph (and its backward) holds [E, S, A] tensors only.
    """
    with torch.no_grad():  # the samples and their weights are constants of the M-step
        total = weights.sum(-1, keepdim=True)  # W [E, S, 1]
        a_bar = (weights[..., None] * actions).sum(-2) / total  # [E, S, A]
        var = (weights[..., None] * (actions - a_bar[:, :, None]) ** 2).sum(-2)  # V [E, S, A]
    log_norm = 0.5 * math.log(2 * math.pi)
    nll_mu = 0.5 * (var + total * (a_bar - mu) ** 2) / sigma_old**2 + total * (torch.log(sigma_old) + log_norm)
    nll_sigma = 0.5 * (var + total * (a_bar - mu_old) ** 2) / sigma**2 + total * (torch.log(sigma) + log_norm)
    return (nll_mu + nll_sigma).sum(-1).mean(-1)


def kl_multiplier_update(alpha: Tensor, kl: Tensor, bound: float, lr: float, alpha_max: float) -> Tensor:
    """MPO/CVPO trust-region multiplier: projected gradient ascent, clamp(alpha + lr (kl - bound), 0, alpha_max).

    Args:
        alpha: [E] current multipliers.
        kl: [E] measured KL (kl_mean or kl_cov).
        bound: KL bound (FSRL: 0.005 for the mean, 0.0005 for the scale).
        lr: step size.
        alpha_max: cap (FSRL: 0.5).

    Returns:
        [E] new multipliers, detached.

    Differs from FSRL: a plain projected step on persistent multipliers; FSRL takes an Adam step on an
    unclamped parameter reset every collect and clamps only the value it uses.
    """
    return (alpha + lr * (kl - bound)).clamp(0.0, alpha_max).detach()


def lagrangian_actor_loss(q_r: Tensor, q_c: Tensor, lam: Tensor, log_prob: Tensor, alpha: float) -> Tensor:
    """SAC-Lag actor loss for the `cvi=false` ablation, with Stooke et al.'s 1 / (1 + lam) rescaling.

    loss = mean_s (alpha log pi(a|s) - Q_r(s, a) + lam Q_c(s, a)) / (1 + lam), a reparameterised.

    Args:
        q_r, q_c: [E, S] Q values of reparameterised actions (gradients flow through them).
        lam: [E] Lagrange multipliers (detached here).
        log_prob: [E, S] log pi of those actions.
        alpha: entropy temperature.

    Returns:
        [E] loss per threshold.
    """
    lam_ = lam.detach()[:, None]
    return ((alpha * log_prob - q_r + lam_ * q_c) / (1.0 + lam_)).mean(-1)
