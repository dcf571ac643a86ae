"""CPO / PDO / TRPO / FPO modules: the update on synthetic collections (trust region kept, the constraint value on
b's scale, recovery when infeasible, eq. 16's multiplier, cost shaping), smoke fits through `fit` on the real
config, and 2-process DDP keeping the ranks' parameters identical."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from ccpo_pl.algos.cpo import equations as eq
from ccpo_pl.algos.cpo.module import CPO
from ccpo_pl.algos.onpolicy import diag_normal_kl, diag_normal_log_prob
from ccpo_pl.checkpointing import safe_load
from ccpo_pl.errors import ConfigError
from ccpo_pl.fit import fit
from ccpo_pl.nets import EpsActor, ValueCritic

OBS, ACT, T, D = 3, 2, 50, 25.0
BASE = dict(eps_behavior=[D], eps_range=(10, 70), eps_bin=5, eps_eval=[25], horizon=T, total_frames=100,
            minibatch_size=64, value_epochs=1)


def _module(variant="cpo", **kw):
    torch.manual_seed(0)
    m = CPO(EpsActor(OBS, ACT, [16, 16], (10, 70)), ValueCritic(OBS, [8], (10, 70)), variant=variant, **BASE, **kw)
    m._trainer = SimpleNamespace(world_size=1)  # one process, no logger
    opts = [torch.optim.Adam(m.value.parameters()), *m.policy_optimizers()]
    m.optimizer = lambda i: opts[i]
    m.logged = []
    m.log_update = lambda diag, per_behavior=None: m.logged.append(diag)
    return m


def _data(actor, n=400, seed=0, cost_follows_action=True):
    """A flat collection as `onpolicy.advantages` returns it (pi_old = the current actor). The reward advantage
    grows with the first action dim, the cost advantage with both: reward and constraint partly pull together."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    eps = torch.full((n, 1), D)
    with torch.no_grad():
        loc, scale = actor(obs, eps)
        action = loc + scale * torch.randn(n, ACT, generator=g)
    z = (action - loc) / scale
    return TensorDict({"observation": obs, "eps": eps, "action": action, "loc_old": loc, "scale_old": scale,
                       "log_prob_old": diag_normal_log_prob(action, loc, scale), "adv_r": z[:, 0].clone(),
                       "adv_c": 0.1 * (z[:, 0] + z[:, 1]) if cost_follows_action else torch.zeros(n)}, batch_size=[n])


def _kl_to(m, data):
    with torch.no_grad():
        loc, scale = m.actor(data["observation"], data["eps"])
        return float(diag_normal_kl(data["loc_old"], data["scale_old"], loc, scale).mean())


@pytest.mark.parametrize(("j_c", "case"), [(5.0, 3), (24.9, 2), (25.5, 1), (60.0, 0)])
def test_cpo_update_keeps_the_kl_bound_and_the_constraint(j_c, case):
    """Far below the limit: a TRPO step; just below: a step that gains reward within the linearised budget; just
    above: back onto the boundary; far above: the recovery step. All within KL <= delta, none past max(-c, 0)."""
    m = _module(target_kl=0.01)
    data = _data(m.actor)
    loss = m.policy_update(data, torch.tensor([j_c]))
    log = m.logged[-1]
    assert loss is not None and log["case"] == case
    assert log["step_fraction"] > 0 and _kl_to(m, data) <= 0.01 + 1e-6
    c = (j_c - D) / T  # the constraint value is per step, b's scale
    assert log["c"] == pytest.approx(c, rel=1e-5)  # (J_c is float32)
    assert log["surr_cost_change"] <= max(-c, 0.0) + 1e-9
    if case == 0:
        assert log["surr_cost_change"] < 0 and log["lam"] == 0
    elif case == 1:
        assert log["surr_cost_change"] == pytest.approx(-c, rel=0.2) and log["nu"] > 0  # lands near the boundary
    else:
        assert log["surr_reward_change"] > 0 and (log["nu"] > 0) == (case == 2)


def test_cpo_line_search_rejects_every_step_that_breaks_the_kl_bound(monkeypatch):
    """If every try breaks the KL bound (here: the test sees the KL a million times larger), no step is taken:
    the policy is left exactly as it was and the logged step fraction is 0."""
    m = _module(target_kl=0.01, max_backtracks=3)
    data = _data(m.actor)
    before = [p.detach().clone() for p in m.actor.parameters()]
    accepts = eq.cpo_line_search_accepts
    monkeypatch.setattr(eq, "cpo_line_search_accepts", lambda kl, *a: accepts(kl * 1e6, *a))
    m.policy_update(data, torch.tensor([24.9]))
    assert m.logged[-1]["step_fraction"] == 0.0 and m.logged[-1]["backtracks"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before, m.actor.parameters()))


@pytest.mark.parametrize(("variant", "nu_expected"), [("trpo", 0.0), ("fpo", 50.0)])
def test_penalty_variants_use_their_fixed_nu_and_keep_the_kl_bound(variant, nu_expected):
    m = _module(variant, penalty_nu=nu_expected)
    data = _data(m.actor)
    m.policy_update(data, torch.tensor([60.0]))
    log = m.logged[-1]
    assert log["nu"] == nu_expected and _kl_to(m, data) <= m.target_kl + 1e-6 and log["surr_reward_change"] > 0
    # TRPO follows the reward (and with it the cost, here); FPO with nu = 50 (paper) pushes the cost down
    if variant == "trpo":
        assert log["surr_cost_change"] > 0
    else:
        assert log["surr_cost_change"] < 0


def test_pdo_multiplier_follows_eq_16():
    """nu <- max(0, nu + alpha (J_c - d)), before each step: +alpha*35 then clipped back to 0 after J_c 5."""
    m = _module("pdo", lagrange={"method": "gradient", "lr": 0.01})
    m.policy_update(_data(m.actor), torch.tensor([60.0]))
    assert m.logged[-1]["nu"] == pytest.approx(0.35)
    m.policy_update(_data(m.actor, seed=1), torch.tensor([D - 10.0]))
    assert m.logged[-1]["nu"] == pytest.approx(0.25)
    m.policy_update(_data(m.actor, seed=2), torch.tensor([0.0]))
    assert m.logged[-1]["nu"] == 0.0 and float(m.lagrange.lam[0]) == 0.0


def test_single_threshold_and_variant_are_checked():
    with pytest.raises(ValueError, match="eps.behavior"):
        CPO(EpsActor(OBS, ACT, [8], (10, 70)), ValueCritic(OBS, [8], (10, 70)), **{**BASE, "eps_behavior": [20, 40]})
    with pytest.raises(ValueError, match="variant"):
        CPO(EpsActor(OBS, ACT, [8], (10, 70)), ValueCritic(OBS, [8], (10, 70)), variant="ppo", **BASE)


def _rollout(n_envs=4, steps=60, seed=0):
    """A [envs, steps] collection where a cost occurs whenever obs[0] > 1 (the unsafe region)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n_envs, steps, OBS, generator=g)
    nobs = torch.randn(n_envs, steps, OBS, generator=g)
    cost = (nobs[..., :1] > 1.0).float()
    done = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    done[:, -1] = True
    return TensorDict({"observation": obs, "eps": torch.full((n_envs, steps, 1), D),
                       "action": torch.zeros(n_envs, steps, ACT),
                       "next": {"observation": nobs, "cost": cost, "done": done}}, batch_size=[n_envs, steps])


def test_cost_shaping_adds_a_learned_probability_that_tracks_the_unsafe_region():
    m = _module(cost_shaping=True, shaping={"horizon": 1, "hidden": [32], "lr": 1e-2, "epochs": 150,
                                            "minibatch_size": 4096})
    m.stream = None
    batch = _rollout()
    # horizon 1: the label of state s_t is "cost at step t", i.e. obs'[0] > 1; train the model on obs -> label
    batch["observation"] = batch["next", "observation"].clone()
    shaped = m.cost_signal(batch)
    delta = shaped - batch["next", "cost"]
    assert torch.all(delta > 0) and torch.all(delta < 1)
    unsafe = batch["next", "observation"][..., :1] > 1.0
    assert delta[unsafe].mean() > 0.6 and delta[~unsafe].mean() < 0.2
    assert m.cost_signal(batch) is shaped  # fitted once per collection, then reused (J_c and the advantages)
    assert m._shaping_stats["shaping_positive"] == pytest.approx(float(unsafe.float().mean()))


# ---------------------------------------------------------------- through fit, on the real config
SMALL = ("threads=1", "total_frames=400", "eps.eval=[25]", "algo.value_epochs=2")  # on experiment=smoke

@pytest.mark.parametrize(("algo", "extra", "tags"), [
    ("cpo", [], ["update/case", "update/lam", "update/nu", "update/step_fraction", "update/kl", "train/policy_std",
                 "train/policy_entropy"]),
    ("pdo", [], ["update/multiplier", "update/nu", "update/kl"]),
    ("trpo", [], ["update/kl", "update/surr_reward_change"]),
    ("fpo", ["algo.penalty_nu=5"], ["update/nu", "update/kl"]),
    ("cpo", ["algo.cost_shaping=true"], ["update/case", "update/shaping_loss", "update/shaping_positive"]),
])
def test_smoke_fit_writes_checkpoint_and_finite_update_logs(tmp_path, algo, extra, tags, smoke_config, tb_values):
    cfg = smoke_config(tmp_path, *SMALL, f"algo={algo}", "run_name=run", *extra)
    metrics = fit(cfg)
    run_dir = tmp_path / "run"
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["training_state"]["stream"]["frames"] == 400 and metrics["train/frames"] == 400
    assert math.isfinite(metrics["eval/eps_25/reward"]) and metrics["eval/eps_25/cost"] >= 0
    state = ckpt["state_dict"]
    assert any(k.startswith("actor.") for k in state) and any(k.startswith("value.") for k in state)
    assert any(k.startswith("shaping.") for k in state) == ("algo.cost_shaping=true" in extra)
    logged = tb_values(run_dir)
    for tag in tags:
        assert len(logged[tag]) == 2 and all(math.isfinite(v) for v in logged[tag]), tag
    if algo == "fpo":
        assert logged["update/nu"] == [5.0, 5.0]


def test_fit_refuses_several_behaviour_thresholds(tmp_path, smoke_config):
    with pytest.raises(ConfigError, match=r"eps.behavior=\[20.0, 40.0\] must hold one value"):
        fit(smoke_config(tmp_path, *SMALL, "algo=cpo", "eps.behavior=[20,40]", "run_name=refused"))
    assert not (tmp_path / "refused").exists()  # refused before the run directory is made


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_cpo_parameters_identical(tmp_path, tb_values, ddp_smoke):
    """CPO writes parameters directly: g, b, the Fisher-vector products and the line-search statistics must be
    rank means, or the ranks drift apart (DDPSyncCheck compares every parameter and buffer after each update)."""
    out, fields = ddp_smoke(tmp_path, "algo=cpo", "total_frames=800", "algo.value_epochs=2", "algo.cost_shaping=true",
                            timeout=300)
    assert int(fields["ddp_sync_checks"]) == 2 and fields["ranks"] == "2"  # 800 frames / (2 ranks x 200) updates
    assert float(fields["max_param_diff"]) == 0.0
    assert "find_unused_parameters=True" not in out.stdout + out.stderr  # no backward through DDP: no search
    logged = tb_values(tmp_path / "logs" / "smoke" / "ddp")  # experiment=smoke: log_dir logs/smoke
    assert len(logged["update/case"]) == 2 and any(f > 0 for f in logged["update/step_fraction"])
