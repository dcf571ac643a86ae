"""How long until the default command's policy reaches the CCPO paper's BallCircle quality?

Target (the paper's Table 1, CCPO on BallCircle): Avg. R >= 710.86 and Avg. CV <= 0.59 over the 13-threshold grid
`eps.eval`, deterministic policy (mean action), 10 episodes per threshold.

Trains `python -m ccpo_pl.fit` (the default config, as a user runs it: a subprocess, start-up included) in a
temporary log dir up to the last frame mark, keeping a checkpoint at every mark (`checkpoint.every_epochs`); the wall
time of a mark is the time from the command's start until its checkpoint was written (training, periodic
evaluation and checkpointing included). Then evaluates each mark's checkpoint in order (not counted in the wall
time) and stops at the first that meets the target.

    uv run --locked python benchmarks/time_to_quality.py [seed=S] [marks=100000,150000,...] [hydra overrides]

Last line: frames=<n> wall_s=<s> avg_reward=<r> avg_cv=<c> seed=<s> met=<true|false>, for the first mark that
meets the target, or the last mark if none does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, commit, compose_cfg, log

from ccpo_pl.evaluation import evaluate_run

PAPER_AVG_R, PAPER_AVG_CV = 710.86, 0.59  # CCPO, BallCircle, the paper's Table 1
DEFAULT_MARKS = tuple(range(100_000, 600_001, 50_000))


def parse(argv: list[str]) -> tuple[int, list[int], list[str]]:
    """(seed, frame marks, the other Hydra overrides)."""
    seed, marks, rest = 0, list(DEFAULT_MARKS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "seed":
            seed = int(value)
        elif key == "marks":
            marks = sorted(int(m) for m in value.split(","))
        else:
            rest.append(arg)
    return seed, marks, rest


def mark_epochs(marks: list[int], frames_per_epoch: int) -> int:
    """The checkpoint period in epochs that lands on every mark (the marks are multiples of it)."""
    step = marks[0] if len(marks) == 1 else min(b - a for a, b in zip(marks, marks[1:]))
    if step % frames_per_epoch or any(m % step for m in marks):
        raise SystemExit(f"marks={marks} must be multiples of one step that is a multiple of {frames_per_epoch} "
                         f"frames (an epoch)")
    return step // frames_per_epoch


def main(argv: list[str]) -> None:
    seed, marks, overrides = parse(argv)
    with tempfile.TemporaryDirectory() as log_dir:
        run = Path(log_dir) / "ttq"
        common = [f"seed={seed}", f"log_dir={log_dir}", "run_name=ttq", *overrides]
        cfg = compose_cfg(common, [])
        frames_per_epoch = cfg.collect.frames_per_collect * cfg.collect.collects_per_epoch
        every = mark_epochs(marks, frames_per_epoch)
        cmd = [sys.executable, "-m", "ccpo_pl.fit", *common, f"total_frames={marks[-1]}", "eval.final_episodes=0",
               f"checkpoint.every_epochs={every}"]
        log(f"benchmark: time to quality, seed={seed}, marks={marks}: {' '.join(cmd[1:])}")
        start = time.time()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        rows = []
        for frames in marks:
            ckpt = run / "checkpoints" / f"epoch{frames // frames_per_epoch - 1:04d}.ckpt"
            wall = ckpt.stat().st_mtime - start
            out = Path(log_dir) / f"eval-{frames}"
            evaluate_run(ckpt, eps=list(cfg.eps.eval), episodes=10, seed=seed, out=out, policy="deterministic")
            summary = json.loads((out / "summary.json").read_text())
            row = {"frames": frames, "wall_s": round(wall, 1), "avg_reward": round(summary["avg_reward"], 2),
                   "avg_cv": round(summary["avg_cv"], 3), "seed": seed}
            row["met"] = str(row["avg_reward"] >= PAPER_AVG_R and row["avg_cv"] <= PAPER_AVG_CV).lower()
            rows.append(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            if row["met"] == "true":
                break
    log(f"commit={commit()} target: avg_reward>={PAPER_AVG_R} avg_cv<={PAPER_AVG_CV} (deterministic, 13 thresholds)")
    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()))


if __name__ == "__main__":
    main(sys.argv[1:])
