"""J_r(eps) and J_c(eps) of a CCPO policy on a fine threshold grid: the mean action and the sampled policy.

The paper's 13-point grid averages away what a user who picks eps at run time meets: a threshold between two
behaviour thresholds where the policy spends far above eps. This runs `episodes` episodes at every threshold of
`metrics.sweep_grid(eps.range, step)` (every 2.5 over the trained range plus two steps beyond each end), with
the mean action and with sampled actions, through the evaluation path (`evaluation.evaluate_thresholds`: the same
seeds for both policies), and reports per threshold J_r, J_c, CV and the episodes that ended early (a crash stops
the cost), then per policy, over the trained range `eps.range`: the worst CV, the share of thresholds with CV above
10 % of eps, whether J_c(eps) is monotone within noise (`metrics.sweep_summary`) and the mean reward; and the worst
CV of the extrapolated thresholds beyond it (`ext_worst_cv`).

    uv run --locked python benchmarks/threshold_sweep.py benchmarks/table1/drone_run-s0/last.ckpt [--episodes 5]

Last line: `task=... frames=... mean_worst_cv=... mean_worst_cv_eps=... mean_share_violated=... mean_monotone=...
sampled_worst_cv=... ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import commit, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory or a .ckpt file")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per threshold and policy")
    parser.add_argument("--step", type=float, default=2.5, help="grid spacing in episode-cost units")
    parser.add_argument("--seed", type=int, default=1000, help="evaluation seed (sub-env j: seed + j)")
    parser.add_argument("--policy", choices=("both", "mean", "sampled"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchrl.envs.utils import ExplorationType

    from ccpo_pl.checkpointing import training_state
    from ccpo_pl.evaluation import evaluate_thresholds, load_run
    from ccpo_pl.metrics import outside_range, sweep_grid, sweep_summary
    from ccpo_pl.nets import make_policy

    ckpt, _, data, actor, cfg = load_run(args.run)
    grid = sweep_grid(cfg["eps"]["range"], args.step)
    horizon = int(cfg["env"]["max_episode_steps"])
    state = training_state(data) or {}
    frames = int(state.get("stream", {}).get("frames", 0)) * int(state.get("world_size", 1))
    log(f"# {ckpt} ({cfg['env']['name']}, {frames} frames, commit {commit()}): {len(grid)} thresholds x "
        f"{args.episodes} episodes, behaviour {list(cfg['eps']['behavior'])}")
    policies = {"mean": ExplorationType.DETERMINISTIC, "sampled": ExplorationType.RANDOM}
    if args.policy != "both":
        policies = {args.policy: policies[args.policy]}
    result = {"task": cfg["env"]["name"], "frames": frames}
    for name, exploration in policies.items():
        ep_r, ep_c, ep_len = evaluate_thresholds(make_policy(actor), cfg["env"], grid, args.episodes,
                                                 seed=args.seed, max_steps=horizon, exploration=exploration)
        for i, e in enumerate(grid):
            j_c = float(ep_c[i].double().mean())
            log(f"{name:<8} eps={e:<6g} J_r={float(ep_r[i].double().mean()):8.1f} J_c={j_c:7.1f} "
                f"CV={max(0.0, j_c - e):6.1f} early={int((ep_len[i] < horizon).sum())}/{args.episodes}")
        inside = torch.tensor([not x for x in outside_range(grid, cfg["eps"]["range"])])
        summary = sweep_summary([e for e, k in zip(grid, inside) if k], ep_c[inside])
        summary["ext_worst_cv"] = sweep_summary([e for e, k in zip(grid, inside) if not k], ep_c[~inside])["worst_cv"]
        summary["early"] = float((ep_len < horizon).double().mean())
        summary["avg_reward"] = float(ep_r[inside].double().mean())
        result |= {f"{name}_{k}": v for k, v in summary.items()}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={str(v).lower()}" for k, v in result.items()))


if __name__ == "__main__":
    main()
