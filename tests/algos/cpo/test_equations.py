"""CPO equations against brute force: the analytic dual vs a (lam, nu) grid and vs the primal on an explicit H,
every case; the recovery direction; the multi-constraint dual vs a grid; the line-search test; the scale of c
against b; the cost-shaping target vs a loop."""

from __future__ import annotations

import math

import pytest
import torch

from ccpo_pl.algos.cpo import equations as eq

DELTA = 0.01
#: c as a multiple of sqrt(2 delta s): < -1 case 3, [-1, 0) case 2, [0, 1] case 1, > 1 case 0
KAPPAS = (-2.0, -0.9, -0.3, -0.05, 0.0, 0.2, 0.7, 0.99, 1.5, 3.0)


def problem(seed: int, n: int = 3):
    """Random g, b and an SPD H in R^n; q, r, s and H^-1 g, H^-1 b computed exactly."""
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    H = M @ M.T + 0.5 * torch.eye(n, dtype=torch.float64)
    g, b = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    x, p = torch.linalg.solve(H, g), torch.linalg.solve(H, b)
    return H, g, b, x, p, float(g @ x), float(g @ p), float(b @ p)


def cases():
    return [(seed, kappa) for seed in range(5) for kappa in KAPPAS]


def grid_max(q, r, s, c, delta):
    lam = torch.logspace(-4, 4, 1601, dtype=torch.float64)[:, None]
    nu = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-5, 4, 1800, dtype=torch.float64)])[None]
    d = eq.cpo_dual(lam, nu, q, r, s, c, delta)
    i = int(d.argmax())
    return float(d.max()), float(lam[i // d.shape[1], 0]), float(nu[0, i % d.shape[1]])


@pytest.mark.parametrize(("seed", "kappa"), cases())
def test_cpo_dual_solution_matches_a_grid_over_lam_nu(seed, kappa):
    *_, q, r, s = problem(seed)
    c = kappa * math.sqrt(2 * DELTA * s)
    sol = eq.cpo_dual_solution(q, r, s, c, DELTA)
    expected_case = 3 if kappa < -1 else 2 if kappa < 0 else 1 if kappa <= 1 else 0
    assert sol.case == expected_case
    if sol.case == 0:  # infeasible primal: the dual is unbounded above, growing linearly along nu = lam sqrt(2d/s)
        lam = torch.tensor([10.0, 100.0, 1000.0], dtype=torch.float64)
        values = eq.cpo_dual(lam, lam * sol.nu, q, r, s, c, DELTA)
        slope = sol.nu * c - 2 * DELTA
        assert slope > 0 and float(values[2] - values[1]) == pytest.approx(900 * slope + q * (1 / 200 - 1 / 2000))
        return
    best, _, _ = grid_max(q, r, s, c, DELTA)
    d_star = eq.cpo_dual(sol.lam, sol.nu, q, r, s, c, DELTA)
    assert sol.lam > 0 and sol.nu >= 0
    assert d_star >= best - 1e-9  # nothing on the grid is better
    assert d_star == pytest.approx(best, rel=2e-3, abs=1e-6)  # and the grid comes close to it


@pytest.mark.parametrize(("seed", "kappa"), cases())
def test_cpo_step_solves_the_primal_on_an_explicit_hessian(seed, kappa):
    """eq. (11): max g^T x s.t. c + b^T x <= 0, x^T H x / 2 <= delta, against 20k random trust-region points."""
    H, g, b, x, p, q, r, s = problem(seed)
    c = kappa * math.sqrt(2 * DELTA * s)
    sol = eq.cpo_dual_solution(q, r, s, c, DELTA)
    step = eq.cpo_step(x, p, sol)
    assert 0.5 * step @ H @ step <= DELTA * (1 + 1e-9)
    # random points of the trust region (the ellipsoid, surface included)
    gen = torch.Generator().manual_seed(100 + seed)
    u = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(20000, 1, generator=gen, dtype=torch.float64) ** (1 / 3)
    L = torch.linalg.cholesky(H)
    pts = torch.linalg.solve_triangular(L.T, u.T, upper=True).T * math.sqrt(2 * DELTA)
    feasible = c + pts @ b <= 0
    if sol.case == 0:
        assert not feasible.any()
        assert c + b @ step == pytest.approx(c - math.sqrt(2 * DELTA * s))  # the least cost reachable
        assert (c + pts @ b).min() >= c + b @ step - 1e-12
        return
    assert c + b @ step <= 1e-9
    if feasible.any():  # (with c just below sqrt(2 delta s) the feasible cap can be too thin to sample)
        assert g @ step >= (pts[feasible] @ g).max() - 1e-9
    assert g @ step == pytest.approx(-eq.cpo_dual(sol.lam, sol.nu, q, r, s, c, DELTA), rel=1e-6)  # strong duality


def test_recovery_step_is_the_steepest_feasible_cost_descent_in_the_trust_region():
    H, g, b, x, p, q, r, s = problem(7)
    sol = eq.cpo_dual_solution(q, r, s, 2.0 * math.sqrt(2 * DELTA * s), DELTA)
    assert sol.case == 0 and sol.nu == pytest.approx(math.sqrt(2 * DELTA / s))
    step = eq.cpo_step(x, p, sol)
    torch.testing.assert_close(step, -math.sqrt(2 * DELTA / float(b @ torch.linalg.solve(H, b))) * p)  # eq. (14)
    assert 0.5 * step @ H @ step == pytest.approx(DELTA)
    # direction: -H^-1 b, not -b (the two differ for this H)
    cos = torch.nn.functional.cosine_similarity(step, -b, dim=0)
    assert cos < 0.999 and torch.nn.functional.cosine_similarity(step, -p, dim=0) == pytest.approx(1.0)


def test_cpo_step_with_g_parallel_to_b_up_to_round_off_moves_onto_the_boundary():
    """g = 2 b plus float32-size noise: A = q - r^2/s is round-off, lam* = 0, and the step is -(c/s) H^-1 b
    (finite), not (x - nu p) / lam with lam ~ 0 amplifying the noise."""
    H, g, b, x, p, q, r, s = problem(2)
    noise = 1e-7 * torch.randn(3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x2 = 2 * p + noise
    q2, r2 = float(2 * b @ x2), float(2 * b @ p)
    c = -0.3 * math.sqrt(2 * DELTA * s)
    sol = eq.cpo_dual_solution(q2, r2, s, c, DELTA)
    step = eq.cpo_step(x2, p, sol)
    assert sol.case == 2 and sol.lam <= 1e-8
    torch.testing.assert_close(step, -(c / s) * p)
    assert c + b @ step == pytest.approx(0.0, abs=1e-12)


def test_cpo_dual_solution_without_cost_gradient_is_trpo():
    sol = eq.cpo_dual_solution(q=2.0, r=0.0, s=0.0, c=-1.0, delta=DELTA)
    assert sol.case == 4 and sol.nu == 0 and sol.lam == pytest.approx(math.sqrt(2.0 / (2 * DELTA)))
    assert eq.cpo_dual_solution(q=2.0, r=0.0, s=0.0, c=1.0, delta=DELTA).case == 4


def test_cpo_dual_reduces_to_trpo_when_constraint_inactive():
    H, g, b, x, p, q, r, s = problem(3)
    sol = eq.cpo_dual_solution(q, r, s, -5 * math.sqrt(2 * DELTA * s), DELTA)
    assert sol.case == 3
    torch.testing.assert_close(eq.cpo_step(x, p, sol), math.sqrt(2 * DELTA / q) * x)


# ---------------------------------------------------------------- eq. (12), m constraints
def h_grid(q, r, S, c, delta, hi=60.0, n=601):
    nu1, nu2 = torch.meshgrid(torch.linspace(0, hi, n, dtype=torch.float64),
                              torch.linspace(0, hi, n, dtype=torch.float64), indexing="ij")
    nu = torch.stack([nu1, nu2], -1)
    Q = q - 2 * nu @ r + torch.einsum("...i,ij,...j->...", nu, S, nu)
    lam = torch.sqrt(Q / (2 * delta))
    return eq.multi_constraint_dual(lam, nu, q, r, S, c, delta).max()


@pytest.mark.parametrize("seed", range(5))
def test_multi_constraint_dual_matches_a_grid(seed):
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    H = M @ M.T + 0.5 * torch.eye(4, dtype=torch.float64)
    g = torch.randn(4, generator=gen, dtype=torch.float64)
    B = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    Hi = torch.linalg.inv(H)
    q, r, S = g @ Hi @ g, g @ Hi @ B, B.T @ Hi @ B
    c = torch.tensor([0.3, -0.2], dtype=torch.float64) * torch.sqrt(2 * DELTA * S.diagonal())
    lam, nu, feasible = eq.multi_constraint_dual_solution(q, r, S, c, DELTA)
    assert feasible and torch.all(nu >= 0)
    d_star = eq.multi_constraint_dual(lam, nu, q, r, S, c, DELTA)
    best = h_grid(q, r, S, c, DELTA, hi=float(3 * nu.max() + 1))
    assert d_star >= best - 1e-9 and d_star == pytest.approx(float(best), rel=1e-3)
    # lam(nu) = sqrt(Q / 2 delta) is the maximiser over lam (a lam grid does no better)
    lams = torch.logspace(-3, 3, 2001, dtype=torch.float64)
    assert eq.multi_constraint_dual(lams, nu, q, r, S, c, DELTA).max() <= d_star + 1e-12
    # the primal step of eq. (13) is feasible for every constraint and inside the trust region
    step = Hi @ (g - B @ nu) / lam
    assert torch.all(c + B.T @ step <= 1e-6) and 0.5 * step @ H @ step <= DELTA * (1 + 1e-6)


@pytest.mark.parametrize(("seed", "kappa"), [(s, k) for s in range(3) for k in (-2.0, -0.5, 0.0, 0.6)])
def test_multi_constraint_dual_with_one_constraint_agrees_with_the_analytic_one(seed, kappa):
    *_, q, r, s = problem(seed)
    c = kappa * math.sqrt(2 * DELTA * s)
    sol = eq.cpo_dual_solution(q, r, s, c, DELTA)
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    lam, nu, feasible = eq.multi_constraint_dual_solution(torch.tensor(q), t(r), t(s).view(1, 1), t(c), DELTA)
    assert feasible
    assert float(nu[0]) == pytest.approx(sol.nu, rel=1e-4, abs=1e-6)
    assert float(lam) == pytest.approx(sol.lam, rel=1e-4)


def test_multi_constraint_dual_flags_an_infeasible_problem():
    *_, q, r, s = problem(1)
    S = torch.tensor([[s, 0.0], [0.0, s]], dtype=torch.float64)
    c = torch.tensor([3 * math.sqrt(2 * DELTA * s), -1.0], dtype=torch.float64)  # constraint 1 unreachable
    _, _, feasible = eq.multi_constraint_dual_solution(torch.tensor(q), torch.tensor([r, 0.0]), S, c, DELTA)
    assert not feasible


# ---------------------------------------------------------------- line search and scales
@pytest.mark.parametrize(("kl", "d_r", "d_c", "c", "case", "ok"), [
    (0.005, 0.1, -0.01, -0.05, 2, True),
    (0.02, 0.1, -0.01, -0.05, 2, False),    # KL above delta
    (0.005, 0.1, 0.06, -0.05, 2, False),    # breaks the linearised constraint c + dL_c <= 0
    (0.005, 0.1, 0.04, -0.05, 2, True),     # uses the slack
    (0.005, -0.1, -0.01, -0.05, 3, False),  # feasible and the reward surrogate got worse
    (0.005, -0.1, -0.01, 0.05, 1, True),    # infeasible: only the cost matters
    (0.005, 0.1, 0.001, 0.05, 0, False),    # infeasible and the cost did not decrease
    (float("nan"), 0.1, -0.01, -0.05, 2, False),
])
def test_cpo_line_search_accepts(kl, d_r, d_c, c, case, ok):
    assert eq.cpo_line_search_accepts(kl, d_r, d_c, c, DELTA, case) is ok


def test_constraint_value_is_on_the_scale_of_the_cost_surrogate_gradient():
    """A 1-D Gaussian 'policy' a ~ N(theta, 1), per-step cost a + 2, episodes of T steps: J_c = T (theta + 2).
    b from the per-step surrogate mean(ratio A_c) by autograd; c + b dtheta must predict the per-step constraint
    after the step, and the CPO step must land on the limit. The unscaled c (J_c - d, OmniSafe) fails both."""
    T, d, theta_k = 200, 300.0, 0.0  # J_c(pi_k) = 400 > d: infeasible by 100, i.e. 0.5 per step
    gen = torch.Generator().manual_seed(0)
    a = theta_k + torch.randn(200_000, generator=gen, dtype=torch.float64)
    adv_c = (a + 2) - (a + 2).mean()
    theta = torch.tensor(theta_k, dtype=torch.float64, requires_grad=True)
    logp = torch.distributions.Normal(theta, 1.0).log_prob(a)
    ratio = torch.exp(logp - logp.detach())
    b = float(torch.autograd.grad((ratio * adv_c).mean(), theta)[0])
    assert b == pytest.approx(1.0, rel=0.02)  # d E[cost per step] / d theta
    j_c = lambda th: T * (th + 2)  # noqa: E731
    c = eq.constraint_value(j_c(theta_k), d, T)
    dtheta = -0.3
    assert c + b * dtheta == pytest.approx(eq.constraint_value(j_c(theta_k + dtheta), d, T), rel=0.02)
    c_unscaled = j_c(theta_k) - d
    assert abs(c_unscaled + b * dtheta - (j_c(theta_k + dtheta) - d)) > 50  # off by (T - 1) |b dtheta|
    # the CPO step with a reward that pulls the other way (per-step reward a: g = b; H = 1 for N(theta, 1)) and a
    # trust region wide enough to reach the limit (|dtheta| <= sqrt(2 delta) = 1): it stops on the limit
    delta = 0.5
    sol = eq.cpo_dual_solution(q=b * b, r=b * b, s=b * b, c=c, delta=delta)
    step = eq.cpo_step(torch.tensor([b]), torch.tensor([b]), sol)
    assert sol.case == 1
    assert j_c(theta_k + float(step)) == pytest.approx(d, rel=0.02)
    assert eq.cpo_dual_solution(q=b * b, r=b * b, s=b * b, c=c_unscaled, delta=delta).case == 0  # "infeasible"


# ---------------------------------------------------------------- cost shaping
def labels_loop(cost, done, H):
    out = torch.zeros_like(cost)
    for i in range(cost.shape[0]):
        for t in range(cost.shape[1]):
            for k in range(H):
                if t + k >= cost.shape[1]:
                    break
                if cost[i, t + k] > 0:
                    out[i, t] = 1.0
                    break
                if done[i, t + k]:
                    break
    return out


def test_unsafe_within_horizon_matches_a_loop_and_stops_at_episode_ends():
    gen = torch.Generator().manual_seed(0)
    cost = (torch.rand(4, 40, generator=gen) < 0.1).float() * torch.rand(4, 40, generator=gen)
    done = torch.rand(4, 40, generator=gen) < 0.1
    for H in (1, 3, 7):
        torch.testing.assert_close(eq.unsafe_within_horizon(cost, done, H), labels_loop(cost, done, H))
    # hand case: a cost at t=4, an episode end at t=2: steps 3, 4 see it with H=2; 2 does not (other episode)
    cost = torch.tensor([[0, 0, 0, 0, 1.0, 0]])
    done = torch.tensor([[False, False, True, False, False, False]])
    assert eq.unsafe_within_horizon(cost, done, 2).tolist() == [[0, 0, 0, 1, 1, 0]]
    assert eq.unsafe_within_horizon(cost, done, 5).tolist() == [[0, 0, 0, 1, 1, 0]]
    assert eq.shaped_cost(cost, torch.full_like(cost, 0.25)).tolist() == [[0.25, 0.25, 0.25, 0.25, 1.25, 0.25]]
