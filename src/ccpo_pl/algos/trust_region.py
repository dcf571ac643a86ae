"""Trust-region policy steps (TRPO, CPO and their Lagrangian variants): pure, reusable pieces on flat vectors.

Stable API (used by `algos.cpo` and by TRPO-Lag; keep signatures and semantics):

- `flat_params(params) -> Tensor` / `set_flat_params(params, flat)`: a parameter list as one vector and back.
- `flat_grad(output, params, retain_graph=False, create_graph=False) -> Tensor`: d output / d params, flattened,
  zeros for parameters the output does not depend on.
- `conjugate_gradient(Avp, b, iters=10, residual_tol=1e-10) -> Tensor`: x ~ A^-1 b for symmetric positive-definite
  A given only as a product `Avp(v) = A v` (the tolerance is relative to |b|^2).
- `fisher_vector_product(kl, params, damping, reduce=None) -> Callable[[Tensor], Tensor]`: v -> (H + damping I) v
  with H the Hessian of the mean KL(pi_old || pi_theta) at theta = theta_old (the Fisher information matrix).
- `natural_gradient_step(g, Fvp, delta, iters=10, residual_tol=1e-10) -> (step, x, q)`: TRPO's full step
  sqrt(2 delta / q) x with x = H^-1 g and q = x^T H x (Schulman et al. 2015, appendix C).
- `backtracking_line_search(params, step, evaluate, accept, max_backtracks=15, shrink=0.8) -> LineSearchResult`:
  try theta_0 + shrink^j step for j = 0, 1, ... and keep the first that `accept` takes; theta_0 if none.
- `diag_normal_log_prob(action, loc, scale)` and `diag_normal_kl(loc_old, scale_old, loc, scale)`: log pi(a|s) and
  KL(pi_old || pi) of diagonal Gaussian policies, summed over the action dims (the surrogate's ratio and the
  trust-region distance).

Distributed (DDP) use: every function here is deterministic given its inputs, so ranks stay identical when the
*inputs* are: pass rank-averaged gradients (g, b), a `reduce` that averages the Fisher-vector products, and an
`evaluate` whose statistics are rank-averaged. Then the CG iterates, the early stops and the line-search decisions
agree on every rank. (DDP itself does not reduce `autograd.grad`, nor see direct parameter writes.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

_TINY = 1e-8  # guards divisions by p^T A p and q (ours; omnisafe adds 1e-6 in CG)

Params = Sequence[torch.nn.Parameter]


def diag_normal_log_prob(action: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log pi(a|s) of a diagonal Gaussian policy, summed over the action dims."""
    return torch.distributions.Normal(loc, scale).log_prob(action).sum(-1)


def diag_normal_kl(loc_old: Tensor, scale_old: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """KL(N(loc_old, scale_old^2) || N(loc, scale^2)) of diagonal Gaussians, summed over the action dims:

        sum_a log(scale / scale_old) + (scale_old^2 + (loc_old - loc)^2) / (2 scale^2) - 1/2.

    Args:
        loc_old, scale_old: the old policy's mean and std [..., A].
        loc, scale: the new policy's [..., A].

    Returns:
        [...].
    """
    var_ratio = (scale_old / scale) ** 2
    return (0.5 * (var_ratio + ((loc_old - loc) / scale) ** 2 - 1.0) - 0.5 * var_ratio.log()).sum(-1)


def flat_params(params: Params) -> Tensor:
    """The parameters concatenated into one detached vector [n]."""
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat_params(params: Params, flat: Tensor) -> None:
    """Write the vector `flat` [n] into the parameters, in place (the inverse of `flat_params`)."""
    total = sum(p.numel() for p in params)
    if total != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {total}")
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def flat_grad(output: Tensor, params: Params, retain_graph: bool = False, create_graph: bool = False) -> Tensor:
    """Gradient of the scalar `output` w.r.t. `params`, flattened to [n]; zeros where `output` does not depend."""
    grads = torch.autograd.grad(output, list(params), retain_graph=retain_graph, create_graph=create_graph,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def conjugate_gradient(Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> Tensor:
    """Conjugate gradient for A x = b from x = 0 (Hestenes & Stiefel; TRPO appendix C), A given by products.

    Args:
        Avp: v -> A v for a symmetric positive-definite A [n, n].
        b: right-hand side [n].
        iters: maximum number of iterations (products with A); n iterations solve exactly in exact arithmetic.
        residual_tol: stop once the squared residual |b - A x|^2 falls below residual_tol * |b|^2 (relative, so
            the stop does not depend on the scale of b; TRPO's reference code uses an absolute 1e-10).

    Returns:
        x [n], the approximate solution.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    stop = residual_tol * rr
    for _ in range(int(iters)):
        if rr <= stop:
            break
        Ap = Avp(p)
        alpha = rr / (p.dot(Ap) + _TINY)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(kl: Tensor, params: Params, damping: float,
                          reduce: Callable[[Tensor], Tensor] | None = None) -> Callable[[Tensor], Tensor]:
    """Fisher-vector products v -> (H + damping I) v with H = Hessian of the mean KL (TRPO appendix C).

    `kl` must be the mean KL(pi_old || pi_theta) over the states, built with pi_old detached, evaluated at
    theta = theta_old: there the KL and its gradient vanish and its Hessian is the Fisher information matrix. The
    first derivative is taken once (with a graph); each product then costs one backward pass.

    Args:
        kl: scalar, differentiable in `params`.
        params: the policy parameters theta.
        damping: added multiple of the identity (CG regulariser; 0.1 in OmniSafe, 0.1 in TRPO).
        reduce: applied to each product H v before the damping; pass the rank mean under DDP (the KL is a mean over
            this rank's states, so the rank mean of H v is the product for the global mean KL on equal batches).

    Returns:
        Fvp: [n] -> [n].
    """
    grad_kl = flat_grad(kl, params, retain_graph=True, create_graph=True)

    def Fvp(v: Tensor) -> Tensor:
        hv = flat_grad(grad_kl.dot(v.detach()), params, retain_graph=True)
        if reduce is not None:
            hv = reduce(hv)
        return hv + damping * v

    return Fvp


def natural_gradient_step(g: Tensor, Fvp: Callable[[Tensor], Tensor], delta: float, iters: int = 10,
                          residual_tol: float = 1e-10) -> tuple[Tensor, Tensor, Tensor]:
    """TRPO's full step (Schulman et al. 2015, appendix C): sqrt(2 delta / (x^T H x)) x with x = H^-1 g.

    This is the maximiser of g^T s subject to 1/2 s^T H s <= delta (the KL bound to second order).

    Args:
        g: gradient of the surrogate to maximise [n].
        Fvp: v -> H v (`fisher_vector_product`).
        delta: KL bound.
        iters, residual_tol: conjugate-gradient settings.

    Returns:
        (step [n], x = H^-1 g [n], q = x^T H x scalar).
    """
    x = conjugate_gradient(Fvp, g, iters, residual_tol)
    q = x.dot(Fvp(x)).clamp_min(0.0)
    step = torch.sqrt(2.0 * delta / (q + _TINY)) * x
    return step, x, q


@dataclass
class LineSearchResult:
    """What `backtracking_line_search` found.

    theta: the accepted parameters (theta_0 when nothing was accepted); they are also written into `params`.
    frac: accepted fraction of the full step (shrink^j), 0.0 when nothing was accepted.
    backtracks: the number of rejected tries before the accepted one (max_backtracks + 1 if none).
    stats: `evaluate`'s statistics at the accepted point (at the last try when nothing was accepted).
    accepted: whether a step was taken.
    """

    theta: Tensor
    frac: float
    backtracks: int
    stats: dict[str, Tensor] = field(default_factory=dict)
    accepted: bool = False


def backtracking_line_search(
    params: Params,
    step: Tensor,
    evaluate: Callable[[], dict[str, Tensor]],
    accept: Callable[[dict[str, Tensor], float], bool],
    max_backtracks: int = 15,
    shrink: float = 0.8,
) -> LineSearchResult:
    """Backtracking line search along `step` from the current parameters theta_0 (TRPO appendix C; CPO Alg. 1).

    For j = 0 .. max_backtracks: write theta_0 + shrink^j step into `params`, compute `stats = evaluate()` (e.g.
    the mean KL and the surrogate changes, rank-averaged under DDP) and stop at the first j with
    `accept(stats, shrink^j)`. If none is accepted, theta_0 is written back.

    Args:
        params: the policy parameters (updated in place).
        step: the full step [n].
        evaluate: () -> statistics of the policy currently in `params` (no gradients needed).
        accept: (stats, frac) -> bool, e.g. `stats["kl"] <= delta and stats["surr_reward"] > 0`.
        max_backtracks: the last try is shrink^max_backtracks of the full step.
        shrink: factor per backtrack, in (0, 1).

    Returns:
        `LineSearchResult`.
    """
    if not 0.0 < shrink < 1.0:
        raise ValueError(f"line-search shrink={shrink} must be in (0, 1)")
    theta0 = flat_params(params)
    stats: dict[str, Tensor] = {}
    for j in range(int(max_backtracks) + 1):
        frac = shrink**j
        theta = theta0 + frac * step
        set_flat_params(params, theta)
        with torch.no_grad():
            stats = evaluate()
        if accept(stats, frac):
            return LineSearchResult(theta, frac, j, stats, True)
    set_flat_params(params, theta0)
    return LineSearchResult(theta0, 0.0, int(max_backtracks) + 1, stats, False)
