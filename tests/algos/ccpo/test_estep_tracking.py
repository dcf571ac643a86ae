"""The E-step dual as solved in training (warm-started, a few Newton iterations, one replay batch per update) against
the population dual of a fixed critic and policy: resampled batches, an infeasible threshold, a drifting problem."""

import pytest
import torch
from omegaconf import OmegaConf

from ccpo_pl.algos.ccpo import equations as eq
from ccpo_pl.conf import CONF_DIR

KAPPA, K, E = 0.02, 16, 3
LAM_MAX = 100.0
N_POP = 20_000
DELTA = 0.05  # Q units: the tolerance of the tracked dual's state-level cost (see its test)
GAP_DECAY = float(OmegaConf.load(CONF_DIR / "algo" / "ccpo.yaml").dual.gap_decay)  # the shipped default


def _population(seed):
    """State levels of a fixed critic under a fixed policy, on BallCircle's scale (30k-frame run): per-state means
    of Q_c spread 3.5 across states, 0.4 within a state, reward and cost correlated within a state."""
    gen = torch.Generator().manual_seed(seed)
    return gen, 20 * torch.randn(N_POP, generator=gen), 8 + 3.5 * torch.randn(N_POP, generator=gen)


def _q(gen, pop, idx, cost_shift=0.0):
    """Q_r, Q_c [E, S, K] of K fresh actions at population states idx [E, S]."""
    _, r_s, c_s = pop
    u, v = torch.randn(*idx.shape, K, generator=gen), torch.randn(*idx.shape, K, generator=gen)
    return r_s[idx][..., None] + 2.0 * u, c_s[idx][..., None] + cost_shift + 0.4 * (0.8 * u + 0.6 * v)


def _track(pop, eps_q, decay, updates=500, states=64, cost_shift=lambda t: 0.0):
    """lam of `updates` consecutive training-like solves (3 warm-started iterations, `states` per threshold)."""
    gen = pop[0]
    eta, lam, gap, n = torch.ones(E), torch.zeros(E), torch.zeros(E), torch.zeros(E)
    seq = []
    for t in range(updates):
        q_r, q_c = _q(gen, pop, torch.randint(N_POP, (E, states), generator=gen), cost_shift(t))
        eta, lam = eq.track_estep_dual(q_r, q_c, eps_q, KAPPA, eta, lam, gap, n, gap_decay=decay, iters=3,
                                       lam_max=LAM_MAX)
        gap, n = eq.running_cost_gap(gap, n, q_c.mean((1, 2)) - eps_q, decay)
        seq.append(lam)
    return torch.stack(seq)


def _population_lam(pop, offsets, shifts=(0.0,)):
    """eps_q = population mean of Q_c + offsets, and the population dual's lam (all N_POP states, converged) for
    that cost level shifted by each of `shifts` Q units: [len(shifts), E]."""
    q_r, q_c = _q(pop[0], pop, torch.arange(N_POP).expand(E, N_POP))
    eps_q = q_c.mean((1, 2)) + torch.tensor(offsets)
    gap = q_c.mean((1, 2)) - eps_q
    lams = [eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, torch.ones(E), torch.zeros(E), iters=30, lam_max=LAM_MAX,
                                c_gap=gap + shift)[1] for shift in shifts]
    return eps_q, torch.stack(lams)


def test_running_cost_gap_is_the_mean_then_an_exponential_average():
    gap, n = torch.zeros(1), torch.zeros(1)
    for x in (4.0, 2.0, 6.0):  # rate max(0.5, 1 / (n + 1)): 1, 1/2, 1/2
        gap, n = eq.running_cost_gap(gap, n, torch.tensor([x]), 0.5)
    assert gap.item() == pytest.approx(4.5) and n.item() == 3  # 4 -> 3 -> 4.5
    gap, n = torch.zeros(1), torch.zeros(1)
    for x in (1.0, 2.0, 3.0, 4.0):  # decay 0.1 < 1 / (n + 1) for n < 9: the plain mean
        gap, n = eq.running_cost_gap(gap, n, torch.tensor([x]), 0.1)
    assert gap.item() == pytest.approx(2.5)


@pytest.mark.parametrize("seed,offsets", [(0, [0.0, 0.03, 0.06]), (1, [0.02, 0.1, 0.3])])
def test_resampled_batches_give_the_population_lam(seed, offsets):
    """Tolerance: the lam the population dual takes when its cost level is off by up to DELTA = 0.05 Q units (1.5 %
    of eps_q here, under the KL ball's reach of ~0.08 in E_w[Q_c]); here that is lam_pop -2.5/+1.7 (lam moves by
    ~50 per Q unit: within-state cost std 0.4, reward and cost correlated 0.8)."""
    pop = _population(seed)
    eps_q, (lam_pop, lam_lo, lam_hi) = _population_lam(pop, offsets, shifts=(0.0, -DELTA, DELTA))
    assert (lam_hi < 20).all()  # the whole band is far from the cap
    lam = _track(pop, eps_q, GAP_DECAY)[200:]  # after a burn-in of 200 updates
    inside = (lam >= lam_lo - 0.5) & (lam <= lam_hi + 0.5)  # 0.5: the 64-state batch's own spread (std ~0.1)
    assert (lam < LAM_MAX).all()
    assert inside.float().mean(0).min() >= 0.9, (lam.mean(0), lam_lo, lam_pop, lam_hi)
    assert ((lam.mean(0) >= lam_lo) & (lam.mean(0) <= lam_hi)).all(), (lam.mean(0), lam_lo, lam_pop, lam_hi)
    # the batch alone (decay 1: each update's own states decide the state-level part) fails the same test
    alone = _track(pop, eps_q, 1.0)[200:]
    assert (alone >= LAM_MAX).float().mean() > 0.1
    assert (((alone >= lam_lo - 0.5) & (alone <= lam_hi + 0.5)).float().mean(0) < 0.9).all()


def test_a_truly_infeasible_threshold_reaches_the_cap():
    pop = _population(2)
    eps_q, (lam_pop,) = _population_lam(pop, [-0.3, -0.5, 0.0])  # the KL ball moves E_w[Q_c] by < 0.1
    assert (lam_pop[:2] == LAM_MAX).all()
    lam = _track(pop, eps_q, GAP_DECAY, updates=200)
    assert (lam[20:, :2] == LAM_MAX).all()  # within 20 updates and then throughout
    assert (lam[100:, 2] < LAM_MAX).all()


def test_warm_started_three_iterations_track_a_drifting_problem():
    """The population's cost level drifts by 0.09 Q units over 300 updates (a policy and critic that learn), taking
    slack thresholds to binding ones: the 3-iteration warm-started solves stay at the converged solution of each
    update's problem (a threshold turning infeasible needs more:
    `test_a_truly_infeasible_threshold_reaches_the_cap`)."""
    gen = torch.Generator().manual_seed(3)
    n = 256
    r_s, c_s = 20 * torch.randn(n, generator=gen), 8 + 3.5 * torch.randn(n, generator=gen)
    u, v = torch.randn(E, n, K, generator=gen), torch.randn(E, n, K, generator=gen)
    q_r, q_c0 = r_s[:, None] + 2.0 * u, c_s[:, None] + 0.4 * (0.8 * u + 0.6 * v)
    eps_q = q_c0.mean((1, 2)) + torch.tensor([0.03, 0.06, 0.1])
    eta, lam = torch.ones(E), torch.zeros(E)
    lam_err, g_err, lams = [], [], []
    for t in range(300):
        q_c = q_c0 + 0.09 * t / 300
        eta, lam = eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, eta, lam, iters=3, lam_max=LAM_MAX)
        if t % 10 == 9:  # against the converged solution of this update's problem
            eta_star, lam_star = eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, eta, lam, iters=40, lam_max=LAM_MAX)
            g = eq.estep_dual(eta, lam, q_r, q_c, eps_q, KAPPA)
            g_star = eq.estep_dual(eta_star, lam_star, q_r, q_c, eps_q, KAPPA)
            lam_err.append((lam - lam_star).abs())
            g_err.append(g - g_star)
            lams.append(lam_star)
    lam_err, g_err, lams = torch.stack(lam_err), torch.stack(g_err), torch.stack(lams)
    assert (lams[0] == 0).any() and (lams[-1] > 2).all() and (lams < LAM_MAX).all(), lams  # slack -> binding
    assert (g_err <= 1e-3).all(), g_err.max()  # Q units; g ~ 1
    assert (lam_err <= 0.05 * lams.clamp(min=1.0)).all(), (lam_err, lams)
