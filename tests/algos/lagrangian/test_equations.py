"""V-SAC-Lag / V-DDPG-Lag equations against hand computations and reference distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform
from torchrl.modules import TanhNormal

from ccpo_pl.algos.lagrangian import equations as eq


def test_squashed_gaussian_rsample_matches_torch_tanh_transform():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g) * 2
    scale = torch.rand(5, 3, generator=g) + 0.1
    noise = torch.randn(5, 3, generator=g)
    action, log_prob = eq.squashed_gaussian_rsample(mu, scale, noise)
    u = mu + scale * noise
    assert torch.allclose(action, torch.tanh(u))
    ref = TransformedDistribution(Normal(mu.double(), scale.double()), [TanhTransform()])
    assert torch.allclose(log_prob.double(), ref.log_prob(torch.tanh(u.double())).sum(-1), atol=1e-4)
    # TorchRL's TanhNormal on [-1, 1] (what the collection policy samples from) has the same density
    torchrl_ref = TanhNormal(mu.double(), scale.double(), upscale=1.0, safe_tanh=False)
    assert torch.allclose(log_prob.double(), torchrl_ref.log_prob(torch.tanh(u.double())), atol=1e-4)


def test_squashed_gaussian_log_prob_stays_finite_where_tanh_saturates():
    mu, scale, noise = torch.tensor([[30.0, -30.0]]), torch.ones(1, 2), torch.zeros(1, 2)
    _, log_prob = eq.squashed_gaussian_rsample(mu, scale, noise)
    # log(1 - tanh(u)^2) = log 4 - 2|u| - 2 log(1 + e^{-2|u|}) ~ log 4 - 60 per dim: the naive form gives -inf
    expected = 2 * (-0.5 * math.log(2 * math.pi)) - 2 * (math.log(4.0) - 60.0)
    assert torch.isfinite(log_prob).all()
    assert log_prob.item() == pytest.approx(expected, rel=1e-5)


def test_squashed_gaussian_rsample_is_reparameterised():
    mu = torch.zeros(4, 2, requires_grad=True)
    scale = torch.full((4, 2), 0.5, requires_grad=True)
    action, log_prob = eq.squashed_gaussian_rsample(mu, scale, torch.ones(4, 2))
    (action.sum() + log_prob.sum()).backward()
    assert mu.grad.abs().sum() > 0 and scale.grad.abs().sum() > 0


def test_td_target_hand_computed_and_truncation_bootstraps():
    reward = torch.tensor([1.0, 2.0, 0.5])
    terminated = torch.tensor([False, True, False])
    value_next = torch.tensor([10.0, 10.0, -4.0])
    y = eq.td_target(reward, terminated, 0.9, value_next)
    assert torch.allclose(y, torch.tensor([1.0 + 9.0, 2.0, 0.5 - 3.6]))


def test_sac_reward_target_hand_computed():
    # y = r + gamma (min(Q1', Q2') - alpha log pi(a'|s')) with Q1' = 5, Q2' = 7, log pi = -1, alpha = 0.5
    q_min = torch.minimum(torch.tensor([5.0]), torch.tensor([7.0]))
    v = eq.soft_state_value(q_min, torch.tensor([-1.0]), 0.5)
    assert v.item() == pytest.approx(5.5)
    y = eq.td_target(torch.tensor([1.0]), torch.tensor([False]), 0.97, v)
    assert y.item() == pytest.approx(1.0 + 0.97 * 5.5)


def _grad_shares(lam: float) -> tuple[float, float]:
    """d loss / d Q_r and d loss / d Q_c of one transition's Lagrangian actor loss."""
    q_r = torch.tensor([2.0], requires_grad=True)
    q_c = torch.tensor([3.0], requires_grad=True)
    eq.lagrangian_actor_loss(q_r, q_c, torch.tensor([lam])).sum().backward()
    return q_r.grad.item(), q_c.grad.item()


def test_lagrangian_actor_loss_raising_lam_shifts_gradient_from_reward_to_cost():
    shares = [_grad_shares(lam) for lam in (0.0, 1.0, 4.0)]
    for lam, (g_r, g_c) in zip((0.0, 1.0, 4.0), shares):
        assert g_r == pytest.approx(-1.0 / (1.0 + lam))  # the (1 + lam) rescaling
        assert g_c == pytest.approx(lam / (1.0 + lam))
    reward_share = [abs(g_r) for g_r, _ in shares]
    cost_share = [g_c for _, g_c in shares]
    assert reward_share[0] > reward_share[1] > reward_share[2]
    assert cost_share[0] < cost_share[1] < cost_share[2]


def test_lagrangian_actor_loss_value_and_per_transition_lam():
    q_r = torch.tensor([2.0, 2.0])
    q_c = torch.tensor([3.0, 3.0])
    log_prob = torch.tensor([-1.0, -1.0])
    loss = eq.lagrangian_actor_loss(q_r, q_c, torch.tensor([0.0, 1.0]), log_prob, 0.2)
    assert torch.allclose(loss, torch.tensor([(-0.2 - 2.0) / 1.0, (-0.2 - 2.0 + 3.0) / 2.0]))


def test_lagrangian_actor_loss_sign_of_action_gradient_flips_with_lam():
    # One action a per state, Q_r = a and Q_c = 2a (more reward and more cost for larger a): the loss gradient in a
    # is (-1 + 2 lam) / (1 + lam), so gradient descent raises a below lam = 0.5 and lowers it above.
    a = torch.zeros(3, requires_grad=True)
    directions = []
    for lam in (0.0, 0.4, 0.6, 3.0):
        a.grad = None
        eq.lagrangian_actor_loss(a, 2 * a, torch.full((3,), lam)).mean().backward()
        assert a.grad[0].item() == pytest.approx((-1 + 2 * lam) / (1 + lam) / 3)
        directions.append(-a.grad.sign()[0].item())  # the direction a descent step moves a
    assert directions == [1.0, 1.0, -1.0, -1.0]


def test_lagrangian_actor_loss_uses_lam_and_alpha_detached():
    lam = torch.tensor([1.0], requires_grad=True)
    alpha = torch.tensor(0.5, requires_grad=True)
    loss = eq.lagrangian_actor_loss(torch.tensor([1.0]), torch.tensor([1.0]), lam, torch.tensor([-1.0]), alpha)
    assert not loss.requires_grad


@pytest.mark.parametrize("log_prob, direction", [(2.0, 1.0), (-3.0, -1.0)])
def test_temperature_loss_raises_alpha_when_entropy_below_target(log_prob, direction):
    # target entropy -1: entropy -log pi = -2 is below it (alpha must rise), entropy 3 above it (alpha must fall)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    loss = eq.temperature_loss(log_alpha, torch.full((4,), log_prob), target_entropy=-1.0)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(-(log_prob - 1.0))
    assert -torch.sign(log_alpha.grad).item() == direction  # a descent step moves log alpha this way
    assert loss.item() == pytest.approx(0.0)  # log alpha = 0
