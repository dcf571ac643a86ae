"""V-SAC-Lag / V-DDPG-Lag modules: Bellman targets through the real update code (stub networks, hand-computed
answers), threshold bookkeeping, and the actors' evaluation interface."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ccpo_pl.algos.lagrangian import equations as eq
from ccpo_pl.algos.lagrangian.module import VDDPGLag, VSACLag, _no_param_grads
from ccpo_pl.algos.lagrangian.nets import DeterministicEpsActor, SquashedEpsActor, make_squashed_policy
from ccpo_pl.nets import EpsActor, PlainCritic

BASE = dict(eps_behavior=[20, 40, 60], eps_range=[10, 70], eps_bin=5, eps_eval=[10, 40], horizon=200)


class StubCritic(nn.Module):
    """Q_r = w_r * sum(a) + b_r, Q_c = w_c * sum(a) + b_c: known values for any action."""

    def __init__(self, w_r: float, b_r: float, w_c: float, b_c: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w_r, b_r, w_c, b_c]))

    def forward(self, obs: Tensor, act: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        s = act.sum(-1)
        return self.w[0] * s + self.w[1], self.w[2] * s + self.w[3]


def test_ddpg_targets_use_target_actor_and_target_critic():
    actor = DeterministicEpsActor(3, 2, [8], [10, 70], noise_std=0.1)
    module = VDDPGLag(actor, nn.ModuleList([StubCritic(1.0, 0.0, 2.0, 1.0)]), **BASE)
    obs, eps = torch.randn(4, 3), torch.full((4, 1), 40.0)
    with torch.no_grad():
        module.critics_target[0].w.copy_(torch.tensor([3.0, 1.0, 0.5, 0.0]))  # target differs from online
        module.actor_target.mu.bias.fill_(5.0)  # target actor differs from the online one
        v_r, v_c = module.next_values(obs, eps)
    a_target = module.actor_target(obs, eps)[0].sum(-1)
    assert not torch.allclose(a_target, actor(obs, eps)[0].sum(-1))
    assert torch.allclose(v_r, 3.0 * a_target + 1.0) and torch.allclose(v_c, 0.5 * a_target)


def test_sac_targets_min_reward_mean_cost_and_entropy_on_reward_only():
    torch.manual_seed(0)
    actor = SquashedEpsActor(3, 2, [8], [10, 70])
    critics = nn.ModuleList([StubCritic(0.0, 1.0, 0.0, 2.0), StubCritic(0.0, 3.0, 0.0, 4.0)])
    module = VSACLag(actor, critics, act_dim=2, alpha_init=0.5, **BASE)
    obs, eps = torch.randn(4, 3), torch.full((4, 1), 20.0)
    torch.manual_seed(1)
    with torch.no_grad():
        v_r, v_c = module.next_values(obs, eps)
    torch.manual_seed(1)  # the same noise, by hand: log pi of the sampled next action
    mu, scale = actor.pre_tanh(obs, eps)
    _, log_prob = eq.squashed_gaussian_rsample(mu, scale, torch.randn_like(mu))
    assert torch.allclose(v_r, 1.0 - 0.5 * log_prob.detach())  # min(1, 3) - alpha log pi
    assert torch.allclose(v_c, torch.full((4,), 3.0))  # mean(2, 4), no entropy term on the cost side
    assert module.target_entropy == -2.0  # SAC: -act_dim


def test_threshold_index_and_train_eps_relabelling():
    actor = DeterministicEpsActor(3, 2, [8], [10, 70], noise_std=0.1)
    critic = nn.ModuleList([PlainCritic(3, 2, [8], [10, 70])])
    collected = VDDPGLag(actor, critic, **BASE)
    eps = torch.tensor([[20.0], [60.0], [40.0], [59.0]])
    assert collected.threshold_index(eps).tolist() == [0, 2, 1, 2]
    batch = {"eps": eps}
    assert torch.equal(collected.train_eps(batch), eps)
    relabel = VDDPGLag(actor, critic, train_eps="behavior", **BASE)
    torch.manual_seed(0)
    drawn = relabel.train_eps({"eps": torch.full((300, 1), 20.0)})
    assert set(drawn.view(-1).tolist()) == {20.0, 40.0, 60.0}
    with pytest.raises(ValueError, match="train_eps"):
        VDDPGLag(actor, critic, train_eps="versatile", **BASE)


def test_sac_actor_forward_is_eps_actor_forward_and_collection_is_squashed():
    torch.manual_seed(0)
    sac = SquashedEpsActor(3, 2, [16, 16], [10, 70], -5.0, 2.0)
    plain = EpsActor(3, 2, [16, 16], [10, 70], -5.0, 2.0)
    plain.load_state_dict(sac.state_dict())  # what evaluation does with a checkpoint's actor.* weights
    obs, eps = torch.randn(6, 3), torch.full((6, 1), 35.0)
    for got, want in zip(sac(obs, eps), plain(obs, eps)):
        assert torch.allclose(got, want)
    mu, _ = sac.pre_tanh(obs, eps)
    assert torch.allclose(sac(obs, eps)[0], torch.tanh(mu))  # deterministic action = squashed mean
    from tensordict import TensorDict

    td = make_squashed_policy(sac)(TensorDict({"observation": obs * 50, "eps": eps}, [6]))
    assert td["action"].abs().max() < 1.0  # one tanh squash: inside the box, never clipped


def test_ddpg_actor_scale_is_the_exploration_noise():
    actor = DeterministicEpsActor(3, 2, [8], [10, 70], noise_std=0.3)
    loc, scale = actor(torch.randn(5, 3), torch.full((5, 1), 10.0))
    assert loc.abs().max() <= 1.0 and torch.allclose(scale, torch.full((5, 2), 0.3))
    with pytest.raises(ValueError, match="exploration_noise"):
        DeterministicEpsActor(3, 2, [8], [10, 70], noise_std=0.0)


def test_actor_loss_reaches_the_actor_through_frozen_critics():
    actor = DeterministicEpsActor(3, 2, [8], [10, 70], noise_std=0.1)
    critics = nn.ModuleList([PlainCritic(3, 2, [8], [10, 70])])
    module = VDDPGLag(actor, critics, **BASE)
    obs, eps = torch.randn(4, 3), torch.full((4, 1), 40.0)
    with _no_param_grads(module.critics):
        loss, _, _ = module.actor_loss(obs, eps, torch.ones(4))
    loss.backward()
    assert all(p.grad is None for p in critics.parameters())  # no wasted critic weight gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.requires_grad for p in critics.parameters())  # restored for the critic step
