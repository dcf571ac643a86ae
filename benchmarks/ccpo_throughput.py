"""How fast is a run of an algorithm (default: CCPO) at its default config on BallCircle? Env steps/s and ms per update.

Reference: FSRL's CVPO (run with FSRL's own scripts, not part of this repository) on SafetyBallCircle-v0 on a
2-core CPU runs 240-300 env steps/s at 0.2 updates per env step, one threshold per update, 15-18 ms per update.
Target: >= 3x FSRL's env steps/s at the same 0.2 updates per step with 4+ thresholds per update (about 5 ms per
update, 6 ms at most). Run FSRL side by side, alternating, when comparing: a machine's speed drifts.
Measured figures: docs/performance.md.

Runs the public `fit` on the default config for `total_frames` (default 30,000 = 3 epochs) in a temporary log dir,
without the final evaluation.
The result line is the steady state, epochs 2..N: frames / (training-loop wall time - evaluation time), i.e.
collection + updates + Lightning overhead, without the one-off compilation of the first epoch; the line before it
has the whole-run figures.

    uv run --locked python benchmarks/ccpo_throughput.py [--algo NAME] [--load N] [hydra overrides, e.g. threads=1]

`--algo NAME` (default ccpo) benchmarks any registered algorithm (`src/ccpo_pl/conf/algo/NAME.yaml`) the same
way. FSRL's same algorithm on SafetyBallCircle-v0, same 2-core CPU: SAC-Lag ~280 env steps/s, PPO-Lag ~2,000,
CPO ~1,080, CVPO 240-300.

`--runs N` runs N copies at once (the seeds of a sweep side by side); its result line sums their env steps/s.

`--load N` starts N busy processes (one pure-Python loop each) before the run and ends them after it: the speed of
a run beside other work, e.g. a second seed or an editor (compare with FSRL under the same load).

Last line: env_steps_per_s=<x> ms_per_update=<y> thresholds_per_update=<n> updates_per_step=<u> algo=<name> load=<N>
threads=<mean CPU threads of the steady epochs (adaptive runs: `time/threads`)>
(thresholds_per_update only for algorithms with `algo.n_eps`, the CCPO family).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import commit, compose_cfg, log
from omegaconf import OmegaConf

from ccpo_pl.fit import fit


def split_args(argv: list[str]) -> tuple[str, int, int, list[str]]:
    """(`--algo NAME` or the Hydra override `algo=NAME`, default ccpo; `--load N`, default 0; `--runs N`, default 1;
    the other overrides). `--opt N` and `--opt=N` both work."""
    opts, rest, i = {"--algo": "ccpo", "--load": "0", "--runs": "1"}, [], 0
    while i < len(argv):
        name, sep, value = argv[i].partition("=")
        if name in opts and (sep or i + 1 < len(argv)):
            opts[name] = value if sep else argv[i + 1]
            i += 1 if sep else 2
            continue
        if name == "algo" and sep:
            opts["--algo"] = value
        else:
            rest.append(argv[i])
        i += 1
    return opts["--algo"], int(opts["--load"]), int(opts["--runs"]), rest


@contextlib.contextmanager
def busy_processes(n: int):
    """`n` processes that keep one core busy each while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def mean_threads(tb_dir: Path) -> str:
    """The mean CPU thread count of the steady epochs (2..N) from `time/threads` (adaptive runs), else torch's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "time/threads" not in acc.Tags()["scalars"]:
        return str(torch.get_num_threads())
    values = [e.value for e in acc.Scalars("time/threads")][1:] or [e.value for e in acc.Scalars("time/threads")]
    return f"{sum(values) / len(values):.2f}"


def side_by_side(runs: int, algo: str, load: int, overrides: list[str]) -> None:
    """`runs` copies of the one-run benchmark at once (separate processes, e.g. the seeds of a sweep on one
    machine); the result line sums their env steps/s and averages their ms per update."""
    with busy_processes(load):
        procs = [subprocess.Popen([sys.executable, __file__, f"--algo={algo}", *overrides], stdout=subprocess.PIPE,
                                  text=True) for _ in range(runs)]
        lines = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    results = [dict(kv.split("=", 1) for kv in line.split()) for line in lines]
    for line in lines:
        log(f"one run: {line}")
    steps = sum(float(r["env_steps_per_s"]) for r in results)
    ms = sum(float(r["ms_per_update"]) for r in results) / runs
    print(f"env_steps_per_s={steps:.1f} ms_per_update={ms:.2f} algo={algo} load={load} runs={runs} "
          f"threads={'/'.join(r['threads'] for r in results)}")


def main(argv: list[str]) -> None:
    algo, load, runs, overrides = split_args(argv)
    if runs > 1:
        side_by_side(runs, algo, load, overrides)
        return
    with tempfile.TemporaryDirectory() as log_dir, busy_processes(load):
        cfg = compose_cfg([f"algo={algo}", "total_frames=30000", "eval.every_epochs=1000", "eval.episodes=1",
                           "eval.final_episodes=0", f"log_dir={log_dir}", "run_name=throughput"], overrides)
        log(f"benchmark: {algo} throughput, env={cfg.env.id} total_frames={cfg.total_frames} busy processes={load}")
        m = fit(cfg)
        threads = mean_threads(Path(log_dir) / "throughput" / "tb")
    train_s = m["time/loop_s"] - m["time/eval_s"]
    n_eps = OmegaConf.select(cfg, "algo.n_eps")
    per_update = f"thresholds_per_update={n_eps} " if n_eps is not None else ""
    print(f"bench=ccpo_throughput algo={algo} task={cfg.env.id} frames={int(m['train/frames'])} "
          f"wall_s={train_s:.1f} "
          f"whole_run_env_steps_per_s={m['train/frames'] / train_s:.1f} "
          f"whole_run_ms_per_update={1e3 * m['time/update_s'] / m['time/updates']:.2f} "
          f"update_share={m['time/update_s'] / train_s:.2f} commit={commit()}")
    print(f"env_steps_per_s={m['time/steady_env_steps_per_s']:.1f} ms_per_update={m['time/steady_update_ms']:.2f} "
          f"{per_update}updates_per_step={cfg.collect.updates_per_frame} algo={algo} load={load} "
          f"threads={threads}")


if __name__ == "__main__":
    main(sys.argv[1:])
