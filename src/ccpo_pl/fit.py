"""`python -m ccpo_pl.fit [overrides]`: train a threshold-conditioned safe-RL policy (Hydra entry point).

`fit(cfg)` does the work and is what tests call; `main()` is the thin command-line wrapper. The run directory is
`<log_dir>/<run_name>/` with `config.yaml`, `checkpoints/` (last.ckpt, periodic ones, per-rank buffer sidecars)
and `tb/` (TensorBoard). Re-running the same `run_name` resumes from `checkpoints/last.ckpt`; a different
config against an existing run is refused, and nothing of an earlier run is overwritten. SIGTERM/SIGINT save a
checkpoint at the next safe point and stop (`callbacks.Preemption`); numerical faults and failed saves stop with
one line (`faults`). Exit status: 0 done or preempted, 2 refused before training, 3 stopped by a fault.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ccpo_pl import compat
from ccpo_pl.algos.registry import ALGOS, build
from ccpo_pl.callbacks import DDPSyncCheck, FlushLogs, FramesProgressBar, Preemption
from ccpo_pl.checkpointing import CHECKPOINT_FORMAT, READABLE_FORMATS, AtomicCheckpointIO, remove_stale_tmp, safe_load
from ccpo_pl.envs import make_env
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import evaluate_run
from ccpo_pl.faults import ON_NAN, RunStopped

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("env", "algo", "trainer", "experiment")
#: keys that may change when a run is resumed (they do not change what was trained so far)
RESUMABLE_CHANGES = ("total_frames", "ckpt_path", "threads", "eval", "label", "faults", "log_dir")


# ---------------------------------------------------------------- validation
def _positive_list(cfg: DictConfig, key: str) -> list[float]:
    values = OmegaConf.select(cfg, key)
    if values is None or len(values) == 0:
        raise ConfigError(f"{key} is empty; give at least one threshold > 0, e.g. {key}=[20,40,60]")
    bad = [v for v in values if not isinstance(v, (int, float)) or v <= 0]
    if bad:
        raise ConfigError(f"{key} has {bad}; thresholds must be numbers > 0")
    return [float(v) for v in values]


def world_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.devices
    n = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else devices
    n = 1 if n in ("auto", -1) else int(n)
    return n * int(cfg.trainer.get("num_nodes", 1))


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise `ConfigError` with a one-line message on the first bad value."""
    name = str(cfg.run_name)
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigError(f"run_name={name!r} must be a plain directory name (no path separators)")
    if cfg.algo.name not in ALGOS:
        raise ConfigError(f"unknown algo {cfg.algo.name!r}; allowed: {', '.join(sorted(ALGOS))}")
    behavior = _positive_list(cfg, "eps.behavior")
    if OmegaConf.select(cfg, "algo.single_threshold", default=False) and len(behavior) != 1:  # CPO family
        raise ConfigError(f"algo={cfg.algo.name} trains at one cost limit: eps.behavior={behavior} must hold one "
                          f"value, e.g. eps.behavior=[25]")
    evals = _positive_list(cfg, "eps.eval")
    lo, hi = (float(x) for x in cfg.eps.range)
    if not 0 < lo < hi:
        raise ConfigError(f"eps.range={[lo, hi]} must be [low, high] with 0 < low < high")
    for key, values in (("eps.behavior", behavior), ("eps.eval", evals)):
        outside = [v for v in values if not lo <= v <= hi]
        if outside:
            raise ConfigError(f"{key} has {outside} outside eps.range={[lo, hi]}; widen eps.range or drop them")
    for key in ("total_frames", "collect.num_envs", "collect.frames_per_collect", "collect.collects_per_epoch",
                "collect.batch_size", "collect.buffer_size", "eval.every_epochs", "eval.episodes",
                "checkpoint.every_epochs"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    final = OmegaConf.select(cfg, "eval.final_episodes")
    if not isinstance(final, int) or isinstance(final, bool) or final < 0:
        raise ConfigError(f"eval.final_episodes={final!r} must be an integer >= 0 (0: no final evaluation)")
    on_nan = OmegaConf.select(cfg, "faults.on_nan")
    if on_nan not in ON_NAN:
        raise ConfigError(f"faults.on_nan={on_nan!r}; allowed: {', '.join(ON_NAN)}")
    if not ALGOS[cfg.algo.name].on_policy and updates_per_collect(cfg) < 1:
        raise ConfigError(f"collect.updates_per_frame={cfg.collect.updates_per_frame} gives no update per "
                          f"collection of {cfg.collect.frames_per_collect} frames; raise it")
    _validate_devices(cfg)


def _validate_devices(cfg: DictConfig) -> None:
    accel, devices = str(cfg.trainer.accelerator), cfg.trainer.devices
    if devices in ("auto", -1) or OmegaConf.is_list(devices):
        return
    if not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"trainer.devices={devices!r} must be a positive integer, a list of ids, or 'auto'")
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if have == 0:
        raise ConfigError(f"trainer.accelerator={accel} but this machine has no GPU; use trainer=cpu")
    if devices > have:
        raise ConfigError(f"trainer.devices={devices} but this machine has {have} {what}; use at most {have}")


def updates_per_collect(cfg: DictConfig) -> int:
    return int(round(cfg.collect.updates_per_frame * cfg.collect.frames_per_collect))


# ---------------------------------------------------------------- run directory and resume
_ABSENT = type("Absent", (), {"__repr__": lambda self: "absent"})()


def _diff(old, new, prefix="") -> list[tuple[str, object, object]]:
    """`(key, old, new)` for every leaf that differs; a key missing on one side has the value `_ABSENT`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix[:-1], old, new)]


def prepare_run(cfg: DictConfig) -> tuple[Path, str | None, int | None]:
    """Return (run dir, checkpoint to resume from or None, its global frame count); refuse a changed config."""
    run_dir = Path(cfg.log_dir) / cfg.run_name
    snapshot = run_dir / "config.yaml"
    plain = OmegaConf.to_container(cfg, resolve=True)
    if snapshot.exists():
        old = OmegaConf.to_container(OmegaConf.load(snapshot), resolve=True)
        diffs = [d for d in _diff(old, plain) if d[0].split(".")[0] not in RESUMABLE_CHANGES]
        added = [d for d in diffs if d[1] is _ABSENT]  # settings newer than the run
        changed = [f"{key}: {a!r} -> {b!r}" for key, a, b in diffs if a is not _ABSENT]
        if changed:
            raise ConfigError(f"run {str(run_dir)!r} exists with a different config ({'; '.join(changed[:3])}); "
                              f"use another run_name or the run's own config")
        if added and rank_zero_only.rank == 0:
            news = ", ".join(f"{key}={b!r}" for key, _, b in added)
            print(f"ccpo_pl.fit: run {str(run_dir)!r} predates the settings {news}; continuing with these values",
                  flush=True)
    elif run_dir.exists() and any(not p.name.endswith(".tmp") for p in run_dir.iterdir()):  # .tmp: killed here
        raise ConfigError(f"{str(run_dir)!r} exists but is not a ccpo_pl run (no config.yaml); "
                          f"choose another run_name or log_dir")
    ckpt = cfg.ckpt_path
    if ckpt is None and (run_dir / "checkpoints" / "last.ckpt").exists():
        ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    ckpt_frames = None
    if ckpt is not None:
        state = check_checkpoint(ckpt, cfg)["ccpo"]
        ckpt_frames = state["stream"]["frames"] * state["world_size"]
    if rank_zero_only.rank == 0:
        check_writable(run_dir, cfg)
        tmp = snapshot.with_suffix(".yaml.tmp")
        tmp.write_text(OmegaConf.to_yaml(plain))
        os.replace(tmp, snapshot)
        lock_run(run_dir)
        remove_stale_tmp(run_dir)  # left by a process killed while writing
        if ckpt_frames is not None and ckpt_frames < cfg.total_frames:
            print(f"ccpo_pl.fit: resuming run {str(run_dir)!r} from {ckpt} ({ckpt_frames} frames)", flush=True)
    return run_dir, ckpt, ckpt_frames


def check_writable(directory: Path, cfg: DictConfig) -> None:
    """Create `directory`, then write, fsync and delete a small file in it; a one-line `ConfigError` if that fails
    (read-only or full disk), so that a run never trains for an epoch only to fail at its first checkpoint."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=directory)
        try:
            os.write(fd, bytes(64 * 1024))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"log_dir={str(cfg.log_dir)!r}: cannot write in {str(directory)!r} "
                          f"({err.strerror or err}); choose a writable log_dir with free space") from None


_RUN_LOCKS: dict[str, int] = {}  # run dir -> open file holding its lock, for the life of this process


def lock_run(run_dir: Path) -> None:
    """Hold an exclusive lock on `<run dir>/.lock` until this process exits (a kill releases it): a second process
    training the same run at the same time (e.g. a requeued job while the old one still runs) is refused."""
    key = str(run_dir.resolve())
    if key in _RUN_LOCKS:
        return
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"run {str(run_dir)!r} is being trained by another process; wait for it to end or "
                          f"use another run_name") from None
    except OSError:  # a file system without locks: go on unprotected
        pass
    _RUN_LOCKS[key] = fd


def check_checkpoint(path: str, cfg: DictConfig) -> dict:
    """Load a checkpoint safely and check it belongs to this algorithm and env; one-line errors otherwise."""
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path!r} does not exist")
    try:
        ckpt = safe_load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ConfigError(f"ckpt_path={path!r} is not a readable checkpoint ({type(err).__name__})") from None
    saved = (ckpt.get("hyper_parameters") or {}).get("run_config") or {}
    if "ccpo" not in ckpt or not saved:
        raise ConfigError(f"ckpt_path={path!r} was not written by ccpo_pl.fit")
    version = ckpt["ccpo"].get("format_version", 1)
    if version not in READABLE_FORMATS:
        raise ConfigError(f"ckpt_path={path!r} has checkpoint format {version!r}; this ccpo_pl reads format "
                          f"{CHECKPOINT_FORMAT}; use the ccpo_pl version that wrote it")
    for key in ("algo.name", "env.id"):
        group, name = key.split(".")
        was, now = (saved.get(group) or {}).get(name), cfg[group][name]
        if was != now:
            raise ConfigError(f"ckpt_path={path!r} is a {key}={was!r} checkpoint, this run has {key}={now!r}")
    return ckpt


# ---------------------------------------------------------------- the run
def env_sizes(cfg: DictConfig) -> tuple[int, int]:
    """Observation and action sizes, read from the env's specs (never from YAML)."""
    env = make_env(cfg.env, num_envs=1, seed=cfg.seed, eps_values=list(cfg.eps.behavior))
    try:
        return int(env.observation_spec["observation"].shape[-1]), int(env.action_spec.shape[-1])
    finally:
        env.close(raise_if_closed=False)


def fit(cfg: DictConfig, command: str | None = None) -> dict[str, float]:
    """Train as configured; returns the last evaluation's metrics (`eval/...`), `train/frames` and, after a
    finished run's final evaluation (`eval.final_episodes` > 0), its averages (`final/...`).

    `command`, the command line that started this process, is appended to `<run dir>/commands.txt`.
    """
    validate(cfg)
    run_dir, ckpt, ckpt_frames = prepare_run(cfg)
    if command and rank_zero_only.rank == 0:
        with open(run_dir / "commands.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {command}\n")
    if ckpt_frames is not None and ckpt_frames >= cfg.total_frames:
        print(f"ccpo_pl.fit: run {str(run_dir)!r} already has {ckpt_frames} frames (total_frames="
              f"{cfg.total_frames}); raise total_frames to continue it")
        return {"train/frames": float(ckpt_frames)}
    n_ranks = world_size(cfg)
    local_procs = max(1, n_ranks // int(cfg.trainer.get("num_nodes", 1)))
    torch.set_num_threads(int(cfg.threads or max(1, (os.cpu_count() or 1) // local_procs)))
    compat.cuda_check_without_nvml()  # no failed NVML load in every optimizer step where NVML is missing
    L.seed_everything(cfg.seed, verbose=False)

    frames_per_epoch = cfg.collect.frames_per_collect * cfg.collect.collects_per_epoch * n_ranks
    max_epochs = math.ceil(cfg.total_frames / frames_per_epoch)
    obs_dim, act_dim = env_sizes(cfg)
    behavior, evals = list(cfg.eps.behavior), list(cfg.eps.eval)
    episodes = cfg.eval.episodes
    module = build(
        cfg, obs_dim, act_dim,
        eps_behavior=behavior, eps_range=list(cfg.eps.range), eps_bin=cfg.eps.bin, eps_eval=evals,
        horizon=int(cfg.env.max_episode_steps), total_frames=int(cfg.total_frames),
        make_train_env=functools.partial(make_env, cfg.env, num_envs=cfg.collect.num_envs, eps_values=behavior,
                                         eps_mode="sample", parallel=cfg.collect.parallel),
        make_eval_env=functools.partial(make_env, cfg.env, num_envs=len(evals) * episodes,
                                        eps_values=[e for e in evals for _ in range(episodes)], eps_mode="fixed"),
        stream=dict(frames_per_collect=cfg.collect.frames_per_collect, updates_per_collect=updates_per_collect(cfg),
                    collects_per_epoch=cfg.collect.collects_per_epoch, buffer_size=cfg.collect.buffer_size,
                    batch_size=cfg.collect.batch_size),
        seed=int(cfg.seed), eval_every=cfg.eval.every_epochs, eval_episodes=episodes, max_epochs=max_epochs,
        sidecar_dir=str(run_dir / "checkpoints" / "sidecars"), keep_buffers=cfg.checkpoint.keep_buffers,
        run_config=OmegaConf.to_container(cfg, resolve=True), on_nan=cfg.faults.on_nan,
    )
    trainer = make_trainer(cfg, run_dir, max_epochs, n_ranks, ckpt_frames)
    trainer.fit(module, ckpt_path=ckpt)
    metrics = dict(module.final_metrics)
    if trainer.global_rank == 0 and cfg.eval.final_episodes > 0 and module.global_frames >= cfg.total_frames:
        summary = final_evaluation(cfg, run_dir)
        metrics |= {f"final/{k}": v for k, v in summary["by_policy"][summary["policy"]].items()}  # the headline
        metrics |= {f"final/{policy}/{k}": v for policy, avg in summary["by_policy"].items() for k, v in avg.items()}
    return metrics


def final_evaluation(cfg: DictConfig, run_dir: Path) -> dict:
    """`eval.final_episodes` episodes per threshold of `eps.eval` with the final policy, deterministic and
    stochastic, written to `<run dir>/eval/` exactly as `python -m ccpo_pl.evaluate run=<run dir>` would."""
    return evaluate_run(run_dir, eps=list(cfg.eps.eval), episodes=int(cfg.eval.final_episodes), seed=int(cfg.seed))


def make_trainer(cfg: DictConfig, run_dir: Path, max_epochs: int, n_ranks: int,
                 ckpt_frames: int | None) -> L.Trainer:
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        # last.ckpt after every epoch (overwritten atomically), and a kept checkpoint every N epochs
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=True),
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:04d}", auto_insert_metric_name=False,
                        every_n_epochs=cfg.checkpoint.every_epochs, save_top_k=-1, save_on_train_epoch_end=True),
        FramesProgressBar(refresh_rate=2),  # redraws per second (Rich's thread; 40/s took ~2 % of a run's time)
        Preemption(ckpt_dir / "last.ckpt", total_frames=int(cfg.total_frames)),  # SIGTERM/SIGINT: save, stop
        FlushLogs(),
    ]
    if cfg.check_sync:
        callbacks.append(DDPSyncCheck())
    # a resumed run appends to the same TensorBoard run, dropping events logged after its checkpoint (those at
    # the checkpoint's own frame count were logged before it was written); a run started over (killed before its
    # first checkpoint) drops all earlier events
    purge_step = 0 if ckpt_frames is None else ckpt_frames + 1
    logger = TensorBoardLogger(save_dir=cfg.log_dir, name=cfg.run_name, version="tb", default_hp_metric=False,
                               purge_step=purge_step)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if kwargs.get("strategy", "auto") == "auto" and n_ranks > 1:
        kwargs["strategy"] = "ddp_find_unused_parameters_true"  # one optimizer per disjoint parameter set
    # default_root_dir: where Lightning's own SLURM requeue handler would write hpc_ckpt_*.ckpt (this run's dir)
    return L.Trainer(**kwargs, max_epochs=max_epochs, callbacks=callbacks, logger=logger, default_root_dir=run_dir,
                     plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, log_every_n_steps=1)


# ---------------------------------------------------------------- command line
def _check_group_overrides(argv: list[str]) -> None:
    """Unknown `env=`/`algo=`/... names fail here with one line, before Hydra's multi-line message."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in GROUPS and value not in ("null", ""):
            for name in value.split(","):  # multirun sweeps: env=a,b
                if not (CONF_DIR / key / f"{name}.yaml").is_file():
                    allowed = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
                    raise ConfigError(f"unknown {key} {name!r}; allowed: {', '.join(allowed)}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        metrics = fit(cfg, command=" ".join(["python -m ccpo_pl.fit", *HydraConfig.get().overrides.task]))
    except ConfigError as err:
        print(f"ccpo_pl.fit: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as err:  # preempted (exit 0), numerical fault or failed save (exit 3): one line
        print(f"ccpo_pl.fit: {'' if err.exit_code == 0 else 'error: '}{err}", file=sys.stderr)
        sys.exit(err.exit_code)
    if metrics and rank_zero_only.rank == 0:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/eps_" not in k))


def main() -> None:
    try:
        _check_group_overrides(sys.argv[1:])
    except ConfigError as err:
        print(f"ccpo_pl.fit: error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
