"""Tests for ccpo_pl.algos.ccpo.equations: each equation against a loop, autograd, a grid or a hand answer."""

import math
import threading

import pytest
import torch
from torch.func import hessian, jacrev

from ccpo_pl.algos.ccpo import equations as eq

F64 = torch.float64
KAPPA = 0.02
COLD_ITERS = 25  # cold starts (eta, lam) = (1, 0) need more than the warm-start default


def _q_batch(n_thr, n_states, n_actions, seed, cost_shift=0.0):
    """Q values on the scale of the Bullet tasks: per-state reward level O(20), within-state spreads O(1..5),
    costs positively correlated with rewards (so the constraint binds)."""
    gen = torch.Generator().manual_seed(seed)
    q_r = torch.randn(n_thr, n_states, 1, generator=gen, dtype=F64) * 20
    q_r = q_r + 5 * torch.randn(n_thr, n_states, n_actions, generator=gen, dtype=F64)
    spread_r = (q_r - q_r.mean(-1, keepdim=True)) / 5
    noise = torch.randn(n_thr, n_states, n_actions, generator=gen, dtype=F64)
    level = torch.randn(n_thr, n_states, 1, generator=gen, dtype=F64)
    q_c = (level + 3 + cost_shift + 0.3 * spread_r + 0.5 * noise).clamp_min(0)
    return q_r, q_c


def _thresholds(q_r, q_c, offsets):
    """eps_q = (cost of the unconstrained E-step solution) - offsets: small offsets bind, large are infeasible."""
    n_thr = q_r.shape[0]
    eta, _ = eq.solve_estep_dual(
        q_r, q_c, torch.full((n_thr,), 1e3, dtype=F64), KAPPA, torch.ones(n_thr, dtype=F64),
        torch.zeros(n_thr, dtype=F64), iters=COLD_ITERS,
    )
    weights = eq.estep_weights(q_r, q_c, eta, torch.zeros(n_thr, dtype=F64))
    return (weights * q_c).sum(-1).mean(-1) - torch.as_tensor(offsets, dtype=F64)


def _cold_solve(q_r, q_c, eps_q, **kwargs):
    ones = torch.ones(q_r.shape[0], dtype=q_r.dtype)
    return eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, ones, 0 * ones, iters=COLD_ITERS, **kwargs)


def test_eps_to_q_units_matches_discounted_even_spread():
    gamma, horizon, eps = 0.97, 200, 20.0
    brute = 0.0
    for t in range(horizon):  # eps spread evenly over T steps, discounted
        brute += gamma**t * eps / horizon
    assert eq.eps_to_q_units(eps, gamma, horizon) == pytest.approx(brute, rel=1e-12)
    assert brute == pytest.approx(3.3258, abs=1e-4)
    as_tensor = eq.eps_to_q_units(torch.tensor([20.0, 40.0], dtype=F64), gamma, horizon)
    torch.testing.assert_close(as_tensor, torch.tensor([brute, 2 * brute], dtype=F64))
    assert eq.eps_to_q_units(eps, 1.0, horizon) == eps


def test_estep_dual_matches_per_threshold_loop():
    q_r, q_c = _q_batch(3, 5, 4, seed=0)
    eps_q, eta, lam = torch.tensor([2.0, 3.0, 4.0], dtype=F64), torch.tensor([0.5, 3.0, 40.0], dtype=F64), \
        torch.tensor([0.0, 1.5, 20.0], dtype=F64)
    expected = []
    for e in range(3):
        per_state = []
        for s in range(5):
            terms = [math.exp((q_r[e, s, k] - lam[e] * q_c[e, s, k]).item() / eta[e].item()) for k in range(4)]
            per_state.append(math.log(sum(terms) / 4))
        expected.append(lam[e] * eps_q[e] + eta[e] * KAPPA + eta[e] * sum(per_state) / 5)
    torch.testing.assert_close(eq.estep_dual(eta, lam, q_r, q_c, eps_q, KAPPA), torch.stack(expected))


@pytest.mark.parametrize("lam_scale", [0.0, 1.0, 30.0])
def test_estep_dual_grad_hess_matches_autograd(lam_scale):
    q_r, q_c = _q_batch(3, 6, 5, seed=1)
    eps_q = torch.tensor([2.0, 3.0, 4.0], dtype=F64)
    eta = torch.tensor([0.3, 5.0, 60.0], dtype=F64)
    lam = lam_scale * torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    g, grad, hess = eq.estep_dual_grad_hess(eta, lam, q_r, q_c, eps_q, KAPPA)
    torch.testing.assert_close(g, eq.estep_dual(eta, lam, q_r, q_c, eps_q, KAPPA))
    for e in range(3):
        def dual(v, e=e):
            return eq.estep_dual(v[0:1], v[1:2], q_r[e : e + 1], q_c[e : e + 1], eps_q[e : e + 1], KAPPA)[0]

        point = torch.stack((eta[e], lam[e]))
        torch.testing.assert_close(grad[e], jacrev(dual)(point), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(hess[e], hessian(dual)(point), rtol=1e-5, atol=1e-9)


def _grid_min(q_r, q_c, eps_q, lam_max=100.0):
    etas = torch.logspace(-3, 3, 150, dtype=F64)
    lams = torch.cat((torch.zeros(1, dtype=F64), torch.logspace(-3, math.log10(lam_max), 150, dtype=F64)))
    eta, lam = (t.reshape(-1, 1) for t in torch.meshgrid(etas, lams, indexing="ij"))
    return torch.stack([
        eq.estep_dual(eta, lam, q_r[e : e + 1], q_c[e : e + 1], eps_q[e : e + 1], KAPPA).min()
        for e in range(q_r.shape[0])
    ])


def test_solve_estep_dual_beats_grid_search_and_warm_start():
    q_r, q_c = _q_batch(6, 12, 8, seed=2)
    eps_q = _thresholds(q_r, q_c, [-0.05, 0.0, 0.03, 0.06, 0.1, 3.0])  # inactive ... binding ... infeasible
    eta0 = torch.tensor([1.0, 0.01, 300.0, 5.0, 20.0, 1.0], dtype=F64)
    lam0 = torch.tensor([0.0, 50.0, 0.0, 3.0, 100.0, 0.0], dtype=F64)
    eta, lam = eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, eta0, lam0, iters=COLD_ITERS)
    g = eq.estep_dual(eta, lam, q_r, q_c, eps_q, KAPPA)
    grid = _grid_min(q_r[:5], q_c[:5], eps_q[:5])
    assert (g[:5] <= grid + 1e-6 * grid.abs()).all(), (g[:5] - grid)
    assert (g <= eq.estep_dual(eta0, lam0, q_r, q_c, eps_q, KAPPA) + 1e-9).all()
    _, grad, _ = eq.estep_dual_grad_hess(eta, lam, q_r, q_c, eps_q, KAPPA)
    interior = (lam > 1e-6) & (lam < 100.0)
    assert interior.sum() >= 2
    assert (grad[interior, 1].abs() < 1e-5).all(), grad  # KKT: d g / d lam = 0 where lam is interior
    assert (grad[lam == 0, 1] >= 0).all()  # slack constraint: lam at 0 with an outward gradient
    assert lam[-1] == 100.0 and grad[-1, 1] < 0  # infeasible threshold: lam at lam_max


def test_solve_estep_dual_float32_matches_float64():
    q_r, q_c = _q_batch(4, 32, 16, seed=13)
    eps_q = _thresholds(q_r, q_c, [0.0, 0.03, 0.08, 3.0])
    eta64, lam64 = _cold_solve(q_r, q_c, eps_q)
    eta32, lam32 = _cold_solve(q_r.float(), q_c.float(), eps_q.float())
    assert eta32.dtype == torch.float32
    g64 = eq.estep_dual(eta64, lam64, q_r, q_c, eps_q, KAPPA)
    g32 = eq.estep_dual(eta32.double(), lam32.double(), q_r, q_c, eps_q, KAPPA)
    torch.testing.assert_close(g32, g64, rtol=1e-6, atol=1e-6)


def test_solve_estep_dual_lam_goes_to_lam_max_when_every_action_violates():
    q_r, q_c = _q_batch(2, 8, 6, seed=3)
    eps_q = q_c.amin((-1, -2)) - 0.5  # below the cheapest action of every state
    eta, lam = _cold_solve(q_r, q_c, eps_q, lam_max=25.0)
    assert (lam == 25.0).all()
    assert ((eta >= 1e-3) & (eta <= 1e3)).all()


def test_solve_estep_dual_never_increases_g_with_few_iterations():
    q_r, q_c = _q_batch(5, 16, 8, seed=4)
    eps_q = _thresholds(q_r, q_c, [0.0, 0.02, 0.05, 0.1, 0.5])
    eta0, lam0 = torch.tensor([1e-3, 1e3, 0.1, 50.0, 7.0], dtype=F64), torch.tensor([100, 0, 9, 0.5, 2], dtype=F64)
    g_prev = eq.estep_dual(eta0, lam0, q_r, q_c, eps_q, KAPPA)
    for iters in (1, 2, 3, 5, 8):
        eta, lam = eq.solve_estep_dual(q_r, q_c, eps_q, KAPPA, eta0, lam0, iters=iters)
        g = eq.estep_dual(eta, lam, q_r, q_c, eps_q, KAPPA)
        assert (g <= g_prev + 1e-9).all()
        g_prev = g


def test_solve_estep_dual_lam_grows_as_eps_shrinks():
    q_r, q_c = _q_batch(1, 32, 16, seed=5)
    eps_q = _thresholds(q_r, q_c, [0.12, 0.1, 0.08, 0.06, 0.04, 0.02, -0.02])  # [7] by broadcasting, growing
    q_r, q_c = q_r.expand(7, -1, -1), q_c.expand(7, -1, -1)
    _, lam = _cold_solve(q_r, q_c, eps_q)
    assert (lam[1:] <= lam[:-1] + 1e-9).all(), lam
    assert lam[0] > lam[-2] > 0 and lam[-1] == 0


def test_solve_estep_dual_reduce_over_two_ranks_equals_concatenated_batch():
    q_r, q_c = _q_batch(3, 20, 8, seed=6)
    eps_q = _thresholds(q_r, q_c, [0.0, 0.04, 0.08])
    full = _cold_solve(q_r, q_c, eps_q)
    identity = _cold_solve(q_r, q_c, eps_q, reduce=lambda t: t)
    torch.testing.assert_close(identity, full, rtol=0, atol=0)

    slots, barrier, results = [None, None], threading.Barrier(2), [None, None]

    def all_reduce_mean(rank, tensor):  # simulated DDP all-reduce (mean) between two threads
        slots[rank] = tensor
        barrier.wait()
        mean = (slots[0] + slots[1]) / 2
        barrier.wait()
        return mean

    def rank_main(rank):
        shard = slice(10 * rank, 10 * rank + 10)  # equal-sized shards of states
        results[rank] = _cold_solve(q_r[:, shard], q_c[:, shard], eps_q, reduce=lambda t: all_reduce_mean(rank, t))

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # every rank: the same solution
    # lam of the first threshold sits within 1e-7 of its bound 0, where the shards' summation order moves it by
    # ~1e-8 (seen with MKL on an Intel CPU): absolute round-off of the solve, not a different solution
    torch.testing.assert_close(results[0], full, rtol=1e-6, atol=1e-7)


def test_estep_weights_rows_sum_to_one_and_follow_eta_and_lam():
    q_r, q_c = _q_batch(2, 6, 5, seed=7)
    eta, lam = torch.tensor([2.0, 7.0], dtype=F64), torch.tensor([0.0, 4.0], dtype=F64)
    w = eq.estep_weights(q_r, q_c, eta, lam)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6, dtype=F64))
    greedy = eq.estep_weights(q_r, q_c, torch.full((2,), 1e-4, dtype=F64), torch.zeros(2, dtype=F64))
    assert torch.equal(greedy.argmax(-1), q_r.argmax(-1)) and (greedy.amax(-1) > 0.999).all()
    mean_cost = [(eq.estep_weights(q_r, q_c, eta, torch.full((2,), lam_i, dtype=F64)) * q_c).sum(-1)
                 for lam_i in (0.0, 1.0, 10.0)]
    assert (mean_cost[1] <= mean_cost[0] + 1e-12).all() and (mean_cost[2] < mean_cost[1]).all()


def _gaussians(seed, shape=(2, 7, 3)):
    gen = torch.Generator().manual_seed(seed)
    mu_old, mu = torch.randn(shape, generator=gen, dtype=F64), torch.randn(shape, generator=gen, dtype=F64)
    sigma_old = torch.rand(shape, generator=gen, dtype=F64) + 0.2
    sigma = torch.rand(shape, generator=gen, dtype=F64) + 0.2
    return mu_old, mu, sigma_old, sigma


def _normal(mu, sigma):
    return torch.distributions.Independent(torch.distributions.Normal(mu, sigma), 1)


def test_action_penalty_is_minus_the_distance_to_the_box_by_hand():
    actions = torch.tensor([[0.5, -0.5], [2.0, -1.0], [1.5, -3.0], [-1.0, 1.0]])
    expected = torch.tensor([0.0, -1.0, -math.sqrt(0.5**2 + 2.0**2), 0.0])
    assert torch.allclose(eq.action_penalty(actions), expected)
    assert torch.allclose(eq.action_penalty(actions, low=-2.0, high=2.0), torch.tensor([0.0, 0.0, -1.0, 0.0]))


def test_penalty_temperature_minimises_its_dual_and_spends_its_kl_pulling_samples_into_the_box():
    gen = torch.Generator().manual_seed(3)
    loc, scale = torch.tensor([0.9, -0.2]), torch.tensor([1.0, 0.5])  # the first dimension leaves the box often
    actions = loc + scale * torch.randn(2, 64, 128, 2, generator=gen, dtype=F64)
    q_pen = eq.action_penalty(actions)
    kappa_pen = 0.01
    eta = eq.solve_penalty_temperature(q_pen, kappa_pen, torch.ones(2, dtype=F64), iters=COLD_ITERS)
    grid = torch.logspace(-3, 3, 4001, dtype=F64)[:, None].expand(-1, 2)
    g_grid = eq.estep_dual(grid, torch.zeros_like(grid), q_pen, torch.zeros_like(q_pen), torch.zeros(2, dtype=F64),
                           kappa_pen)
    g = eq.estep_dual(eta, torch.zeros_like(eta), q_pen, torch.zeros_like(q_pen), torch.zeros(2, dtype=F64), kappa_pen)
    assert (g <= g_grid.min(0).values + 1e-9).all()
    w = torch.softmax(q_pen / eta[:, None, None], dim=-1)
    kl = (w * torch.log(w * q_pen.shape[-1])).sum(-1).mean(-1)  # mean_s KL(w_s || uniform) = KL(q || pi_old)
    assert torch.allclose(kl, torch.full_like(kl, kappa_pen), rtol=1e-3)  # the bound is active at the optimum
    mean_w = (w[..., None] * actions).sum(-2)
    var_w = (w[..., None] * (actions - mean_w[..., None, :]) ** 2).sum(-2)
    assert (mean_w[..., 0] < actions[..., 0].mean(-1)).float().mean() > 0.9  # towards the box
    assert var_w[..., 0].mean() < actions[..., 0].var(-1, unbiased=False).mean()  # narrower
    assert (eq.action_penalty(actions.clamp(-1, 1)) == 0).all()


def test_kl_mean_and_kl_cov_match_torch_distributions():
    mu_old, mu, sigma_old, sigma = _gaussians(8)
    kl = torch.distributions.kl_divergence
    torch.testing.assert_close(eq.kl_mean(mu_old, mu, sigma_old),
                               kl(_normal(mu_old, sigma_old), _normal(mu, sigma_old)).mean(-1))
    torch.testing.assert_close(eq.kl_cov(sigma_old, sigma),
                               kl(_normal(mu_old, sigma_old), _normal(mu_old, sigma)).mean(-1))
    assert torch.equal(eq.kl_cov(sigma_old, sigma_old), torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("row_sums", ["one", "any"])  # E-step weights sum to 1; the moment form holds for any
def test_mstep_loss_matches_loop_with_torch_normal(row_sums):
    mu_old, mu, sigma_old, sigma = _gaussians(9)
    gen = torch.Generator().manual_seed(10)
    actions = torch.randn(2, 7, 4, 3, generator=gen, dtype=F64)
    weights = torch.softmax(torch.randn(2, 7, 4, generator=gen, dtype=F64), -1)
    if row_sums == "any":
        weights = weights * (0.2 + 2 * torch.rand(2, 7, 1, generator=gen, dtype=F64))
    mu, sigma = mu.requires_grad_(), sigma.requires_grad_()
    expected = torch.zeros(2, dtype=F64)
    for e in range(2):
        for s in range(7):
            for k in range(4):
                a = actions[e, s, k]
                log_lik = (_normal(mu[e, s], sigma_old[e, s]).log_prob(a)
                           + _normal(mu_old[e, s], sigma[e, s]).log_prob(a))
                expected[e] = expected[e] - weights[e, s, k] * log_lik / 7
    loss = eq.mstep_loss(actions, weights, mu, sigma, mu_old, sigma_old)
    torch.testing.assert_close(loss, expected)
    # the same gradient (the moment form keeps only [E, S, A] tensors in the graph)
    torch.testing.assert_close(torch.autograd.grad(loss.sum(), (mu, sigma)),
                               torch.autograd.grad(expected.sum(), (mu, sigma)))


def test_mstep_loss_minimiser_is_the_weighted_mle():
    gen = torch.Generator().manual_seed(11)
    actions = torch.randn(1, 2, 6, 2, generator=gen, dtype=F64) * 0.7 + 0.3
    weights = torch.softmax(2 * torch.randn(1, 2, 6, generator=gen, dtype=F64), -1)
    mu_old, sigma_old = torch.zeros(1, 2, 2, dtype=F64), torch.ones(1, 2, 2, dtype=F64)
    mu, log_sigma = (torch.zeros(1, 2, 2, dtype=F64, requires_grad=True) for _ in range(2))
    opt = torch.optim.Adam([mu, log_sigma], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        eq.mstep_loss(actions, weights, mu, log_sigma.exp(), mu_old, sigma_old).sum().backward()
        opt.step()
    w = weights[..., None]
    weighted_mean = (w * actions).sum(-2)  # the mean term's MLE
    weighted_std = ((w * (actions - mu_old[:, :, None]) ** 2).sum(-2)).sqrt()  # scale term: around mu_old
    torch.testing.assert_close(mu.detach(), weighted_mean, atol=1e-3, rtol=0)
    torch.testing.assert_close(log_sigma.exp().detach(), weighted_std, atol=1e-3, rtol=0)


def test_kl_multiplier_update_hand_sequence_with_clamps():
    alpha = torch.tensor([0.0, 0.45])
    seq = []
    for kl in ([0.015, 0.1], [0.0, 0.0], [0.0, -1.0]):
        alpha = eq.kl_multiplier_update(alpha, torch.tensor(kl), bound=0.005, lr=10.0, alpha_max=0.5)
        seq.append(alpha.tolist())
    assert seq[0] == pytest.approx([0.1, 0.5])  # 0 + 10 * 0.01; 0.45 + 0.95 clamped to 0.5
    assert seq[1] == pytest.approx([0.05, 0.45])
    assert seq[2] == pytest.approx([0.0, 0.0])  # 0.05 - 0.05; clamped at 0


def test_lagrangian_actor_loss_gradients_scale_with_lam():
    gen = torch.Generator().manual_seed(12)
    q_r, q_c, log_prob = (torch.randn(3, 4, generator=gen, dtype=F64).requires_grad_() for _ in range(3))
    lam = torch.tensor([0.0, 1.0, 9.0], dtype=F64)
    loss = eq.lagrangian_actor_loss(q_r, q_c, lam, log_prob, alpha=0.2)
    expected = ((0.2 * log_prob - q_r + lam[:, None] * q_c) / (1 + lam[:, None])).mean(-1)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    share = (1 / (1 + lam))[:, None].expand(3, 4) / 4
    torch.testing.assert_close(q_c.grad, (lam / (1 + lam))[:, None].expand(3, 4) / 4)
    torch.testing.assert_close(q_r.grad, -share)  # reward's share falls as lam grows
    torch.testing.assert_close(log_prob.grad, 0.2 * share)


def test_the_episode_cost_correction_replaces_the_critic_gap_at_behaviour_thresholds_and_interpolates_between():
    beh = torch.tensor([20.0, 40.0, 60.0])
    ep_gap = torch.tensor([-1.0, 0.0, 4.0])  # measured, Q units
    critic_gap = torch.tensor([0.0, 0.5, 1.0])  # bias: -1, -0.5, 3
    measured = torch.tensor([True, True, True])
    eps = torch.tensor([10.0, 20.0, 30.0, 50.0, 55.0, 60.0, 70.0])
    got = eq.episode_cost_correction(eps, beh, ep_gap, critic_gap, measured)
    # 10: held at the first (-1); 30: halfway -1 -> -0.5; 50: halfway -0.5 -> 3; 55: 3/4 of the way; 70: held at 3
    assert torch.allclose(got, torch.tensor([-1.0, -1.0, -0.75, 1.25, 2.125, 3.0, 3.0]))
    # critic gap + correction at a behaviour threshold is its measured gap
    assert torch.allclose(critic_gap + eq.episode_cost_correction(beh, beh, ep_gap, critic_gap, measured), ep_gap)
    # a threshold without measured episodes keeps the critic's gap there
    none_at_60 = eq.episode_cost_correction(eps, beh, ep_gap, critic_gap, torch.tensor([True, True, False]))
    assert torch.allclose(none_at_60, torch.tensor([-1.0, -1.0, -0.75, -0.25, -0.125, 0.0, 0.0]))
    one = eq.episode_cost_correction(eps, beh[:1], ep_gap[:1], critic_gap[:1], measured[:1])
    assert torch.allclose(one, torch.full_like(eps, -1.0))


def test_the_running_mean_averages_the_first_values_then_decays_and_skips_invalid_entries():
    mean, count = torch.zeros(2), torch.zeros(2)
    for value in (4.0, 2.0):  # decay 0.25: the plain mean of the first 4 values
        mean, count = eq.running_mean(mean, count, torch.full((2,), value), 0.25, torch.tensor([True, False]))
    assert mean.tolist() == [3.0, 0.0] and count.tolist() == [2.0, 0.0]
    for value in (3.0, 3.0, 7.0):  # 4th value: mean of 4 -> 3; 5th: 3 + 0.25 * (7 - 3)
        mean, count = eq.running_mean(mean, count, torch.full((2,), value), 0.25, torch.tensor([True, True]))
    assert mean[0].item() == pytest.approx(4.0) and count[0].item() == 5.0
