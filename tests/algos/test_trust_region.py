"""Trust-region pieces against direct answers: CG vs a linear solve, the Fisher-vector product vs an explicit
Hessian of the KL, the natural-gradient step vs its closed form, the line search's accept/reject logic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ccpo_pl.algos import trust_region as tr


def spd(n: int, seed: int = 0, cond: float = 20.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, cond, n, dtype=torch.float64)) @ q.T


def test_conjugate_gradient_matches_a_direct_solve():
    A = spd(6)
    b = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = tr.conjugate_gradient(lambda v: A @ v, b, iters=6, residual_tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)


def test_conjugate_gradient_with_few_iterations_is_only_approximate():
    """A negative control: 2 of 6 iterations do not solve an ill-conditioned system (the test above can fail)."""
    A = spd(6, cond=1e3)
    b = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = tr.conjugate_gradient(lambda v: A @ v, b, iters=2)
    assert (x - torch.linalg.solve(A, b)).norm() > 1e-3


def test_flat_params_round_trip_and_flat_grad_zero_for_unused():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    extra = nn.Parameter(torch.ones(5))
    params = [*net.parameters(), extra]
    theta = tr.flat_params(params)
    tr.set_flat_params(params, theta + 1.0)
    torch.testing.assert_close(tr.flat_params(params), theta + 1.0)
    g = tr.flat_grad(net(torch.randn(7, 3)).sum(), params)
    assert g.shape == theta.shape and torch.all(g[-5:] == 0) and g[:-5].abs().sum() > 0
    with pytest.raises(ValueError, match="flat vector"):
        tr.set_flat_params(params, theta[:-1])


class TinyGaussian(nn.Module):
    """A tiny state-dependent diagonal Gaussian policy (mean and log std heads)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
        self.mu, self.log_std = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, s):
        h = self.body(s)
        return self.mu(h), self.log_std(h).exp()


def mean_kl(loc_old, scale_old, loc, scale):
    old = torch.distributions.Normal(loc_old, scale_old)
    return torch.distributions.kl_divergence(old, torch.distributions.Normal(loc, scale)).sum(-1).mean()


def test_fisher_vector_product_matches_the_explicit_hessian_of_the_kl():
    torch.manual_seed(0)
    pi = TinyGaussian().double()
    s = torch.randn(16, 2, dtype=torch.float64)
    params = list(pi.parameters())
    theta0 = tr.flat_params(params)
    with torch.no_grad():
        loc_old, scale_old = pi(s)

    def kl_of(theta):
        # the same policy, written functionally in theta (for torch.autograd.functional.hessian)
        chunks, offset = {}, 0
        for name, p in pi.named_parameters():
            chunks[name] = theta[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        loc, scale = torch.func.functional_call(pi, chunks, (s,))
        return mean_kl(loc_old, scale_old, loc, scale)

    H = torch.autograd.functional.hessian(kl_of, theta0)
    damping = 0.1
    loc, scale = pi(s)
    Fvp = tr.fisher_vector_product(mean_kl(loc_old, scale_old, loc, scale), params, damping)
    v = torch.randn_like(theta0)
    torch.testing.assert_close(Fvp(v), H @ v + damping * v, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(Fvp(2 * v), 2 * Fvp(v))  # reusable closure, linear
    # the rank-mean hook sees the undamped product
    seen = []
    Fvp_r = tr.fisher_vector_product(mean_kl(loc_old, scale_old, *pi(s)), params, damping,
                                     reduce=lambda hv: seen.append(hv) or hv * 0.5)
    torch.testing.assert_close(Fvp_r(v), 0.5 * (H @ v) + damping * v, rtol=1e-7, atol=1e-9)
    assert len(seen) == 1


def test_natural_gradient_step_is_the_kl_constrained_maximiser():
    """max g^T s s.t. 1/2 s^T H s <= delta  ->  s* = sqrt(2 delta / g^T H^-1 g) H^-1 g, on the boundary."""
    H = spd(5, seed=3)
    g = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    delta = 0.01
    step, x, q = tr.natural_gradient_step(g, lambda v: H @ v, delta, iters=5, residual_tol=1e-20)
    x_star = torch.linalg.solve(H, g)
    torch.testing.assert_close(step, (2 * delta / (g @ x_star)).sqrt() * x_star, rtol=1e-6, atol=1e-9)
    assert 0.5 * step @ H @ step == pytest.approx(delta, rel=1e-6)
    torch.testing.assert_close(q, g @ x_star, rtol=1e-6, atol=1e-9)
    # no other step on the KL boundary does better (random directions scaled onto it)
    d = torch.randn(200, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = d * (2 * delta / torch.einsum("ni,ij,nj->n", d, H, d)).sqrt()[:, None]
    assert (d @ g).max() <= g @ step + 1e-9


def test_line_search_rejects_steps_that_break_the_kl_bound_then_accepts_a_shorter_one():
    """Parameters theta, 'KL' = theta^2 / 2 (quadratic): with a full step 1 and delta 0.02, fracs 1 .. 0.8^j are
    rejected until 0.8^j <= 0.2; the first accepted is 0.8^8 = 0.168."""
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    delta = 0.02
    seen = []

    def evaluate():
        return {"kl": 0.5 * p.detach()[0] ** 2, "improve": p.detach()[0]}

    def accept(stats, frac):
        seen.append(frac)
        return bool(stats["kl"] <= delta and stats["improve"] > 0)

    res = tr.backtracking_line_search([p], torch.ones(1, dtype=torch.float64), evaluate, accept, 15, 0.8)
    assert res.accepted and res.backtracks == 8 and res.frac == pytest.approx(0.8**8)
    assert p.item() == pytest.approx(0.8**8) and res.stats["kl"] <= delta
    assert all(0.5 * f**2 > delta for f in seen[:-1])


def test_line_search_restores_theta0_when_every_try_breaks_a_condition():
    """A step that makes the constraint worse at every length (here: cost grows with theta) is never taken."""
    p = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))
    res = tr.backtracking_line_search(
        [p], torch.ones(1, dtype=torch.float64),
        evaluate=lambda: {"kl": torch.zeros(()), "cost_change": p.detach()[0] - 0.3},
        accept=lambda s, f: bool(s["cost_change"] <= 0.0 - 1e-12), max_backtracks=5)
    assert not res.accepted and res.frac == 0.0 and res.backtracks == 6
    assert p.item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="shrink"):
        tr.backtracking_line_search([p], torch.ones(1), lambda: {}, lambda s, f: True, shrink=1.0)
