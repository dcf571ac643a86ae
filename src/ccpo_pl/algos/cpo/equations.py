"""CPO equations (Achiam, Held, Tamar & Abbeel, ICML 2017): pure functions, in the order of Algorithm 1.

Scales (one convention, used everywhere here and in `module.py`):
- J_c is the undiscounted episode cost the threshold eps bounds (the CCPO evaluation's unit), d = eps.
- The cost surrogate is a *per-step* mean, L_c(theta) = mean_t [pi_theta(a_t|s_t) / pi_k(a_t|s_t) A_c,t], so its
  gradient b is the gradient of the expected per-step cost: for episodes of T steps,
  J_c(theta) / T ~ J_c(pi_k) / T + (L_c(theta) - L_c(theta_k)).
- Hence the constraint value in the same units as b is c = (J_c(pi_k) - d) / T (`constraint_value`). (OmniSafe's
  CPO uses J_c - d without the 1/T, hundreds of times too large against b; safety-starter-agents divides by the
  episode length as we do.) The same per-step c bounds the line search's cost-surrogate change.
- The reward side has the same per-step scale; q, r, s, delta are scale-free once g and b share it.
Shapes: n policy parameters, m constraints (the trainer's envs supply m = 1 cost signal; eq. 12 for m > 1 is here
as a pure function, `multi_constraint_dual_solution`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_TINY = 1e-8
_LAM_MAX = 1e8  # a bound for lam where the dual's supremum is at infinity (B = 0)
_PARALLEL = 1e-5  # A = q - r^2/s below this fraction of q: g and b parallel in the H^-1 metric (ours)

#: `cpo_dual_solution` cases (the numbering of OmniSafe and safety-starter-agents, for comparable logs)
CASES = {
    0: "infeasible: recovery step (eq. 14)",
    1: "infeasible at theta_k (c >= 0), the linearised problem feasible: dual step",
    2: "feasible (c < 0), the constraint cuts the trust region: dual step",
    3: "feasible, the whole trust region satisfies the constraint: TRPO step",
    4: "no usable cost gradient (b^T H^-1 b ~ 0): TRPO step",
}


def constraint_value(j_c: Tensor | float, d: Tensor | float, horizon: int) -> Tensor | float:
    """CPO eq. (11) c = J_C(pi_k) - d, expressed per step: (J_c - d) / T, the scale of b (see module docstring).

    Args:
        j_c: episode cost estimate(s) J_c(pi_k) (undiscounted sum over an episode).
        d: the limit(s) (eps), same units.
        horizon: the episode length T.

    Returns:
        c, per step, with the type and shape of `j_c - d`.

    Differs from the paper: the paper writes J_C(pi_k) - d with J_C the discounted return and b its gradient; with
    a per-step mean surrogate both sides are divided by the episode length (safety-starter-agents does the same).
    """
    return (j_c - d) / float(horizon)


class DualSolution(NamedTuple):
    """lam*, nu* of `cpo_dual_solution`, the case taken (`CASES`) and the r, s, c it was solved for (`cpo_step`
    needs them). In case 0 the step is -nu p (eq. 14)."""

    lam: float
    nu: float
    case: int
    r: float = 0.0
    s: float = 1.0
    c: float = 0.0


def cpo_dual(lam: Tensor | float, nu: Tensor | float, q: float, r: float, s: float, c: float,
             delta: float) -> Tensor | float:
    """CPO eq. (12) with one constraint: D(lam, nu) = -(q - 2 r nu + s nu^2) / (2 lam) + nu c - lam delta."""
    return -(q - 2.0 * r * nu + s * nu * nu) / (2.0 * lam) + nu * c - lam * delta


def cpo_dual_solution(q: float, r: float, s: float, c: float, delta: float, tiny: float = _TINY) -> DualSolution:
    """CPO eq. (12) solved analytically for one constraint (paper appendix, Theorem 2), all feasibility cases.

    With q = g^T H^-1 g, r = g^T H^-1 b, s = b^T H^-1 b, A = q - r^2/s, B = 2 delta - c^2/s:
    - the linearised problem is infeasible iff c > 0 and B < 0 (case 0: recovery, eq. 14, nu = sqrt(2 delta/s));
    - if c < 0 and B < 0 the whole trust region is feasible: lam = sqrt(q / 2 delta), nu = 0 (case 3, TRPO);
    - otherwise (cases 1, 2) lam* is the better of
        lam_a = Proj(sqrt(A/B), L_a),  f_a(lam) = -(A/lam + B lam)/2 + r c / s,   L_a = {lam >= 0: lam c + r > 0}
        lam_b = Proj(sqrt(q/2 delta), L_b), f_b(lam) = -(q/lam + 2 delta lam)/2,    L_b = {lam >= 0: lam c + r <= 0}
      and nu* = max(0, lam* c + r) / s.
    The proposed step is (H^-1 g - nu* H^-1 b) / lam* (eq. 13, `cpo_step`). Eq. (12) is the negated Lagrange dual:
    its maximum is minus the optimum of the linearised primal (11), g^T step* = -D(lam*, nu*).

    Differs from the paper: here g is the gradient of the reward surrogate (ascent), so r = g^T H^-1 b has the
    opposite sign to the appendix's (written for the loss gradient, as safety-starter-agents' code is); hence
    "+ r" where Theorem 2 reads "- r". Derived from eq. (12): dD/dnu = 0 gives nu = (lam c + r) / s.

    Args:
        q, r, s: the quadratic forms above (floats).
        c: the constraint value J_c(pi_k) - d on the scale of b (`constraint_value`).
        delta: the KL bound.
        tiny: s <= tiny counts as no cost gradient (case 4).

    Returns:
        `DualSolution(lam, nu, case)`.
    """
    q, r, s, c, delta = (float(v) for v in (q, r, s, c, delta))
    lam_trpo = math.sqrt(max(q, 0.0) / (2.0 * delta))
    if s <= tiny:
        return DualSolution(lam_trpo, 0.0, 4, r, s, c)
    B = 2.0 * delta - c * c / s
    if B < 0.0:
        if c > 0.0:
            return DualSolution(0.0, math.sqrt(2.0 * delta / s), 0, r, s, c)
        return DualSolution(lam_trpo, 0.0, 3, r, s, c)
    A = q - r * r / s  # >= 0 by Cauchy-Schwarz; below _PARALLEL q it is CG round-off: g parallel to b
    if _PARALLEL * q >= A:
        A = 0.0
    # L_a and L_b as intervals [lo, hi] of lam >= 0 (None: empty). The boundary lam = -r / c may belong to both:
    # there f_a = f_b (f_a - f_b = (lam c + r)^2 / (2 lam s) >= 0 vanishes).
    set_a: tuple[float, float] | None
    set_b: tuple[float, float] | None
    if c > 0.0:
        edge = -r / c
        set_a, set_b = (max(edge, 0.0), math.inf), ((0.0, edge) if edge >= 0.0 else None)
    elif c < 0.0:
        edge = -r / c
        set_a, set_b = ((0.0, edge) if edge > 0.0 else None), (max(edge, 0.0), math.inf)
    else:  # c == 0: lam c + r > 0 iff r > 0, whatever lam
        set_a, set_b = ((0.0, math.inf), None) if r > 0.0 else (None, (0.0, math.inf))
    candidates = []
    if set_a is not None:
        lam_a = math.sqrt(A / B) if B > 0.0 else math.inf
        lam_a = max(min(max(lam_a, set_a[0]), set_a[1], _LAM_MAX), tiny)
        candidates.append((-0.5 * (A / lam_a + B * lam_a) + r * c / s, lam_a))
    if set_b is not None:
        lam_b = max(min(max(lam_trpo, set_b[0]), set_b[1], _LAM_MAX), tiny)
        candidates.append((-0.5 * (q / lam_b + 2.0 * delta * lam_b), lam_b))
    _, lam = max(candidates)
    nu = max(0.0, lam * c + r) / s
    return DualSolution(lam, nu, 1 if c >= 0.0 else 2, r, s, c)


def cpo_step(x: Tensor, p: Tensor, solution: DualSolution) -> Tensor:
    """CPO eq. (13) (cases 1-4): theta* - theta_k = (x - nu* p) / lam*; case 0: eq. (14), -sqrt(2 delta / s) p.

    With nu* = (lam* c + r) / s > 0 this is computed as (x - (r/s) p) / lam* - (c/s) p, the same vector, which
    stays finite when g is (nearly) parallel to b: then A = q - r^2/s ~ 0, lam* = sqrt(A/B) ~ 0 and the step is
    the move onto the constraint boundary, -(c/s) p; with A = 0 (below round-off) lam* = 0 and that is the step.

    Args:
        x: H^-1 g [n].
        p: H^-1 b [n].
        solution: `cpo_dual_solution`'s result.
    """
    if solution.case == 0:
        return recovery_step(p, solution.nu)
    if solution.nu > 0.0:
        onto_boundary = -(solution.c / solution.s) * p
        if solution.lam <= _TINY:  # A = 0: no reward to gain off the boundary direction (and x - r/s p is noise)
            return onto_boundary
        return (x - (solution.r / solution.s) * p) / solution.lam + onto_boundary
    return x / solution.lam


def recovery_step(p: Tensor, nu: float) -> Tensor:
    """CPO eq. (14): theta* - theta_k = -sqrt(2 delta / (b^T H^-1 b)) H^-1 b, given nu = sqrt(2 delta / s).

    This step decreases the linearised cost by sqrt(2 delta s), the most any step inside the trust region can.
    """
    return -nu * p


def multi_constraint_dual(lam: Tensor, nu: Tensor, q: Tensor, r: Tensor, S: Tensor, c: Tensor,
                          delta: float) -> Tensor:
    """CPO eq. (12): D(lam, nu) = -(q - 2 r^T nu + nu^T S nu) / (2 lam) + nu^T c - lam delta, nu [..., m]."""
    quad = q - 2.0 * (nu * r).sum(-1) + torch.einsum("...i,ij,...j->...", nu, S, nu)
    return -quad / (2.0 * lam) + (nu * c).sum(-1) - lam * delta


def multi_constraint_dual_solution(q: Tensor, r: Tensor, S: Tensor, c: Tensor, delta: float, iters: int = 2000,
                                   tol: float = 1e-12, nu_max: float = 1e6) -> tuple[Tensor, Tensor, bool]:
    """CPO eq. (12) for m constraints, solved numerically: (lam*, nu* [m], feasible).

    The max over lam is explicit, lam(nu) = sqrt(Q(nu) / 2 delta) with Q(nu) = q - 2 r^T nu + nu^T S nu, which
    leaves the concave h(nu) = nu^T c - sqrt(2 delta Q(nu)) over nu >= 0 (Q is a squared norm in the H^-1
    geometry). It is maximised by projected gradient ascent with Armijo backtracking, started at nu = 0. An
    infeasible linearised problem makes the dual unbounded: nu then grows past `nu_max` and `feasible` is False
    (the caller should take a recovery step; with m = 1 that is eq. 14).

    Args:
        q: g^T H^-1 g (scalar tensor).
        r: g^T H^-1 B [m].
        S: B^T H^-1 B [m, m].
        c: constraint values [m], on the scale of B.
        delta: KL bound.
        iters, tol: iteration cap and the step-length tolerance that stops it.
        nu_max: divergence bound that flags infeasibility.
    """
    q, r, S, c = (t.double() for t in (q, r, S, c))

    def h(nu: Tensor) -> Tensor:
        Q = (q - 2.0 * r @ nu + nu @ S @ nu).clamp_min(_TINY)
        return nu @ c - torch.sqrt(2.0 * delta * Q)

    nu = torch.zeros_like(c)
    step = 1.0
    for _ in range(int(iters)):
        Q = (q - 2.0 * r @ nu + nu @ S @ nu).clamp_min(_TINY)
        grad = c - math.sqrt(2.0 * delta) * (S @ nu - r) / torch.sqrt(Q)
        h0 = h(nu)
        step = min(step * 2.0, 1e6)
        while True:  # Armijo on the projected step
            cand = (nu + step * grad).clamp_min(0.0)
            if h(cand) >= h0 + 1e-4 * grad @ (cand - nu) or step < 1e-14:
                break
            step *= 0.5
        moved = (cand - nu).norm()
        nu = cand
        if nu.max() > nu_max:
            break
        if moved < tol * (1.0 + nu.norm()):
            break
    feasible = bool(nu.max() <= nu_max)
    Q = (q - 2.0 * r @ nu + nu @ S @ nu).clamp_min(_TINY)
    lam = torch.sqrt(Q / (2.0 * delta))
    return lam, nu, feasible


def cpo_line_search_accepts(kl: float, surr_reward_change: float, surr_cost_change: float, c: float,
                            delta: float, case: int) -> bool:
    """CPO Algorithm 1's line-search test on the sample estimates of the constraints of eq. (10):

    KL(pi_k || pi) <= delta, and the per-step cost-surrogate change <= max(-c, 0) (the linearised constraint
    c + dL_c <= 0 when feasible; a decrease when infeasible, c >= 0); when pi_k is feasible (cases 2-4) the
    reward surrogate must not decrease (TRPO's improvement test; ours where the paper is silent).
    """
    if not kl <= delta:  # also rejects NaN
        return False
    if not surr_cost_change <= max(-c, 0.0):
        return False
    return case <= 1 or surr_reward_change >= 0.0


def unsafe_within_horizon(cost: Tensor, done: Tensor, horizon: int) -> Tensor:
    """CPO §6.3's cost-shaping target: 1 where a cost > 0 occurs within the next `horizon` steps of the episode.

    label_t = 1 iff cost_{t+k} > 0 for some 0 <= k < horizon with no episode end at t .. t+k-1. Steps past the end
    of the collection are unknown and count as safe (the labels near the end are biased low; ours).

    Args:
        cost: per-step costs [..., T] (time last).
        done: episode ends [..., T] (bool): step t is the last of its episode.
        horizon: H >= 1.

    Returns:
        labels [..., T] in {0., 1.}.
    """
    unsafe = cost > 0
    label = torch.zeros_like(unsafe)
    alive = torch.ones_like(unsafe)
    T = cost.shape[-1]
    for k in range(min(int(horizon), T)):
        ahead = torch.zeros_like(unsafe)
        ahead[..., : T - k] = unsafe[..., k:]
        label |= alive & ahead
        ended = torch.ones_like(unsafe)
        ended[..., : T - k] = done[..., k:]
        alive &= ~ended
    return label.to(cost.dtype)


def shaped_cost(cost: Tensor, delta_shaping: Tensor) -> Tensor:
    """CPO eq. (15): C+(s, a, s') = C(s, a, s') + Delta(s, a, s'), Delta >= 0 (here a learned probability)."""
    return cost + delta_shaping
