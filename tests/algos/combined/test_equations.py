"""Tests for ccpo_pl.algos.combined: the combination rule by hand, its endpoints bit for bit, constant
extrapolation, the combined actor, and the Lagrangian PPO/TRPO pieces on tiny fixed batches."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import ClipPPOLoss

from ccpo_pl.algos.combined import equations as eq
from ccpo_pl.algos.combined.actor import CombinedActor
from ccpo_pl.algos.onpolicy import diag_normal_kl, diag_normal_log_prob
from ccpo_pl.nets import make_policy

EPS_B = torch.tensor([20.0, 40.0, 60.0])


def test_combination_weights_by_hand():
    i1, i2, w1, w2 = eq.combination_weights(torch.tensor([25.0, 50.0, 45.0]), EPS_B)
    assert i1.tolist() == [0, 1, 1] and i2.tolist() == [1, 2, 2]
    # 25 between 20 and 40: w1 = (40-25)/20 = 0.75; 50 between 40 and 60: w1 = 0.5; 45: w1 = 0.75
    assert w1.tolist() == pytest.approx([0.75, 0.5, 0.75]) and w2.tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_combination_weights_are_exact_at_the_behaviour_thresholds():
    i1, i2, w1, w2 = eq.combination_weights(EPS_B.clone(), EPS_B)
    picked = torch.where(w1 == 1.0, i1, i2)
    assert picked.tolist() == [0, 1, 2]
    assert torch.all((w1 == 1.0) & (w2 == 0.0) | (w1 == 0.0) & (w2 == 1.0))  # exact, not approximately


def test_combination_weights_extrapolate_linearly_on_the_end_pair_by_default():
    i1, i2, w1, w2 = eq.combination_weights(torch.tensor([10.0, 70.0, 30.0]), EPS_B)
    assert i1.tolist() == [0, 1, 0] and i2.tolist() == [1, 2, 1]
    # 10 on (20, 40): w1 = (40-10)/20 = 1.5, w2 = -0.5; 70 on (40, 60): w1 = -0.5, w2 = 1.5; 30 inside: 0.5, 0.5
    assert w1.tolist() == pytest.approx([1.5, -0.5, 0.5]) and w2.tolist() == pytest.approx([-0.5, 1.5, 0.5])
    with pytest.raises(ValueError, match="allowed: linear, nearest"):
        eq.combination_weights(EPS_B, EPS_B, "constant")


def test_combination_weights_extrapolate_as_a_constant_with_nearest():
    i1, i2, w1, w2 = eq.combination_weights(torch.tensor([10.0, 19.0, 65.0, 70.0]), EPS_B, "nearest")
    picked = torch.where(w1 == 1.0, i1, i2)
    assert picked.tolist() == [0, 0, 2, 2]
    assert torch.all((w1 >= 0) & (w2 >= 0))  # never the negative weight of linear extrapolation
    # one behaviour threshold: that policy everywhere
    i1, i2, w1, w2 = eq.combination_weights(torch.tensor([5.0, 30.0]), torch.tensor([30.0]))
    assert i1.tolist() == [0, 0] and w1.tolist() == [1.0, 1.0] and w2.tolist() == [0.0, 0.0]


def _actor(seed=0, obs_dim=3, act_dim=2, extrapolation="nearest"):
    torch.manual_seed(seed)
    actor = CombinedActor(obs_dim, act_dim, [16, 16], EPS_B.tolist(), log_std_init=-0.5,
                          extrapolation=extrapolation)
    with torch.no_grad():  # distinct std per policy, so the std combination is tested too
        for i, p in enumerate(actor.policies):
            p.log_std.copy_(torch.tensor([-1.0 + 0.5 * i, -0.5 * i]))
    return actor


def test_combined_actor_at_eps_i_is_policy_i_bit_for_bit():
    actor = _actor()
    obs = torch.randn(7, 3)
    for i, e in enumerate(EPS_B.tolist()):
        loc, scale = actor(obs, torch.full((7, 1), e))
        loc_i, scale_i = actor.policies[i](obs)
        assert torch.equal(loc, loc_i) and torch.equal(scale, scale_i)


def test_combined_actor_interpolates_means_and_stds_and_clamps_outside():
    actor = _actor()
    obs = torch.randn(5, 3)
    (l0, s0), (l1, s1), (l2, s2) = (p(obs) for p in actor.policies)
    loc, scale = actor(obs, torch.full((5, 1), 25.0))
    torch.testing.assert_close(loc, 0.75 * l0 + 0.25 * l1)
    torch.testing.assert_close(scale, 0.75 * s0 + 0.25 * s1)
    i1, i2, w1, w2 = eq.combination_weights(torch.full((5, 1), 50.0), EPS_B)
    loc, scale = actor(obs, torch.full((5, 1), 50.0))
    torch.testing.assert_close(loc, eq.linear_combination(l1, l2, w1, w2))
    torch.testing.assert_close(scale, eq.linear_combination(s1, s2, w1, w2))
    loc, scale = actor(obs, torch.full((5, 1), 70.0))  # above 60: the eps = 60 policy
    assert torch.equal(loc, l2) and torch.equal(scale, s2)
    loc, _ = actor(obs, torch.full((5, 1), 10.0))
    assert torch.equal(loc, l0)
    assert torch.all(loc.abs() <= 1.0)


def test_combined_actor_extrapolates_the_mean_linearly_clipped_to_the_box_and_keeps_the_end_std():
    actor = _actor(extrapolation="linear")
    with torch.no_grad():  # large means, so that the extrapolation leaves the box on some rows
        for p in actor.policies:
            p.mu.weight.mul_(20.0)
    obs = torch.randn(64, 3)
    (l0, s0), (l1, s1), (l2, s2) = (p(obs) for p in actor.policies)
    loc, scale = actor(obs, torch.full((64, 1), 70.0))
    expected = (-0.5 * l1 + 1.5 * l2).clamp(-1.0, 1.0)
    torch.testing.assert_close(loc, expected)
    assert (-0.5 * l1 + 1.5 * l2).abs().max() > 1.0  # the clip was needed on some rows
    assert torch.equal(scale, s2)  # the nearest end policy's standard deviation
    loc, scale = actor(obs, torch.full((64, 1), 10.0))
    torch.testing.assert_close(loc, (1.5 * l0 - 0.5 * l1).clamp(-1.0, 1.0))
    assert torch.equal(scale, s0)
    loc, scale = actor(obs, torch.full((64, 1), 25.0))  # inside the range: as with nearest
    nearest = _actor(extrapolation="nearest")
    nearest.load_state_dict(actor.state_dict())
    n_loc, n_scale = nearest(obs, torch.full((64, 1), 25.0))
    assert torch.equal(loc, n_loc) and torch.equal(scale, n_scale)


def test_combined_actor_mixes_thresholds_within_a_batch_and_broadcasts():
    actor = _actor()
    obs = torch.randn(4, 3)
    eps = torch.tensor([[20.0], [60.0], [30.0], [40.0]])
    loc, _ = actor(obs, eps)
    for row, e in enumerate(eps.view(-1).tolist()):
        torch.testing.assert_close(loc[row], actor(obs[row:row + 1], torch.tensor([[e]]))[0][0])
    # a leading threshold dim against a batch of states, as the evaluation and CCPO use it
    loc_grid, _ = actor(obs, torch.tensor([20.0, 40.0]).view(2, 1, 1))
    assert loc_grid.shape == (2, 4, 2)
    assert torch.equal(loc_grid[1], actor.policies[1](obs)[0])


def test_combination_weights_index_is_searchsorted_on_a_grid_with_the_thresholds():
    eps = torch.cat([torch.linspace(0.0, 80.0, 161), EPS_B])  # includes every behaviour threshold exactly
    i1, _, _, _ = eq.combination_weights(eps, EPS_B)
    want = (torch.searchsorted(EPS_B, eps.clamp(20.0, 60.0), right=True) - 1).clamp(0, 1)
    assert torch.equal(i1, want)


def test_combined_actor_forward_all_policies_equals_forward_and_a_trace_holds_for_any_thresholds():
    actor = _actor()
    obs = torch.randn(9, 3)
    eps = torch.tensor([5.0, 20.0, 25.0, 40.0, 45.0, 59.0, 60.0, 65.0, 80.0]).view(9, 1)
    with torch.no_grad():
        dense = actor.forward_all_policies(obs, eps)
        for a, b in zip(dense, actor(obs, eps)):  # the networks run on other row subsets: float rounding only
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        traced = torch.jit.trace(actor, (obs[:2], torch.tensor([[20.0], [20.0]])), check_trace=False)
        for rows in (slice(0, 9), slice(4, 5), slice(1, 7)):  # other batch sizes and thresholds than traced
            for a, b in zip(traced(obs[rows], eps[rows]), actor(obs[rows], eps[rows])):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_combined_actor_loss_at_eps_i_reaches_only_policy_i():
    actor = _actor()
    loc, scale = actor(torch.randn(6, 3), torch.full((6, 1), 40.0))
    (loc.sum() + scale.sum()).backward()
    grads = [sum(float(p.grad.abs().sum()) for p in pol.parameters() if p.grad is not None)
             for pol in actor.policies]
    assert grads[0] == 0.0 and grads[2] == 0.0 and grads[1] > 0.0


def test_combined_actor_rejects_unsorted_thresholds():
    with pytest.raises(ValueError, match="strictly increasing"):
        CombinedActor(3, 2, [8], [40.0, 20.0])


def test_standardise_per_threshold_by_group():
    x = torch.tensor([1.0, 3.0, 10.0, 10.0, 7.0])
    idx = torch.tensor([0, 0, 1, 1, 2])
    out = eq.standardise_per_threshold(x, idx, 3)
    # group 0: mean 2, std sqrt(2); group 1: constant (std floored); group 2: one element, only centred
    assert out.tolist() == pytest.approx([-1 / 2**0.5, 1 / 2**0.5, 0.0, 0.0, 0.0])


def test_lagrangian_advantage_raising_lam_lowers_the_reward_share():
    adv_r, adv_c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    low = eq.lagrangian_advantage(adv_r, adv_c, torch.tensor(0.5))
    high = eq.lagrangian_advantage(adv_r, adv_c, torch.tensor(3.0))
    assert low.tolist() == pytest.approx([1 / 1.5, -0.5 / 1.5]) and high.tolist() == pytest.approx([0.25, -0.75])
    assert high[0] < low[0] and high[1] < low[1]  # reward share 1/(1+lam) falls, cost share lam/(1+lam) rises
    assert eq.lagrangian_advantage(adv_r, adv_c, torch.tensor(0.0)).tolist() == [1.0, 0.0]  # lam = 0: plain PPO


def test_mean_per_threshold_gives_each_group_its_own_mean():
    x = torch.tensor([1.0, 3.0, 5.0, 2.0])
    assert eq.mean_per_threshold(x, torch.tensor([0, 0, 2, 2]), 3).tolist() == [2.0, 0.0, 3.5]


def _ppo_batch(actor, lam, seed=1):
    """A fixed batch of 6 transitions at the three behaviour thresholds: action a from pi_old, A_r, A_c given."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(6, 3, generator=g)
    eps = EPS_B.repeat(2).view(6, 1)
    with torch.no_grad():
        loc, scale = actor(obs, eps)
        action = loc + scale * torch.randn(6, 2, generator=g)
        log_prob_old = diag_normal_log_prob(action, loc, scale)
    adv_r, adv_c = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.0, -1.0]), torch.tensor([2.0, 1.0, -1.0, 0.5, 1.5, 0.0])
    idx = actor.threshold_index(eps)
    adv = eq.lagrangian_advantage(adv_r, adv_c, lam[idx])
    return TensorDict({"observation": obs, "eps": eps, "action": action, "advantage": adv.unsqueeze(-1),
                       "log_prob_old": log_prob_old}, batch_size=[6]), adv, log_prob_old, idx


def test_clip_ppo_loss_is_the_clipped_surrogate_of_the_combined_advantage():
    """TorchRL's ClipPPOLoss on the combined actor, given our advantage, equals eq. (7) per transition."""
    actor = _actor()
    td, adv, log_prob_old, _ = _ppo_batch(actor, torch.tensor([0.0, 1.0, 4.0]))
    with torch.no_grad():  # move the policies, so that some ratios leave the clip range
        for p in actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    loss = ClipPPOLoss(make_policy(actor), None, clip_epsilon=0.2, entropy_bonus=False, critic_coeff=None,
                       normalize_advantage=False, reduction="none", functional=False)
    loss.set_keys(sample_log_prob="log_prob_old", advantage="advantage")
    out = loss(td)
    loc, scale = actor(td["observation"], td["eps"])
    expected = eq.clipped_surrogate(diag_normal_log_prob(td["action"], loc, scale), log_prob_old, adv, 0.2)
    torch.testing.assert_close(-out["loss_objective"].view(-1), expected)
    assert float(out["clip_fraction"]) > 0  # the clip is exercised, not only the ratio


def test_clipped_surrogate_gradient_turns_against_cost_as_lam_rises():
    """On a transition with A_r > 0 and A_c > 0, the policy-gradient step raises pi(a|s) for lam = 0 and lowers
    it for a large lam (the documented sign behaviour of the combined advantage)."""
    actor = _actor()
    for lam, sign in ((0.0, 1.0), (4.0, -1.0)):
        td, adv, log_prob_old, idx = _ppo_batch(actor, torch.full((3,), lam))
        row = 3  # eps 20, A_r = 0.3, A_c = 0.5
        loc, scale = actor(td["observation"][row:row + 1], td["eps"][row:row + 1])
        log_prob = diag_normal_log_prob(td["action"][row:row + 1], loc, scale)
        surr = eq.clipped_surrogate(log_prob, log_prob_old[row:row + 1], adv[row:row + 1], 0.2).sum()
        grads = torch.autograd.grad(surr, list(actor.parameters()), allow_unused=True)
        step = [0.0 if g is None else g for g in grads]
        with torch.no_grad():  # a small ascent step on the surrogate
            for p, g in zip(actor.parameters(), step):
                p.add_(1e-2 * g)
            loc2, scale2 = actor(td["observation"][row:row + 1], td["eps"][row:row + 1])
            new = diag_normal_log_prob(td["action"][row:row + 1], loc2, scale2)
            for p, g in zip(actor.parameters(), step):
                p.sub_(1e-2 * g)
        assert sign * float(new - log_prob.detach()) > 0


def test_importance_surrogate_gradient_is_the_policy_gradient_at_theta_old():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    adv = torch.tensor([0.5, -2.0])
    surr = eq.importance_surrogate(logp, logp.detach(), adv).sum()
    (grad,) = torch.autograd.grad(surr, logp)
    assert grad.tolist() == adv.tolist()  # d/dlogp of exp(logp - logp_old) A at logp = logp_old is A


def test_clipped_surrogate_by_hand():
    logp_old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # A > 0: min(r, clip(r)) -> 1.2, 0.5;  A < 0: min(-r, -clip(r)) -> -1.5, -0.8
    assert eq.clipped_surrogate(logp, logp_old, adv, 0.2).tolist() == pytest.approx([1.2, 0.5, -1.5, -0.8])


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    sa, sb = torch.rand(5, 2, generator=g) + 0.2, torch.rand(5, 2, generator=g) + 0.2
    torch.testing.assert_close(eq.gaussian_kl(a, sa, b, sb), diag_normal_kl(a, sa, b, sb))
    assert torch.all(eq.gaussian_kl(a, sa, a, sa).abs() < 1e-6)
