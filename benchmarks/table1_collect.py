"""Copy paper_table1 runs into `benchmarks/table1/<task>-s<seed>/`, the committed results of the CCPO Table 1 campaign.

For every run directory given (a `python -m ccpo_pl.fit experiment=paper_table1` run, e.g.
`logs/paper_table1/ball_circle-ccpo-s0`) it writes into `benchmarks/table1/<task>-s<seed>/` (a run with a `label=`
other than its algorithm's name, a variant: `<task>-<label>-s<seed>/`, resumed with the overrides in its
`commands.txt`):
- `last.ckpt`: the run's last checkpoint without its replay-buffer sidecar, with the absolute paths Lightning
  stores in the callbacks' state made relative (it loads, evaluates and resumes as before);
- `config.yaml` and `commands.txt` of the run;
- `learning_curve.png`: the periodic evaluation's Avg. R / Avg. CV and the behaviour thresholds' training episode
  reward and cost against frames, from the run's TensorBoard events;
- a finished run only (frames >= total_frames): its final evaluation `eval/{summary.json, per_eps.csv,
  per_episode.csv, table.md, curves.png}`, made here by `evaluate_run` on the copied checkpoint (10 episodes per
  threshold of the run's `eps.eval`, deterministic and stochastic, seed = the run's seed).
An unfinished run keeps only the checkpoint, so a lost machine costs its replay buffer, not the run: resume it
with `python -m ccpo_pl.fit experiment=paper_table1 env=<task> seed=<seed> threads=1
ckpt_path=benchmarks/table1/<task>-s<seed>/last.ckpt` (an empty buffer and fresh RNG streams; the frames count on).
Then `benchmarks/table1/STATUS.md` lists every collected run with its frames against its budget.

    uv run --locked python benchmarks/table1_collect.py logs/paper_table1/*-s*

Last line: `runs=<n> finished=<n> unfinished=<n>`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path

import torch
from _common import REPO, log
from matplotlib.figure import Figure

from ccpo_pl.checkpointing import safe_load, training_state
from ccpo_pl.evaluation import evaluate_run

TABLE1 = REPO / "benchmarks" / "table1"


def relative_paths(value, root: str):
    """`value` with every string under `root` (an absolute directory) made relative to it, recursively."""
    if isinstance(value, str) and value.startswith(root + os.sep):
        return value[len(root) + 1:]
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relative_paths(v, root) for v in value)
    return value


def learning_curve(run_dir: Path, title: str) -> bytes | None:
    """PNG of Avg. R / Avg. CV of the periodic evaluations and the training episodes against frames (None: no
    events)."""
    from ccpo_pl.tb_runs import read_scalars

    scalars = read_scalars(run_dir / "tb")  # flat tags, also from the per-threshold runs tb/eps_<eps>/
    tags = list(scalars)
    if "eval/avg_reward" not in tags:
        return None
    series = lambda tag: ([s for s, _ in scalars[tag]], [v for _, v in scalars[tag]])  # noqa: E731
    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    ax_r, ax_c = fig.subplots(1, 2)
    ax_r.plot(*series("eval/avg_reward"), color="k", linewidth=2, label="Avg. R (eval grid, deterministic)")
    ax_c.plot(*series("eval/avg_cv"), color="k", linewidth=2, label="Avg. CV (eval grid, deterministic)")
    for i, tag in enumerate(sorted(t for t in tags if t.startswith("train/") and t.endswith("/episode_reward"))):
        name = tag.split("/")[1]
        ax_r.plot(*series(tag), color=f"C{i}", alpha=0.6, label=f"training episodes {name}")
        ax_c.plot(*series(tag.replace("episode_reward", "episode_cost")), color=f"C{i}", alpha=0.6,
                  label=f"training episode cost {name}")
    for ax, name in ((ax_r, "reward"), (ax_c, "cost and CV")):
        ax.set_xlabel("environment frames")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()


def collect(run_dir: Path) -> tuple[str, int, int]:
    """Copy one run; returns (its folder name, frames, budget)."""
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    cfg = ckpt["hyper_parameters"]["run_config"]
    state = training_state(ckpt)
    frames = int(state["stream"]["frames"]) * int(state["world_size"])
    budget = int(cfg["total_frames"])
    label = cfg.get("label") or cfg["algo"]["name"]
    variant = "" if label == cfg["algo"]["name"] else f"{label}-"  # a labelled variant keeps its own folder
    name = f"{cfg['env']['name']}-{variant}s{cfg['seed']}"
    dest = TABLE1 / name
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(relative_paths(ckpt, str(Path.cwd().resolve())), dest / ".last.ckpt.tmp")
    os.replace(dest / ".last.ckpt.tmp", dest / "last.ckpt")
    for file in ("config.yaml", "commands.txt"):
        if (run_dir / file).is_file():
            shutil.copyfile(run_dir / file, dest / file)
    png = learning_curve(run_dir, f"{cfg['env']['id']} CCPO seed {cfg['seed']}: {frames} of {budget} frames")
    if png is not None:
        (dest / "learning_curve.png").write_bytes(png)
    if frames >= budget:
        log(f"{name}: finished ({frames} frames); evaluating")
        evaluate_run(dest / "last.ckpt", episodes=10, seed=int(cfg["seed"]), out=dest / "eval", policy="both")
    else:
        log(f"{name}: unfinished ({frames} of {budget} frames); checkpoint only")
    return name, frames, budget


def write_status() -> None:
    """`benchmarks/table1/STATUS.md`: every collected run, its frames against its budget, and how to resume it."""
    lines = ["# Table 1 campaign: collected runs", "",
             "Written by `benchmarks/table1_collect.py`. A finished run has `eval/`; an unfinished one resumes with",
             "`python -m ccpo_pl.fit experiment=paper_table1 env=<task> seed=<seed> threads=1 "
             "ckpt_path=benchmarks/table1/<task>-s<seed>/last.ckpt`.", "",
             "| run | frames | budget | status |", "|---|---:|---:|---|"]
    for dest in sorted(p for p in TABLE1.iterdir() if (p / "last.ckpt").is_file()):
        ckpt = safe_load(dest / "last.ckpt")
        state = training_state(ckpt)
        frames = int(state["stream"]["frames"]) * int(state["world_size"])
        budget = int(ckpt["hyper_parameters"]["run_config"]["total_frames"])
        status = "finished, evaluated" if (dest / "eval" / "summary.json").is_file() else "unfinished"
        lines.append(f"| {dest.name} | {frames:,} | {budget:,} | {status} |")
    (TABLE1 / "STATUS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="paper_table1 run directories")
    args = parser.parse_args()
    results = [collect(run) for run in args.runs]
    write_status()
    finished = sum(frames >= budget for _, frames, budget in results)
    print(f"runs={len(results)} finished={finished} unfinished={len(results) - finished}")


if __name__ == "__main__":
    main()
