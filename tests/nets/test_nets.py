"""The eps-conditioned networks: VVE's psi^T z form, broadcasting over thresholds, the actor's bounds."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type

from ccpo_pl.nets import (
    EpsActor,
    EpsPolicy,
    PlainCritic,
    VVECritic,
    eps_features,
    make_critic,
    make_policy,
    normalise_eps,
)

OBS, ACT, RANGE = 5, 2, (10.0, 70.0)


def test_normalise_eps_maps_range_to_unit_interval():
    e = normalise_eps(torch.tensor([10.0, 40.0, 70.0, 100.0]), RANGE)
    assert torch.allclose(e, torch.tensor([-1.0, 0.0, 1.0, 2.0]))


def test_eps_features_are_powers():
    e = torch.tensor([[0.5], [-2.0]])
    assert torch.equal(eps_features(e, 3), torch.tensor([[1.0, 0.5, 0.25, 0.125], [1.0, -2.0, 4.0, -8.0]]))


@pytest.mark.parametrize("shared", [True, False])
def test_vve_q_is_a_degree_p_polynomial_of_eps(shared):
    """Slides eq. (3) with polynomial z: for a fixed (s, a), Q(e) has vanishing (p+1)-th finite differences."""
    torch.manual_seed(0)
    critic = VVECritic(OBS, ACT, [32, 32], RANGE, "poly", degree=2, shared_trunk=shared).double()
    obs, act = torch.randn(7, OBS).double(), torch.randn(7, ACT).double()
    eps = torch.linspace(10, 70, 6).double().view(-1, 1, 1)
    q_r, q_c = critic(obs, act, eps)  # [6, 7]
    for q in (q_r, q_c):
        assert torch.diff(q, n=2, dim=0).abs().max() > 1e-6  # really depends on eps (degree 2) ...
        assert torch.diff(q, n=3, dim=0).abs().max() < 1e-9  # ... and no more than degree 2


@pytest.mark.parametrize("critic_cls", [VVECritic, PlainCritic])
def test_critic_broadcasts_over_thresholds_like_a_loop(critic_cls):
    torch.manual_seed(1)
    critic = critic_cls(OBS, ACT, [32, 32], RANGE)
    obs, act = torch.randn(9, OBS), torch.randn(9, ACT)
    eps = torch.tensor([15.0, 40.0, 65.0])
    q_r, q_c = critic(obs, act, eps.view(-1, 1, 1))
    assert q_r.shape == q_c.shape == (3, 9)
    for i, e in enumerate(eps):
        r, c = critic(obs, act, e.expand(9, 1))
        assert torch.allclose(q_r[i], r, atol=1e-6) and torch.allclose(q_c[i], c, atol=1e-6)
    # E-step layout: states [E, S, 1, obs] against K sampled actions [E, S, K, act]
    q_r, _ = critic(obs[:4].expand(3, 4, OBS).unsqueeze(2), torch.randn(3, 4, 6, ACT), eps.view(-1, 1, 1, 1))
    assert q_r.shape == (3, 4, 6)


def test_plain_critic_reads_eps_as_an_input():
    torch.manual_seed(2)
    critic = PlainCritic(OBS, ACT, [32, 32], RANGE)
    obs, act = torch.randn(4, OBS), torch.randn(4, ACT)
    a, _ = critic(obs, act, torch.full((4, 1), 20.0))
    b, _ = critic(obs, act, torch.full((4, 1), 60.0))
    assert not torch.allclose(a, b)


def test_actor_mean_is_bounded_and_scale_clamped():
    torch.manual_seed(3)
    actor = EpsActor(OBS, ACT, [32, 32], RANGE, log_std_min=-3.0, log_std_max=0.5)
    with torch.no_grad():
        actor.mu.bias.fill_(50.0)
        actor.log_std.bias.fill_(-50.0)
    loc, scale = actor(100 * torch.randn(16, OBS), torch.full((16, 1), 30.0))
    assert loc.shape == scale.shape == (16, ACT)
    assert loc.abs().max() <= 1.0 and torch.allclose(scale, torch.full_like(scale, torch.exp(torch.tensor(-3.0))))


def test_policy_reads_eps_and_is_the_mean_when_deterministic():
    torch.manual_seed(4)
    actor = EpsActor(OBS, ACT, [32, 32], RANGE)
    policy = make_policy(actor)
    td = TensorDict({"observation": torch.randn(8, OBS), "eps": torch.full((8, 1), 20.0)}, [8])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        low = policy(td.clone())["action"]
        high = policy(td.clone().set("eps", torch.full((8, 1), 60.0)))["action"]
    assert torch.allclose(low, actor(td["observation"], td["eps"])[0])
    assert not torch.allclose(low, high)  # the threshold conditions the action
    with set_exploration_type(ExplorationType.RANDOM):
        sampled = policy(td.clone())["action"]
    assert not torch.allclose(sampled, low)


def test_eps_policy_is_the_probabilistic_actors_policy():
    """The collectors' `EpsPolicy`: make_policy's mean when deterministic (also outside any exploration context),
    and draws with the same mean and std per dimension under RANDOM."""
    torch.manual_seed(5)
    actor = EpsActor(OBS, ACT, [32, 32], RANGE)
    with torch.no_grad():
        actor.log_std.bias.fill_(-1.0)
    n = 20_000
    td = TensorDict({"observation": torch.randn(1, OBS).expand(n, OBS), "eps": torch.full((n, 1), 35.0)}, [n])
    lean, reference = EpsPolicy(actor), make_policy(actor)
    assert lean.in_keys == ["observation", "eps"] and lean.out_keys == ["action"]
    with torch.no_grad():
        loc, scale = actor(td["observation"][:1], td["eps"][:1])
        assert torch.allclose(lean(td.clone())["action"], loc.expand(n, ACT), atol=1e-6)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            assert torch.equal(lean(td.clone())["action"], reference(td.clone())["action"])
        with set_exploration_type(ExplorationType.RANDOM):
            draws = lean(td.clone())["action"]
            ref = reference(td.clone())["action"]
    for actions in (draws, ref):  # 4 standard errors of the mean and of the std
        assert torch.allclose(actions.mean(0), loc[0], atol=4 * float(scale.max()) / n**0.5)
        assert torch.allclose(actions.std(0), scale[0], rtol=4 / (2 * n) ** 0.5)


def _critic_cfg(**changes):
    return OmegaConf.create({"vve": True, "hidden": [16, 16], "critic_trunk": "shared",
                             "z": {"kind": "poly", "degree": 2, "feature_dim": 4}, **changes})


def test_make_critic_builds_the_critic_algo_vve_names():
    torch.manual_seed(0)
    assert isinstance(make_critic(_critic_cfg(), OBS, ACT, RANGE), VVECritic)  # parameter names as in checkpoints
    assert isinstance(make_critic(_critic_cfg(vve=False), OBS, ACT, RANGE), PlainCritic)
