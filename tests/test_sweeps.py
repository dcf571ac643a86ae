"""Sweeps through Hydra's submitit launcher: `submitit_local` runs the jobs the way `submitit_slurm` submits them to
SLURM (one process per job, its own working directory for the launcher's logs), so a sweep tried here runs on a
cluster by changing the launcher's name and its resources."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ccpo_pl.checkpointing import safe_load


@pytest.mark.slow
def test_a_two_job_sweep_through_the_submitit_launcher_trains_both_runs(tmp_path):
    logs = tmp_path / "logs"
    done = subprocess.run(
        [sys.executable, "-m", "ccpo_pl.fit", "-m", "hydra/launcher=submitit_local", "seed=0,1", "experiment=smoke",
         "threads=1", "total_frames=400", "collect.collects_per_epoch=1", f"log_dir={logs}"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    params = []
    for seed in (0, 1):
        ckpt = safe_load(logs / f"ball_circle-ccpo-s{seed}" / "checkpoints" / "last.ckpt")
        assert ckpt["hyper_parameters"]["run_config"]["seed"] == seed
        assert ckpt["training_state"]["stream"]["frames"] == 400
        params.append(ckpt["state_dict"]["actor.trunk.0.weight"])
    assert not params[0].equal(params[1])  # two jobs, two seeds
    jobs = sorted(p.name for p in (logs / "multirun").iterdir() if p.is_dir())
    assert jobs == [".submitit", "0", "1"]  # the launcher's logs and each job's folder


def test_an_unknown_launcher_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ccpo_pl.fit", "-m", "hydra/launcher=submitit_slrm", "seed=0,1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["ccpo_pl.fit: error: unknown hydra/launcher 'submitit_slrm'; allowed: basic, "
                                        "submitit_local, submitit_slurm"]
    assert list(tmp_path.iterdir()) == []
