"""`python -m ccpo_pl.evaluate run=<run dir or checkpoint> eps=[...] episodes=N seed=S [out=DIR] [video=true]` (Hydra).

Loads the policy pi(a|s, eps) of a checkpoint with `weights_only=True` (no training state), runs `episodes`
episodes per threshold in batched envs and writes `per_eps.csv`, `table.md`, `curves.png` and `summary.json` into
`out`, by default a new `<run dir>/eval-<UTC date-time>/` (see `ccpo_pl.evaluation.evaluate_run`): `<run dir>/eval/`
holds the run's final evaluation, written by `ccpo_pl.fit` and averaged by `ccpo_pl.report`, and an evaluation
replaces it only when asked to (`out=<run dir>/eval overwrite=true`). The files are one folder, written whole
(`ccpo_pl.outputs`): an existing evaluation in `out` is replaced only with `overwrite=true`, a folder holding anything
else never, and a second `evaluate` to the same `out` is refused. With `video=true` also `video/eps_<eps>.mp4` per
threshold. Prints where it wrote, then the summary as one `key=value` line.
"""

from __future__ import annotations

import difflib
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ccpo_pl.conf import CONF_DIR, CONF_PATH
from ccpo_pl.errors import ConfigError, refuse_or_run
from ccpo_pl.validation import rule_for


def evaluate(cfg: DictConfig) -> dict:
    """Run `evaluate_run` with the command line's settings."""
    from ccpo_pl.evaluation import evaluate_run, resolve_checkpoint  # here: TorchRL, Lightning, the simulators
    from ccpo_pl.video import check_video_settings, mp4_files  # here: imageio and the deploy helpers

    if not cfg.run:
        raise ConfigError("run= is required: a ccpo_pl.fit run directory or a .ckpt file, e.g. run=logs/<run_name>")
    if not isinstance(cfg.run, str):
        raise ConfigError(f"run={cfg.run!r} is not allowed; run must be a ccpo_pl.fit run directory or a .ckpt file")
    threads = rule_for("threads")  # the same setting as fit's
    if not threads.ok(cfg.threads):
        raise ConfigError(f"threads={cfg.threads!r} is not allowed; threads must be {threads.allowed_text()}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    check_video_settings(cfg.video, cfg.video_length)
    videos = mp4_files(seed=cfg.seed, length=cfg.video_length, deterministic=cfg.policy != "stochastic")
    eps = OmegaConf.to_container(cfg.eps) if OmegaConf.is_list(cfg.eps) else cfg.eps
    out = Path(cfg.out) if cfg.out else ad_hoc_dir(resolve_checkpoint(cfg.run)[1])
    summary = evaluate_run(cfg.run, eps=eps, episodes=cfg.episodes, seed=cfg.seed, out=out, policy=cfg.policy,
                           batch_envs=cfg.batch_envs, expect={"env.name": cfg.expect_env, "algo.name": cfg.expect_algo},
                           extrapolation=cfg.extrapolation, extra_files=videos if cfg.video else None,
                           overwrite=cfg.overwrite)
    return summary | {"out": str(out)}


def ad_hoc_dir(run_dir: Path) -> Path:
    """`<run dir>/eval-<UTC date-time>` (with `-2`, `-3`... after a second one in the same second): a new folder
    beside the run's final evaluation `<run dir>/eval/`, which is never replaced without `out=`."""
    stamp = time.strftime("eval-%Y%m%d-%H%M%S", time.gmtime())
    out, n = run_dir / stamp, 1
    while out.exists():
        n += 1
        out = run_dir / f"{stamp}-{n}"
    return out


def check_keys(argv: list[str]) -> None:
    """A key that `conf/evaluate.yaml` does not have (e.g. `episode=3`) is one line naming the nearest, before
    Hydra's several-line message."""
    known = sorted(k for k in OmegaConf.load(CONF_DIR / "evaluate.yaml") if k not in ("defaults", "hydra"))
    for arg in argv:
        key, sep, _ = arg.lstrip("+~").partition("=")
        if arg.startswith("-") or not sep or key in known or key.split(".")[0] == "hydra":
            continue
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        raise ConfigError(f"unknown key {key}; " + (f"did you mean {near[0]}?" if near else
                                                    f"the keys are {', '.join(known)}"))


def written(cfg: DictConfig, summary: dict) -> list[str]:
    """The lines that say where `evaluate(cfg)` wrote its files (printed before the `key=value` line)."""
    from ccpo_pl.video import video_paths  # here: imageio and the deploy helpers

    out = Path(summary["out"])
    lines = [f"ccpo_pl.evaluate: wrote per_eps.csv, per_episode.csv, table.md, curves.png and summary.json in {out}"]
    if cfg.video:
        paths = video_paths(out, summary["eps"])
        lines.append(f"ccpo_pl.evaluate: wrote {len(paths)} videos ({', '.join(p.name for p in paths)}) in "
                     f"{paths[0].parent}")
    return lines


@hydra.main(config_path=CONF_PATH, config_name="evaluate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        summary = evaluate(cfg)
    except ConfigError as err:
        print(f"ccpo_pl.evaluate: error: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(written(cfg, summary)))
    keys = ("task", "label", "seed", "frames", "avg_reward", "avg_cv", "avg_reward_unseen", "avg_cv_unseen",
            "episodes")
    print(" ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys))


def main() -> None:
    from ccpo_pl import quiet

    quiet.install()  # third-party messages no user acts on (each named in ccpo_pl/quiet.py)
    refuse_or_run("ccpo_pl.evaluate", lambda: check_keys(sys.argv[1:]), _hydra_main)


if __name__ == "__main__":
    main()
