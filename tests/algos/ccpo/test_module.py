"""The CCPO module's steps on synthetic data (no env, no Trainer): TD targets, the eps schedule, the M-step."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from tensordict import TensorDict

from ccpo_pl.algos.ccpo import equations as eq
from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.algos.common import polyak
from ccpo_pl.algos.registry import build
from ccpo_pl.training_log import per_eps_tag

OBS, ACT, B = 3, 2, 64


class _OneProcess:
    world_size = 1


@pytest.fixture(scope="session")
def make_module(compose_config):
    """`make_module(*overrides, total_frames=1000)`: a small CCPO module, its optimizers and a one-process
    trainer stand-in."""
    return functools.partial(_make_module, compose_config)


def _make_module(compose_config, *overrides: str, total_frames: int = 1000):
    cfg = compose_config("algo.hidden=[32,32]", "algo.compile=false", *overrides)
    torch.manual_seed(0)
    module = build(cfg, OBS, ACT, eps_behavior=list(cfg.eps.behavior), eps_range=list(cfg.eps.range),
                   eps_bin=cfg.eps.bin, eps_eval=list(cfg.eps.eval), horizon=200, total_frames=total_frames)
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers
    module.manual_backward = lambda loss: loss.backward()
    module._trainer = _OneProcess()
    return module


def constant_cost_batch(terminated: bool) -> TensorDict:
    obs = torch.randn(B, OBS)
    return TensorDict({
        "observation": obs, "action": torch.rand(B, ACT) * 2 - 1, "eps": torch.full((B, 1), 40.0),
        "next": {"observation": obs, "reward": torch.zeros(B, 1), "cost": torch.ones(B, 1),
                 "terminated": torch.full((B, 1), terminated)},
    }, [B])


@pytest.mark.parametrize(("terminated", "expected"), [(False, 1 / (1 - 0.5)), (True, 1.0)])
def test_critic_step_learns_the_known_cost_value_for_every_eps(terminated, expected, make_module):
    """Cost 1 per step: Q_c = 1/(1-gamma) when the time limit only truncates (bootstrap), 1 when it terminates."""
    module = make_module("algo.gamma=0.5", "algo.tau=0.2", "algo.lr_critic=3e-3")
    batch = constant_cost_batch(terminated)
    eps = torch.tensor([10.0, 40.0, 70.0])
    for _ in range(600):
        module.critic_step(batch, eps)
        polyak(module.critic_target, module.critic, module.hparams.tau)
    q_r, q_c = module.critic(batch["observation"], batch["action"], torch.tensor([15.0, 55.0]).view(-1, 1, 1))
    assert q_c.mean().item() == pytest.approx(expected, abs=0.1)
    assert q_r.abs().max().item() < 0.1


def random_batch() -> TensorDict:
    return TensorDict({
        "observation": torch.randn(B, OBS), "action": torch.rand(B, ACT) * 2 - 1, "eps": torch.full((B, 1), 40.0),
        "next": {"observation": torch.randn(B, OBS), "reward": torch.rand(B, 1), "cost": torch.rand(B, 1),
                 "terminated": torch.rand(B, 1) < 0.1},
    }, [B])


def test_compiled_update_matches_the_eager_one(make_module):
    """`algo.compile=true` fuses the update's objectives (TD loss, E-step, M-step): same update as eager, to float
    rounding (the E-step's bfloat16 Q values are switched off so that both run in float32; the dual's Newton
    iterations amplify the reordered float32 sums of the fused kernels to ~1e-4 relative)."""
    eager, compiled = (make_module("algo.estep_precision=fp32", f"algo.compile={c}") for c in ("false", "true"))
    compiled.load_state_dict(eager.state_dict())
    batch = random_batch()
    eps = torch.tensor([20.0, 40.0, 60.0, 33.0])
    for module in (eager, compiled):
        torch.manual_seed(7)
        with warnings.catch_warnings():  # the compiled pass must not fall back to eager
            warnings.filterwarnings("error", message="torch.compile failed")
            for _ in range(3):
                module.on_new_collect()
                assert module.cvi_update(batch, eps, module.bin_index(eps)) is not None
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, rtol=2e-3, atol=1e-5), name
    assert not torch.equal(eager.actor.state_dict()["mu.weight"], make_module().actor.state_dict()["mu.weight"])


def test_an_update_starts_from_cleared_gradients(make_module):
    """`cvi_update` clears the gradients of every trained parameter before its backward: gradients left behind
    (stale ones here) change nothing."""
    clean, stale = make_module("algo.estep_precision=fp32"), make_module("algo.estep_precision=fp32")
    trained = {id(p) for p in stale.parameters() if p.requires_grad}
    assert {id(p) for p in stale.trained_parameters} == trained and len(stale.trained_parameters) == len(trained)
    for p in stale.trained_parameters:
        p.grad = torch.randn_like(p)
    batch, eps = random_batch(), torch.tensor([20.0, 40.0, 60.0, 33.0])
    for module in (clean, stale):
        module.on_new_collect()
        torch.manual_seed(7)
        assert module.cvi_update(batch, eps, module.bin_index(eps)) is not None
    for (name, a), b in zip(clean.state_dict().items(), stale.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("penalty", [0.0, 0.01])
def test_one_backward_through_both_losses_is_the_update_of_a_critic_step_then_the_e_and_m_steps(make_module, penalty):
    """`cvi_update` against the sequential algorithm written out: critic step (own backward), then the E-step on the
    target critic and pi_old (with the action penalty's objective added where it is on), the M-step objective and
    the actor step (own backward), then the KL multipliers."""
    args = ("algo.estep_precision=fp32", f"algo.action_penalty={penalty}")
    fused, sequential = make_module(*args), make_module(*args)
    batch = random_batch()
    eps = torch.tensor([20.0, 40.0, 60.0, 33.0])
    bins = fused.bin_index(eps)
    for module in (fused, sequential):
        module.on_new_collect()
        module.alpha_mu[bins] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # non-zero trust-region terms
        module.alpha_sigma[bins] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.manual_seed(7)
    fused.cvi_update(batch, eps, bins)

    m, hp = sequential, sequential.hparams
    torch.manual_seed(7)
    m.critic_step(batch, eps)  # draws the next-action noise first, as cvi_update does
    states = m.split_states(batch["observation"], len(eps))
    noise = torch.randn(*states.shape[:2], hp.num_samples, hp.act_dim)
    actions, weights, eta, lam, eta_pen, loc_old, scale_old, q_means = m.estep(
        states, eps, noise, m.eta[bins], m.lam[bins], m.c_gap[bins], m.c_gap_n[bins], m.eta_pen[bins])
    if penalty:  # the task's weights (rows summing to 1) plus the penalty's
        q_pen = -(actions - actions.clamp(-1.0, 1.0)).norm(dim=-1)
        eta_pen_alone = eq.solve_penalty_temperature(q_pen, penalty, m.eta_pen[bins], iters=hp.dual["iters"])
        assert torch.allclose(eta_pen, eta_pen_alone) and not torch.allclose(eta_pen, m.eta_pen[bins])
        assert torch.allclose(weights.sum(-1), torch.full_like(weights[..., 0], 2.0))
    else:
        assert torch.equal(eta_pen, m.eta_pen[bins])
    loss, kl_mu, kl_sigma = m.mstep_objective(states, eps.view(-1, 1, 1), actions, weights, loc_old, scale_old,
                                              m.alpha_mu[bins], m.alpha_sigma[bins])
    m.optimizer_step(m.optimizers()[1], loss)
    alpha_mu = eq.kl_multiplier_update(m.alpha_mu[bins], kl_mu.detach(), hp.kl_mean_bound, hp.kl_lr[0],
                                       hp.kl_max[0])

    for (name, a), b in zip(fused.critic.state_dict().items(), m.critic.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), f"critic {name}"
    for (name, a), b in zip(fused.actor.state_dict().items(), m.actor.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), f"actor {name}"
    assert not torch.equal(fused.actor.state_dict()["mu.weight"], make_module().actor.state_dict()["mu.weight"])
    assert torch.allclose(fused.eta[bins], eta) and torch.allclose(fused.lam[bins], lam)
    assert torch.allclose(fused.eta_pen[bins], eta_pen)
    assert torch.allclose(fused.alpha_mu[bins], alpha_mu)
    # the first batch of each bin is its running cost gap: this batch's mean Q_c minus eps in Q units
    assert torch.equal(fused.c_gap_n[bins], torch.ones(4))
    assert torch.allclose(fused.c_gap[bins], q_means[1] - eq.eps_to_q_units(eps, hp.gamma, hp.horizon))


def test_a_state_dict_without_the_running_cost_gap_loads_with_no_batch_averaged(make_module):
    """Checkpoints written before the running cost gap and the action penalty existed load strictly, with the gap's
    and the penalty temperature's initial state."""
    old, new = make_module(), make_module()
    new.c_gap.fill_(3.0), new.c_gap_n.fill_(7.0), new.eta_pen.fill_(5.0)
    state = {k: v for k, v in old.state_dict().items() if k not in ("c_gap", "c_gap_n", "eta_pen")}
    with pytest.raises(RuntimeError, match="c_gap"):
        new.load_state_dict(dict(state))
    new.fill_state_defaults(state)
    new.load_state_dict(state)
    assert (new.c_gap == 0).all() and (new.c_gap_n == 0).all()
    assert (new.eta_pen == new.hparams.dual["eta_init"]).all()


def test_lam_at_cap_is_logged_per_bin_as_the_share_of_updates_since_the_last_log(monkeypatch, make_module):
    module = make_module()
    solve = eq.track_estep_dual
    calls = {"n": 0}

    def capped_first(*args, **kwargs):  # the first threshold's lam at its cap in every other update
        eta, lam = solve(*args, **kwargs)
        calls["n"] += 1
        return eta, torch.cat([lam[:1] * 0 + (kwargs["lam_max"] if calls["n"] % 2 else 0.0), lam[1:] * 0])

    monkeypatch.setattr(eq, "track_estep_dual", capped_first)
    module.on_new_collect()
    eps = torch.tensor([20.0, 40.0, 60.0, 33.0])
    for _ in range(4):
        module.cvi_update(random_batch(), eps, module.bin_index(eps))
    metrics = module.per_eps_metrics()
    share = dict(zip([per_eps_tag(name, e) for name in metrics for e in module.eps_bins],
                     torch.cat([col for col in metrics.values()]).tolist()))
    assert share["estep/lam_at_cap/eps_20"] == 0.5
    assert share["estep/lam_at_cap/eps_40"] == share["estep/lam_at_cap/eps_35"] == 0.0  # 33 is in bin 35
    assert share["estep/lam_at_cap/eps_10"] == 0.0  # no update
    assert share["multipliers/lam/eps_20"] == 0.0 and "estep/cost_gap/eps_20" in share
    module.on_metrics_logged()
    assert (module.per_eps_metrics()["estep/lam_at_cap"] == 0).all()


def test_bin_index_is_the_nearest_bin_and_the_lower_one_on_ties(make_module):
    module = make_module("eps.behavior=[20,42,60]")  # 42: a bin off the 5-wide grid
    bins = torch.tensor(module.eps_bins)
    assert 42.0 in module.eps_bins
    eps = torch.cat([torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 100 - 15,
                     (bins[1:] + bins[:-1]) / 2, bins])  # out of range, the ties, the bins themselves
    nearest = (eps[:, None] - bins[None]).abs().argmin(-1)  # argmin returns the first (lower) bin on a tie
    assert torch.equal(module.bin_index(eps), nearest)


def test_thresholds_are_behaviour_ones_before_the_versatile_stage_then_drawn_from_the_range(monkeypatch, make_module):
    frames = {"now": 0}
    monkeypatch.setattr(CCPO, "global_frames", property(lambda self: frames["now"]))
    module = make_module("algo.n_eps=4", "algo.versatile_start=0.5", "algo.versatile_frac=0.5", total_frames=1000)
    twin = make_module("algo.n_eps=4", "algo.versatile_start=0.5", "algo.versatile_frac=0.5", total_frames=1000)
    early = torch.stack([module.sample_train_eps() for _ in range(50)])
    assert set(early.unique().tolist()) <= {20.0, 40.0, 60.0}
    assert all(len(set(row.tolist())) == 3 for row in early)  # all three behaviour thresholds every update
    frames["now"] = 600  # past versatile_start * total_frames
    late = torch.stack([module.sample_train_eps() for _ in range(200)])
    versatile = late[:, 2:]
    assert set(late[:, :2].unique().tolist()) <= {20.0, 40.0, 60.0}
    assert versatile.min() >= 10.0 and versatile.max() <= 70.0 and versatile.std() > 10.0
    # the sampler depends on the seed only (identical on every DDP rank), not on the global torch RNG
    frames["now"] = 0
    torch.manual_seed(123)
    twin_draws = [twin.sample_train_eps() for _ in range(50)]
    frames["now"] = 600
    twin_draws += [twin.sample_train_eps() for _ in range(200)]
    assert torch.equal(torch.stack(twin_draws), torch.cat([early, late]))


def test_cvi_update_keeps_duals_in_bounds_and_moves_the_policy_within_the_trust_region(make_module):
    module = make_module()
    module.on_new_collect()
    batch = random_batch()
    eps = torch.tensor([20.0, 40.0, 60.0, 33.0])
    bins = module.bin_index(eps)
    before = [p.clone() for p in module.actor.parameters()]
    for _ in range(5):
        module.cvi_update(batch, eps, bins)
    assert torch.all(module.eta[bins] > 0) and torch.all(module.lam[bins] >= 0)
    assert torch.all(module.alpha_mu >= 0) and torch.all(module.alpha_sigma >= 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.actor.parameters()))
    assert torch.all(module.stats[bins, 2] < 1.0)  # KL(mean) stays small after a few steps


class _ConstantCostCritic(torch.nn.Module):
    """Q_r = 0 and Q_c = `cost` for every action (kept differentiable in the action)."""

    cost = 0.0

    def forward(self, obs, act, eps):
        zero = act.sum(-1) * 0.0
        return zero, zero + self.cost


@pytest.mark.parametrize(("method", "expected"), [("gradient", [1.0, 3.0, 3.5]), ("pid", [3.0, 11.0, 4.5])])
def test_wo_cvi_multipliers_follow_the_selected_lagrange_rule(method, expected, make_module):
    """Q_c above the Q-unit threshold by 2, 4, 1. Gradient (lr 0.5): 0+1, 1+2, 3+0.5. PID (kp 1, ki 0.5, kd 2):
    2+1+0, 4+3+2*2, 1+3.5+0 (the first step has no derivative term)."""
    module = make_module("algo.cvi=false", f"algo.lagrange.method={method}", "algo.lagrange.lr=0.5",
                         "algo.lagrange.pid={kp: 1.0, ki: 0.5, kd: 2.0}")
    module.critic = _ConstantCostCritic()
    eps = torch.tensor([40.0])
    bins = module.bin_index(eps)
    eps_q = float(eq.eps_to_q_units(eps, module.hparams.gamma, module.hparams.horizon))
    seen = []
    for above in (2.0, 4.0, 1.0):
        module.critic.cost = eps_q + above
        module.lagrangian_step(torch.randn(1, 8, OBS), eps, bins)
        seen.append(module.lam[bins].item())
    assert seen == pytest.approx(expected, rel=1e-5)
    assert module.lam[module.bin_index(torch.tensor([20.0]))].item() == 0.0  # other bins untouched


@pytest.mark.parametrize("cvi", [True, False])
def test_ddp_searches_for_unused_parameters_exactly_when_a_backward_leaves_some(cvi, make_module):
    """`ddp_unused_parameters` (DDP's `find_unused_parameters`, `fit.make_trainer`) is False only if every
    backward of an update gives every trained parameter a gradient: the CVI update's one backward does, the
    w/o-CVI ablation's critic step (the actor only acts inside `no_grad`) does not."""
    module = make_module("algo.estep_precision=fp32", f"algo.cvi={str(cvi).lower()}")
    trained = [p for p in module.parameters() if p.requires_grad]
    left_some = []

    def backward(loss):
        for p in trained:
            p.grad = None
        loss.backward()
        left_some.append(any(p.grad is None for p in trained))

    module.manual_backward = backward
    batch, eps = random_batch(), torch.tensor([20.0, 40.0, 60.0, 33.0])
    module.on_new_collect()
    update = module.cvi_update if cvi else module.lagrangian_update
    assert update(batch, eps, module.bin_index(eps)) is not None
    assert len(left_some) == (1 if cvi else 2)
    assert module.ddp_unused_parameters is any(left_some) is (not cvi)


def test_measured_episode_costs_replace_the_critic_gap_of_the_dual_at_behaviour_thresholds(monkeypatch, make_module):
    """With `episode_cost_decay` the dual is solved with the critic's running gap plus the correction that makes it,
    at each behaviour threshold, the gap its training episodes measured (in Q units), and between them the critic's
    gap plus the interpolated difference; off (0), with the critic's gap alone."""
    module = make_module("algo.episode_cost_decay=0.5", "algo.dual.gap_decay=1e-6")
    hp = module.hparams
    seen = {}

    def spy(*args, **kwargs):
        seen["c_gap"] = kwargs["c_gap"]
        return solve(*args, **kwargs)

    solve = eq.solve_estep_dual
    monkeypatch.setattr(eq, "solve_estep_dual", spy)
    # two collections: at 20 / 40 / 60 mean costs (2+4)/2 = 3, 30 (one collection), 90 / 60 -> (70+90)/2 = 80
    module.on_training_episodes(torch.tensor([[2.0, 0.0, 4.0], [0.0, 0.0, 0.0], [2.0, 0.0, 140.0]]))
    module.on_training_episodes(torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 30.0], [1.0, 0.0, 90.0]]))
    assert torch.allclose(module.ep_cost, torch.tensor([2.0, 30.0, 80.0]))
    assert module.ep_cost_n.tolist() == [2.0, 1.0, 2.0]
    # warm critic gaps (a batch then moves them by a weight of 1e-6): 1 at every bin
    module.c_gap.fill_(1.0), module.c_gap_n.fill_(1e9)
    module.on_new_collect()
    eps = torch.tensor([20.0, 40.0, 60.0, 50.0])
    module.cvi_update(random_batch(), eps, module.bin_index(eps))
    measured = eq.eps_to_q_units(torch.tensor([2.0 - 20, 30.0 - 40, 80.0 - 60]), hp.gamma, hp.horizon)
    assert torch.allclose(seen["c_gap"][:3], measured, atol=1e-4)
    assert seen["c_gap"][3].item() == pytest.approx(1.0 + ((measured[1] - 1) + (measured[2] - 1)).item() / 2, abs=1e-4)
    off = make_module("algo.dual.gap_decay=1e-6")
    off.on_training_episodes(torch.tensor([[2.0, 0.0, 4.0], [0.0, 0.0, 0.0], [2.0, 0.0, 140.0]]))
    assert (off.ep_cost_n == 0).all() and off.gap_offset(eps) is None
    off.c_gap.fill_(1.0), off.c_gap_n.fill_(1e9)
    off.on_new_collect()
    off.cvi_update(random_batch(), eps, off.bin_index(eps))
    assert torch.allclose(seen["c_gap"], torch.ones(4), atol=1e-4)  # the critic's gap alone
