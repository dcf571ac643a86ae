"""Smoke fits of the baselines and ablations through `ccpo_pl.fit.fit` (the real config, `experiment=smoke`):
each writes a checkpoint whose policy `load_policy` rebuilds and evaluates at an unseen threshold, and whose
multipliers were driven by the run."""

from __future__ import annotations

import math

import pytest
import torch

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.evaluation import evaluate_thresholds, load_policy
from ccpo_pl.fit import fit
from ccpo_pl.nets import make_policy

UNSEEN = 25.0  # not a behaviour threshold, not on the smoke evaluation grid
# on experiment=smoke, 2 collections of 200 frames: episodes (200 steps, 2 envs) end in the second, so multipliers
# step once
SMALL = ("total_frames=400", "threads=1", "eps.eval=[10,70]")


@pytest.mark.parametrize("algo", ["v_sac_lag", "v_ddpg_lag", "cvpo", "ccpo_wo_vve", "ccpo_wo_cvi"])
def test_smoke_fit_checkpoint_policy_and_multipliers(tmp_path, algo, smoke_config, tb_values):
    cfg = smoke_config(tmp_path, f"algo={algo}", *SMALL)
    metrics = fit(cfg)
    assert cfg.label == algo and cfg.run_name == f"ball_circle-{algo}-s0"  # the named config's own name
    run_dir = tmp_path / cfg.run_name
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    assert metrics["train/frames"] == 400 and math.isfinite(metrics["eval/avg_reward"])

    actor, run_cfg = load_policy(ckpt_path)
    assert run_cfg["algo"]["name"] == algo
    reward, cost, _ = evaluate_thresholds(make_policy(actor), run_cfg["env"], [UNSEEN], 1, seed=0,
                                       max_steps=int(run_cfg["env"]["max_episode_steps"]))
    assert torch.isfinite(reward).all() and (cost >= 0).all()

    ckpt = safe_load(ckpt_path)
    state = ckpt["state_dict"]
    sidecar = safe_load(run_dir / "checkpoints" / "sidecars" / "rank0" / f"{ckpt['training_state']['sidecar']}.pt")
    storage = sidecar["buffer"]["_storage"]
    collected = set(storage["_storage"]["eps"][: int(storage["_len"])].view(-1).tolist())
    # the episodes were collected under the behaviour thresholds; CVPO's only under its own threshold (the middle one)
    if algo == "cvpo":
        assert collected == {40.0}
    else:
        assert collected and collected <= {float(e) for e in cfg.eps.behavior}
    if algo.startswith("v_"):  # one multiplier per behaviour threshold, stepped on episode costs
        assert state["multipliers.lam"].shape == (len(cfg.eps.behavior),)
        started = state["multipliers.started"]
        assert started.any()  # a threshold that finished an episode was stepped
        assert torch.all(state["multipliers.prev_cost"] >= 0)
        # one PID step from lam_init = 0 on the measured episode cost J_c: lam rose where J_c exceeded the threshold
        # and stayed at 0 where it did not
        over = state["multipliers.prev_cost"] > torch.tensor([float(e) for e in cfg.eps.behavior])
        assert cfg.algo.lagrange.method == "pid" and cfg.algo.lagrange.lam_init == 0.0
        assert torch.equal((state["multipliers.lam"] > 0)[started], over[started])
    else:  # CCPO family: per-threshold-bin duals lam (E-step, or the Lagrangian of w/o CVI)
        assert torch.all(state["lam"] >= 0) and state["lam"].numel() > 0
    if algo == "ccpo_wo_vve" or algo == "cvpo":
        assert any(k.startswith("critic.q.") for k in state) and not any(k.startswith("critic.psi") for k in state)
    if algo.startswith("v_"):  # per behaviour threshold: lam at every collection, Q means once updates ran
        tags = tb_values(run_dir)
        assert all(f"multipliers/lam/eps_{e:g}" in tags for e in cfg.eps.behavior)
        q_c = [v for e in cfg.eps.behavior for v in tags.get(f"critic/q_c/eps_{e:g}", [])]
        assert q_c and all(math.isfinite(v) for v in q_c)
    spread = tb_values(run_dir).get("train/policy_std")
    if algo == "v_ddpg_lag":  # a deterministic actor (fixed exploration noise): no spread to log
        assert spread is None
    else:  # after each collection, on the first batch's states
        assert spread and all(v > 0 for v in spread)
    if algo == "v_sac_lag":
        assert "log_alpha" in state and state["log_alpha"] != 0  # the temperature was tuned


@pytest.mark.slow
def test_v_sac_lag_ddp_two_cpu_processes_keep_parameters_and_multipliers_identical(tmp_path, ddp_smoke):
    # the multipliers step on episode costs summed over ranks: every rank must hold the same lam (check_sync
    # compares every parameter and buffer after each batch)
    out, fields = ddp_smoke(tmp_path, "algo=v_sac_lag", "total_frames=800")
    assert int(fields["ddp_sync_checks"]) == 80 and float(fields["max_param_diff"]) == 0.0
    assert "find_unused_parameters=True" not in out.stdout + out.stderr  # DDP finds the other optimizers' parameters
    state = safe_load(tmp_path / "logs" / "smoke" / "ddp" / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["multipliers.started"].any()
