"""Does our CPO reproduce the shape of the CPO paper's Figure 1? Learning curves of CPO, PDO and TRPO on a Circle task.

The paper (Achiam et al. 2017, Figure 1, Point-/Ant-Circle): CPO's constraint value approaches the limit and stays
near it (from below), PDO over- or under-corrects, TRPO's cost goes far above the limit (the unconstrained optimum
is infeasible). This script reads the runs of `python -m ccpo_pl.fit experiment=cpo_figure1` (one run directory per
algorithm and seed, TensorBoard scalars `train/eps_<d>/episode_{reward,cost}`: the mean return and true cost C of
the episodes each iteration collected) and writes

- `benchmarks/cpo_figure1.png` (`--out`): return and constraint value against iteration, one line per algorithm
  (mean over seeds), the limit d dashed;
- the same figure as a TensorBoard image (`<log dir>/figure1/`, tag `cpo_figure1`);
- last stdout line, key=value: per algorithm the mean return and cost over the last 10% of iterations and the share
  of the second half's iterations above the limit.

    uv run --locked python benchmarks/cpo_figure1.py [LOG_DIR=logs/cpo_figure1] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import REPO, commit, log  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ccpo_pl.tb_runs import read_scalars  # noqa: E402

ORDER = ("cpo", "pdo", "trpo", "fpo")
COLORS = {"cpo": "tab:blue", "pdo": "tab:orange", "trpo": "tab:green", "fpo": "tab:red"}


def read_run(run_dir: Path) -> dict | None:
    """(algo, env id, limit, seed, iterations, returns, costs) of one run, or None without curves yet."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    limit = float(cfg.eps.behavior[0])
    scalars = read_scalars(run_dir / "tb")  # flat tags, also from the per-threshold runs tb/eps_<eps>/
    tag = f"train/eps_{limit:g}/episode_"
    if f"{tag}reward" not in scalars or f"{tag}cost" not in scalars:
        return None
    rewards = dict(scalars[f"{tag}reward"])
    costs = dict(scalars[f"{tag}cost"])
    frames = sorted(set(rewards) & set(costs))
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    per_iteration = int(cfg.collect.frames_per_collect) * devices
    return {"algo": str(cfg.algo.name), "task": str(cfg.env.id), "limit": limit, "seed": int(cfg.seed),
            "iteration": np.array([round(f / per_iteration) for f in frames]),
            "reward": np.array([rewards[f] for f in frames]), "cost": np.array([costs[f] for f in frames])}


def mean_curves(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds, on the iterations every seed has."""
    common = sorted(set.intersection(*(set(r["iteration"].tolist()) for r in runs)))
    pick = lambda r, key: np.array([r[key][r["iteration"] == i][0] for i in common])  # noqa: E731
    return (np.array(common), np.mean([pick(r, "reward") for r in runs], 0),
            np.mean([pick(r, "cost") for r in runs], 0))


def summary(it: np.ndarray, reward: np.ndarray, cost: np.ndarray, limit: float) -> dict[str, float]:
    last = max(1, math.ceil(0.1 * len(it)))
    half = cost[len(cost) // 2:]
    return {"return": float(reward[-last:].mean()), "cost": float(cost[-last:].mean()),
            "violation_frac": float((half > limit).mean()) if len(half) else float("nan")}


def plot(curves: dict[str, tuple], limit: float, task: str, seeds: dict[str, int]):
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    for algo, (it, reward, cost) in curves.items():
        label = f"{algo.upper()} ({seeds[algo]} seed{'s' if seeds[algo] > 1 else ''})"
        ax_r.plot(it, reward, color=COLORS.get(algo), label=label)
        ax_c.plot(it, cost, color=COLORS.get(algo), label=label)
    ax_c.axhline(limit, color="black", linestyle="--", label=f"limit d = {limit:g}")
    ax_r.set(title=f"{task}: average return", xlabel="iteration", ylabel="episode return")
    ax_c.set(title="constraint value (true cost C)", xlabel="iteration", ylabel="episode cost")
    ax_r.legend()
    ax_c.legend()
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", nargs="?", default="logs/cpo_figure1")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "cpo_figure1.png"))
    args = parser.parse_args(argv)
    log_dir = Path(args.log_dir)
    runs = [r for d in sorted(log_dir.iterdir()) if (d / "config.yaml").is_file() and (d / "tb").is_dir()
            if (r := read_run(d)) is not None] if log_dir.is_dir() else []
    if not runs:
        sys.exit(f"cpo_figure1: no runs with curves under {str(log_dir)!r}; run python -m ccpo_pl.fit "
                 f"experiment=cpo_figure1 first")
    limits, tasks = {r["limit"] for r in runs}, {r["task"] for r in runs}
    if len(limits) > 1 or len(tasks) > 1:
        sys.exit(f"cpo_figure1: runs under {str(log_dir)!r} mix limits {sorted(limits)} or tasks {sorted(tasks)}")
    limit, task = limits.pop(), tasks.pop()
    by_algo: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_algo[r["algo"]].append(r)
    algos = sorted(by_algo, key=lambda a: ORDER.index(a) if a in ORDER else len(ORDER))
    curves = {a: mean_curves(by_algo[a]) for a in algos}
    seeds = {a: len(by_algo[a]) for a in algos}
    fig = plot(curves, limit, task, seeds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir / "figure1")) as writer:
        writer.add_figure("cpo_figure1", fig, global_step=int(max(c[0].max() for c in curves.values())))
    log(f"cpo_figure1: wrote {args.out} and {log_dir / 'figure1'} from {len(runs)} runs")
    fields = [f"bench=cpo_figure1 task={task} limit={limit:g}"]
    for a in algos:
        s = summary(*curves[a], limit)
        fields.append(f"{a}_return={s['return']:.1f} {a}_cost={s['cost']:.1f} "
                      f"{a}_violation_frac={s['violation_frac']:.2f} {a}_iterations={len(curves[a][0])} "
                      f"{a}_seeds={seeds[a]}")
    print(" ".join(fields + [f"commit={commit()}"]))


if __name__ == "__main__":
    main(sys.argv[1:])
