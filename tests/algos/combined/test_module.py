"""C-PPO-Lag / C-TRPO-Lag modules: each policy learns only from its own threshold's transitions, the multipliers
follow J_c per threshold, TRPO keeps its KL bound; then smoke fits through `fit`, reloaded and evaluated at an
unseen threshold."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from ccpo_pl.algos.combined import equations as eq
from ccpo_pl.algos.combined.actor import CombinedActor
from ccpo_pl.algos.combined.module import CPPOLag, CTRPOLag
from ccpo_pl.algos.onpolicy import diag_normal_log_prob
from ccpo_pl.checkpointing import safe_load
from ccpo_pl.evaluation import evaluate_run, evaluate_thresholds, load_policy
from ccpo_pl.fit import fit
from ccpo_pl.nets import ValueCritic, make_policy

EPS_B = [20.0, 40.0, 60.0]
BASE = dict(eps_behavior=EPS_B, eps_range=(10, 70), eps_bin=5, eps_eval=[10], horizon=10, total_frames=100,
            minibatch_size=16, lagrange={"method": "gradient", "lr": 0.1})


def _module(cls, **kw):
    torch.manual_seed(0)
    m = cls(CombinedActor(3, 2, [16], EPS_B), ValueCritic(3, [8], (10, 70)), **BASE, **kw)
    # just enough of a trainer for the policy step: one process, no logger
    m._trainer = SimpleNamespace(world_size=1)
    opt = torch.optim.Adam(m.actor.parameters(), lr=1e-2)
    m.optimizer = lambda i: opt
    m.log_update = lambda *a, **k: None
    return m


def _data(actor, eps_values, n=48, seed=0):
    """A flat collection as `onpolicy.advantages` returns it, with pi_old = the current actor."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 3, generator=g)
    eps = torch.tensor(eps_values).repeat(n // len(eps_values)).view(n, 1)
    with torch.no_grad():
        loc, scale = actor(obs, eps)
        action = loc + scale * torch.randn(n, 2, generator=g)
    return TensorDict({"observation": obs, "eps": eps, "action": action, "loc_old": loc, "scale_old": scale,
                       "log_prob_old": diag_normal_log_prob(action, loc, scale),
                       "adv_r": torch.randn(n, generator=g), "adv_c": torch.randn(n, generator=g)}, batch_size=[n])


def _snapshot(actor):
    return [[p.detach().clone() for p in pol.parameters()] for pol in actor.policies]


def _moved(before, actor):
    return [any(not torch.equal(a, p) for a, p in zip(b, pol.parameters())) for b, pol in zip(before, actor.policies)]


@pytest.mark.parametrize("cls", [CPPOLag, CTRPOLag])
def test_policy_update_moves_only_the_policy_of_the_data_threshold(cls):
    m = _module(cls)
    before = _snapshot(m.actor)
    loss = m.policy_update(_data(m.actor, [40.0]), torch.tensor(EPS_B))
    assert loss is not None and torch.isfinite(loss)
    assert _moved(before, m.actor) == [False, True, False]


@pytest.mark.parametrize("cls", [CPPOLag, CTRPOLag])
def test_multipliers_follow_each_thresholds_episode_cost(cls):
    m = _module(cls)
    m.policy_update(_data(m.actor, EPS_B), torch.tensor([30.0, 40.0, 50.0]))  # 10 over, at, 10 under
    assert m.lagrange.lam.tolist() == pytest.approx([1.0, 0.0, 0.0])  # gradient rule, lr 0.1, clamped at 0


def test_trpo_step_respects_the_kl_bound_and_improves_the_surrogate():
    m = _module(CTRPOLag, target_kl=0.01)
    data = _data(m.actor, EPS_B, n=96)
    idx = m.actor.threshold_index(data["eps"])
    adv = eq.lagrangian_advantage(eq.standardise_per_threshold(data["adv_r"], idx, 3),
                                  data["adv_c"] - eq.mean_per_threshold(data["adv_c"], idx, 3)[idx], torch.zeros(96))
    m.policy_update(data, torch.tensor(EPS_B))  # J_c = eps: lam stays 0, the advantage is the one above
    kl = m.kl_per_threshold(data, idx)
    with torch.no_grad():
        loc, scale = m.actor(data["observation"], data["eps"])
        surr = eq.importance_surrogate(diag_normal_log_prob(data["action"], loc, scale), data["log_prob_old"], adv)
    assert torch.all(kl <= 0.01) and torch.all(kl > 0)
    assert torch.all(eq.mean_per_threshold(surr, idx, 3) > eq.mean_per_threshold(adv, idx, 3))  # gain over theta_old


def test_ppo_stops_a_policy_whose_kl_exceeds_the_target():
    """With a huge step size the first pass overshoots 1.5 target_kl: every policy stops after one epoch."""
    m = _module(CPPOLag, ppo_epochs=5, target_kl=1e-4)
    opt = torch.optim.SGD(m.actor.parameters(), lr=10.0)
    m.optimizer = lambda i: opt
    stats = {}
    m.log_update = lambda scalars, per_behavior: stats.update(per_behavior)
    m.policy_update(_data(m.actor, EPS_B), torch.tensor(EPS_B))
    assert stats["ppo_epochs"].tolist() == [1.0, 1.0, 1.0] and torch.all(stats["kl"] > 1.5e-4)


def test_clip_per_policy_scales_each_policy_on_its_own():
    from ccpo_pl.algos.combined.module import clip_per_policy

    p = [torch.zeros(2), torch.zeros(1), torch.zeros(2)]
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.1]), torch.tensor([0.0, 10.0])]
    clip_per_policy(grads, p, [[p[0], p[1]], [p[2]]], max_norm=1.0)
    norm0 = float(torch.cat(grads[:2]).norm())
    assert norm0 == pytest.approx(1.0, rel=1e-5) and float(grads[2].norm()) == pytest.approx(1.0, rel=1e-5)
    small = [torch.tensor([0.3])]
    clip_per_policy(small, small, [small], max_norm=1.0)
    assert small[0].item() == pytest.approx(0.3)  # below the bound: unchanged


@pytest.mark.parametrize("algo", ["c_ppo_lag", "c_trpo_lag"])
def test_smoke_fit_then_evaluate_at_an_unseen_threshold(tmp_path, algo, smoke_config, tb_values):
    metrics = fit(smoke_config(tmp_path, "threads=1", f"algo={algo}", "total_frames=800", "run_name=run"))
    assert metrics["train/frames"] == 800 and math.isfinite(metrics["eval/avg_reward"])
    run = tmp_path / "run"
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    assert ckpt["training_state"]["stream"]["collects"] == 4  # one update per collection
    state = ckpt["state_dict"]
    assert state["lagrange.lam"].shape == (3,) and torch.all(state["lagrange.lam"] >= 0)
    tags = tb_values(run)
    for e in EPS_B:
        assert all(math.isfinite(v) for v in tags[f"update/lam/eps_{e:g}"] + tags[f"update/j_c/eps_{e:g}"])
    assert max(max(tags[f"update/kl/eps_{e:g}"]) for e in EPS_B) > 0  # the policies moved
    assert tags["train/policy_std"] and all(v > 0 for v in tags["train/policy_std"])  # the combined Gaussian's
    actor, cfg = load_policy(run / "checkpoints" / "last.ckpt")
    assert isinstance(actor, CombinedActor) and len(actor.policies) == 3
    obs = torch.randn(4, actor.policies[0].trunk[0].in_features)
    with torch.no_grad():
        assert torch.equal(actor(obs, torch.full((4, 1), 60.0))[0], actor.policies[2](obs)[0])
    reward, cost, _ = evaluate_thresholds(make_policy(actor), cfg["env"], [30.0], 1, seed=0,
                                          max_steps=cfg["env"]["max_episode_steps"])
    assert reward.shape == (1, 1) and torch.isfinite(reward).all() and torch.isfinite(cost).all()
    # outside the behaviour range: the paper's linear rule by default, the nearest end policy on request
    assert actor.extrapolation == "linear"
    linear = evaluate_run(run, eps=[10.0, 70.0], episodes=1, policy="deterministic", out=tmp_path / "linear")
    nearest = evaluate_run(run, eps=[10.0, 70.0], episodes=1, policy="deterministic", out=tmp_path / "nearest",
                           extrapolation="nearest")
    assert linear["label"] == algo and nearest["label"] == f"{algo}-nearest"
    with torch.no_grad():
        near_actor, _ = load_policy(run / "checkpoints" / "last.ckpt")
        near_actor.extrapolation = "nearest"
        assert torch.equal(near_actor(obs, torch.full((4, 1), 70.0))[0], actor.policies[2](obs)[0])
        assert not torch.equal(actor(obs, torch.full((4, 1), 70.0))[0], actor.policies[2](obs)[0])


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_the_combined_policies_identical(tmp_path, ddp_smoke):
    """Each rank collects its own data for every behaviour threshold; the gradients are rank means taken outside
    DDP's hooks (`mean_grads`), so the policies, critics and multipliers stay equal after every update, under DDP
    without its search for unused parameters."""
    out, fields = ddp_smoke(tmp_path, "algo=c_ppo_lag", "total_frames=1600")
    assert int(fields["ddp_sync_checks"]) == 4 and fields["ranks"] == "2"  # 1600 frames / (2 ranks x 200) updates
    assert float(fields["max_param_diff"]) == 0.0
    assert "find_unused_parameters=True" not in out.stdout + out.stderr
    lam = safe_load(tmp_path / "logs" / "smoke" / "ddp" / "checkpoints" / "last.ckpt")["state_dict"]["lagrange.lam"]
    assert lam.shape == (3,) and torch.isfinite(lam).all()
