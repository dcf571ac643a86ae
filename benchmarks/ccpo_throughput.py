"""How fast is a CCPO run at the default config on BallCircle? Env steps/s and ms per update.

Reference (ARCHITECTURE §7 and `../shared/peers/README.md`, measured on this 2-core machine): FSRL CVPO on
SafetyBallCircle-v0 runs 240-300 env steps/s at 0.2 updates per env step, one threshold per update, 15-18 ms per
update. Goal: >= 3x FSRL's env steps/s at the same 0.2 updates per step with 4+ thresholds per update (about 5 ms
per update; 6 ms is the floor we accept). Compare side by side: `bash ../shared/peers/fsrl_run.sh cvpo`.

Runs the public `fit` on the default config for `total_frames` (default 30,000 = 3 epochs) in a temporary log dir.
The result line is the steady state, epochs 2..N: frames / (training-loop wall time - evaluation time), i.e.
collection + updates + Lightning overhead, without the one-off compilation of the first epoch; the line before it
has the whole-run figures.

    uv run --locked python benchmarks/ccpo_throughput.py [hydra overrides, e.g. collect.num_envs=20]

Last line: env_steps_per_s=<x> ms_per_update=<y> thresholds_per_update=<n> updates_per_step=<u> ...
"""

from __future__ import annotations

import sys
import tempfile

from _common import commit, compose_cfg, log

from ccpo_pl.fit import fit


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as log_dir:
        cfg = compose_cfg(["total_frames=30000", "eval.every_epochs=1000", "eval.episodes=1", f"log_dir={log_dir}",
                           "run_name=throughput"], argv)
        log(f"benchmark: ccpo throughput, env={cfg.env.id} total_frames={cfg.total_frames}")
        m = fit(cfg)
    train_s = m["time/loop_s"] - m["time/eval_s"]
    print(f"bench=ccpo_throughput task={cfg.env.id} frames={int(m['train/frames'])} wall_s={train_s:.1f} "
          f"whole_run_env_steps_per_s={m['train/frames'] / train_s:.1f} "
          f"whole_run_ms_per_update={1e3 * m['time/update_s'] / m['time/updates']:.2f} "
          f"update_share={m['time/update_s'] / train_s:.2f} commit={commit()}")
    print(f"env_steps_per_s={m['time/steady_env_steps_per_s']:.1f} ms_per_update={m['time/steady_update_ms']:.2f} "
          f"thresholds_per_update={cfg.algo.n_eps} updates_per_step={cfg.collect.updates_per_frame}")


if __name__ == "__main__":
    main(sys.argv[1:])
