"""Run directories written by an earlier version (tests/fixtures/checkpoints_main) resume and evaluate with this one."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.evaluation import evaluate_run, load_policy
from ccpo_pl.fit import CONF_DIR, fit

DATA = Path(__file__).resolve().parent / "fixtures" / "checkpoints_main"
RUNS = {"ccpo": "ball_circle-ccpo-s0", "v_sac_lag": "ball_circle-v_sac_lag-s0",
        "c_ppo_lag": "ball_circle-c_ppo_lag-s0", "cpo": "ball_circle-cpo-s0"}
EMPTY_BUFFER = "resuming with an empty buffer"


def make_cfg(log_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"log_dir={log_dir}", "threads=1", *overrides])


def observations(sidecar: dict) -> torch.Tensor:
    storage = sidecar["buffer"]["_storage"]
    return storage["_storage"]["observation"][: int(storage["_len"])]


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_an_earlier_versions_run_resumes_with_its_sidecar_and_evaluates(algo, tmp_path):
    run_dir = tmp_path / RUNS[algo]
    shutil.copytree(DATA / RUNS[algo], run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = safe_load(ckpt)
    assert before["ccpo"]["stream"]["frames"] == 1600
    actor, cfg = load_policy(DATA / RUNS[algo] / "checkpoints" / "last.ckpt")  # read in place, never written
    assert cfg["algo"]["name"] == algo and sum(p.numel() for p in actor.parameters()) > 0
    old = evaluate_run(ckpt, eps=[10, 40], episodes=1, out=tmp_path / "eval_before")
    assert old["frames"] == 1600 and math.isfinite(old["avg_reward"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(make_cfg(tmp_path, f"algo={algo}", f"run_name={RUNS[algo]}", "total_frames=2000", f"ckpt_path={ckpt}"))
    sidecar_warnings = [str(w.message) for w in caught if EMPTY_BUFFER in str(w.message)]
    after = safe_load(ckpt)
    assert after["training_state"]["stream"]["frames"] == 2000 and after["epoch"] == before["epoch"] + 1
    assert "ccpo" not in after  # rewritten under the current key
    assert after["hyper_parameters"]["run_config"]["algo"]["name"] == algo
    if algo == "ccpo":  # its sidecar came along: the buffer holds the earlier run's 1600 transitions, then 400 new
        assert not sidecar_warnings
        old_buffer = observations(safe_load(DATA / RUNS[algo] / "checkpoints" / "sidecars" / "rank0"
                                            / f"{before['ccpo']['sidecar']}.pt"))
        new_buffer = observations(safe_load(run_dir / "checkpoints" / "sidecars" / "rank0"
                                            / f"{after['training_state']['sidecar']}.pt"))
        assert new_buffer.shape[0] == 2000 and torch.equal(new_buffer[:1600], old_buffer)
    else:  # written without a sidecar: resumed with an empty buffer, said once
        assert len(sidecar_warnings) == 1 and "no replay-buffer sidecar" in sidecar_warnings[0]

    new = evaluate_run(run_dir, eps=[10, 40], episodes=1)
    assert new["frames"] == 2000 and math.isfinite(new["avg_reward"])
    assert (run_dir / "eval" / "summary.json").is_file()
