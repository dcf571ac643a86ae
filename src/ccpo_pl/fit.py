"""`python -m ccpo_pl.fit [overrides]`: train a threshold-conditioned safe-RL policy (Hydra entry point).

`fit(cfg)` does the work and is what tests call; `main()` is the thin command-line wrapper, and `train(overrides)`
(`ccpo_pl.train`) the same from Python. The run directory is
`<log_dir>/<run_name>/` with `config.yaml`, `checkpoints/` (last.ckpt, periodic ones, per-rank buffer sidecars) and
`tb/` (TensorBoard; `logger=` picks another: `loggers`). Re-running the same `run_name` resumes from
`checkpoints/last.ckpt`; a different config against an existing run is refused, and nothing of an earlier run is
overwritten. Everything that can be checked is checked before the first write (the config, the run's own config, the
checkpoint against the built network), the run's lock is the first write, and `config.yaml` is written when training
starts: a run that never started leaves no trace. SIGTERM/SIGINT save a checkpoint at the next safe point and stop
(`callbacks.Preemption`); numerical faults and failed saves stop with one line (`faults`). Exit status: 0 done or
preempted, 2 refused before training, 3 stopped by a fault, 130 a second Ctrl-C (stopped at once, nothing saved).

Lightning, TorchRL, the simulators and the algorithms are imported by the functions that build the run, after
the config is checked: `--help` and a refused config take about as long as importing torch.

Over 300 lines: the checks before the first write (the run's config, its checkpoint, the disk, the lock) stay with
the command whose promise they keep; building the module, data, evaluation and trainer is one function each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ccpo_pl import compat, validation
from ccpo_pl.algos.registry import ALGOS, build
from ccpo_pl.conf import CONF_DIR, CONF_PATH, LOGGER_DIRS
from ccpo_pl.errors import ConfigError, refuse_or_run
from ccpo_pl.extras import require
from ccpo_pl.faults import INTERRUPTED_EXIT, Preempted, RunStopped, StorageError
from ccpo_pl.validation import GROUPS, check_override_keys, updates_per_collect, validate, world_size

if TYPE_CHECKING:
    import lightning as L

    from ccpo_pl.callbacks import RecordRun
    from ccpo_pl.data import RolloutData
    from ccpo_pl.evaluation import PeriodicEvaluation
    from ccpo_pl.threads import ThreadTuner
    from ccpo_pl.video import PeriodicVideo

#: keys that may change when a run is resumed (they do not change what was trained so far)
RESUMABLE_CHANGES = ("total_frames", "ckpt_path", "threads", "eval", "label", "faults", "log_dir", "progress",
                     "logger")
#: top-level keys every run's config.yaml has (a file without them is damaged)
RUN_KEYS = ("seed", "total_frames", "env", "algo", "eps", "collect", "trainer")


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


def run_config(run_dir: Path) -> dict | None:
    """The config a run in `run_dir` was started with (None: no run there yet); refuses a foreign directory and a
    damaged `config.yaml` (empty, as a power loss can leave it, or not YAML) in one line."""
    snapshot = run_dir / "config.yaml"
    if not snapshot.exists():
        # a run that never started training leaves at most its lock, temporary files and its logger's folder
        left = (".lock", "commands.txt", *LOGGER_DIRS.values())
        if run_dir.exists() and any(p.name not in left and not p.name.endswith(".tmp") for p in run_dir.iterdir()):
            raise ConfigError(f"{str(run_dir)!r} exists but is not a ccpo_pl run (no config.yaml); "
                              f"choose another run_name or log_dir")
        return None
    try:
        old = OmegaConf.to_container(OmegaConf.load(snapshot), resolve=True)
        problem = None if isinstance(old, dict) and all(k in old for k in RUN_KEYS) else "empty or incomplete"
    except Exception as err:  # noqa: BLE001 - YAML syntax, bad interpolation, unreadable file: all "damaged"
        problem = f"unreadable: {type(err).__name__}"
    if problem:
        raise ConfigError(f"{str(snapshot)!r} is {problem}; the run's config is also in its checkpoints "
                          f"(hyper_parameters.run_config): restore the file from there or a backup, or move the run "
                          f"directory away to start over")
    return validation.current_run_config(old)


def check_resumable(run_dir: Path, plain: dict) -> str | None:
    """Refuse a config that differs from the run's own. Settings added in a later version are not refused: returns
    the line that names them (printed once every other check has passed), else None."""
    old = run_config(run_dir)
    if old is None:
        return None
    if removed := validation.removed_setting(old):
        raise ConfigError(f"run {str(run_dir)!r} was trained with {removed}, a setting ccpo_pl no longer has: its "
                          f"checkpoints evaluate but the run does not resume; start a new run_name")
    diffs = [d for d in _diff(old, plain) if d[0].split(".")[0] not in RESUMABLE_CHANGES]
    added = [d for d in diffs if d[1] is _ABSENT]  # settings newer than the run
    changed = [f"{key}: {a!r} -> {b!r}" for key, a, b in diffs if a is not _ABSENT]
    if changed:
        more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"run {str(run_dir)!r} exists with a different config ({'; '.join(changed[:3])}{more}); "
                          f"use another run_name or the run's own config")
    if not added:
        return None
    news = ", ".join(f"{key}={b!r}" for key, _, b in added)
    return f"ccpo_pl.fit: run {str(run_dir)!r} predates the settings {news}; continuing with these values"


def check_checkpoint(path: str, cfg: DictConfig, module: L.LightningModule | None = None) -> dict:
    """`checkpointing.check_checkpoint` with this run's algorithm, env, rank count and (given) network."""
    from ccpo_pl import checkpointing  # here, not at the top: it imports Lightning

    return checkpointing.check_checkpoint(
        path, expect={"algo.name": cfg.algo.name, "env.id": cfg.env.id}, world_size=world_size(cfg),
        module=module)


def resume_point(cfg: DictConfig, run_dir: Path, module: L.LightningModule) -> tuple[str | None, int | None]:
    """The checkpoint to resume from (`ckpt_path`, else the run's last.ckpt, else None), checked against this run
    and its network, and its global frame count."""
    ckpt = cfg.ckpt_path
    if ckpt is None and (run_dir / "checkpoints" / "last.ckpt").exists():
        ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    if ckpt is None:
        return None, None
    from ccpo_pl import checkpointing  # here, not at the top: it imports Lightning

    state = checkpointing.training_state(check_checkpoint(ckpt, cfg, module))
    return ckpt, state["stream"]["frames"] * state["world_size"]


def storage_need(module: L.LightningModule, cfg: DictConfig, obs_dim: int, act_dim: int) -> int:
    """Bytes a checkpoint and this process's sidecar take: the weights three times (Adam's two moments), the replay
    buffer at `collect.buffer_size` transitions (observation, next observation, action, eps, reward and cost as
    float32, the terminated flag, an int64 index), 10 % and 128 KiB (RNG and training state) on top."""
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    transition = 4 * (2 * obs_dim + act_dim + 3) + 1 + 8
    buffer = 0 if ALGOS[cfg.algo.name].on_policy else cfg.collect.buffer_size * transition
    return int(1.1 * (3 * weights + buffer)) + 2**17


def check_writable(directory: Path, cfg: DictConfig, nbytes: int) -> None:
    """Reserve room for a checkpoint and a sidecar in `directory` (`reserve_space`); a one-line `ConfigError` if
    that fails (read-only or full disk), so that a run never trains for an epoch only to fail at its first save."""
    from ccpo_pl import checkpointing  # here, not at the top: it imports Lightning

    try:
        checkpointing.reserve_space(directory, nbytes)
    except OSError as err:
        raise ConfigError(f"log_dir={str(cfg.log_dir)!r}: cannot write {nbytes / 2**20:.1f} MiB (a checkpoint and "
                          f"its sidecar) in {str(directory)!r} ({err.strerror or err}); choose a writable log_dir "
                          f"with free space") from None


_RUN_LOCKS: dict[str, int] = {}  # run dir -> open file holding its lock, for the life of this process


def lock_run(run_dir: Path) -> None:
    """Create `run_dir` and hold an exclusive lock on `<run dir>/.lock` until this process exits (a kill releases
    it): a second process training the same run at the same time (e.g. a requeued job while the old one still
    runs) is refused, before it writes anything."""
    key = str(run_dir.resolve())
    if key in _RUN_LOCKS:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"log_dir={str(run_dir.parent)!r}: cannot write in {str(run_dir)!r} "
                          f"({err.strerror or err}); choose a writable log_dir with free space") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"run {str(run_dir)!r} is being trained by another process; wait for it to end or "
                          f"use another run_name") from None
    except OSError:  # a file system without locks: go on unprotected
        pass
    _RUN_LOCKS[key] = fd


def unlock_run(run_dir: Path) -> None:
    fd = _RUN_LOCKS.pop(str(run_dir.resolve()), None)
    if fd is not None:
        os.close(fd)


# ---------------------------------------------------------------- the run
def _rank() -> int:
    """This process's global rank, as Lightning reads it from the launcher's environment."""
    from lightning.pytorch.utilities import rank_zero_only  # here, not at the top: it imports Lightning

    return rank_zero_only.rank


def make_env(env_cfg, **kwargs):
    """`ccpo_pl.envs.make_env`: the task's batched env."""
    from ccpo_pl.envs import make_env  # here, not at the top: TorchRL and the simulators

    return make_env(env_cfg, **kwargs)


def env_sizes(cfg: DictConfig) -> tuple[int, int, tuple[float, float]]:
    """Observation and action sizes and the action box every action is clipped to, read from the env's specs (never
    from YAML)."""
    env = make_env(cfg.env, num_envs=1, seed=cfg.seed, eps_values=list(cfg.eps.behavior))
    try:
        space = env.action_spec.space
        box = (float(space.low.min()), float(space.high.max()))
        return int(env.observation_spec["observation"].shape[-1]), int(env.action_spec.shape[-1]), box
    finally:
        env.close(raise_if_closed=False)


def fit(cfg: DictConfig, command: str | None = None) -> dict[str, float]:
    """Train as configured; returns the last evaluation's metrics (`eval/...`), `train/frames` and, after a
    finished run's final evaluation (`eval.final_episodes` > 0), its averages (`final/...`).

    Everything is checked before the first write: the config (`validation`), the run's own config, the checkpoint
    to resume against the built network. `command`, the command line that started this process, is appended to
    `<run dir>/commands.txt` when training starts.
    """
    validate(cfg)
    require(f"logger={cfg.logger.name}")  # the wandb and mlflow extras
    run_dir = Path(cfg.log_dir) / cfg.run_name
    plain = OmegaConf.to_container(cfg, resolve=True)
    predates = check_resumable(run_dir, plain)
    n_ranks = world_size(cfg)
    local_procs = max(1, n_ranks // int(cfg.trainer.get("num_nodes", 1)))
    import lightning as L  # the config is checked: what trains is imported now, not before

    from ccpo_pl.callbacks import RecordRun
    from ccpo_pl.checkpointing import remove_stale_tmp
    from ccpo_pl.threads import configure_threads

    thread_tuner = configure_threads(cfg.threads, local_procs)  # null: adapted to the machine's load while training
    compat.cuda_check_without_nvml()  # no failed NVML load in every optimizer step where NVML is missing
    L.seed_everything(cfg.seed, verbose=False)

    frames_per_epoch = cfg.collect.frames_per_collect * cfg.collect.collects_per_epoch * n_ranks
    max_epochs = math.ceil(cfg.total_frames / frames_per_epoch)
    obs_dim, act_dim, action_box = env_sizes(cfg)
    module = build_module(cfg, obs_dim, act_dim)
    ckpt, ckpt_frames = resume_point(cfg, run_dir, module)
    if ckpt_frames is not None and ckpt_frames >= cfg.total_frames:
        own = ckpt == str(run_dir / "checkpoints" / "last.ckpt")
        if own and cfg.eval.final_episodes > 0 and _rank() == 0 and not final_evaluation_done(run_dir):
            lock_run(run_dir)  # a finished run whose final evaluation was stopped or failed: it is run now
            print(f"ccpo_pl.fit: run {str(run_dir)!r} has its {ckpt_frames} frames but no complete final "
                  f"evaluation (eval/summary.json); running it", flush=True)
            return {"train/frames": float(ckpt_frames)} | final_metrics(final_evaluation(cfg, run_dir))
        print(f"ccpo_pl.fit: run {str(run_dir)!r} already has {ckpt_frames} frames (total_frames="
              f"{cfg.total_frames}); raise total_frames to continue it")
        return {"train/frames": float(ckpt_frames)}

    record = RecordRun(run_dir, plain, command, action_box=action_box)
    evaluation = build_evaluation(cfg)
    created = not run_dir.exists()
    try:
        if _rank() == 0:
            lock_run(run_dir)  # the first write of this process
            check_writable(run_dir, cfg, storage_need(module, cfg, obs_dim, act_dim) * local_procs)
            remove_stale_tmp(run_dir)  # left by a process killed while writing
            if predates:  # said only once nothing refuses the command
                print(predates, flush=True)
            if ckpt_frames is not None:
                print(f"ccpo_pl.fit: resuming run {str(run_dir)!r} from {ckpt} ({ckpt_frames} frames)", flush=True)
        trainer = make_trainer(cfg, run_dir, module, max_epochs, n_ranks, ckpt_frames, record, evaluation,
                               thread_tuner)
        try:
            trainer.fit(module, datamodule=build_data(cfg, run_dir), ckpt_path=ckpt)
        except Exception as err:  # noqa: BLE001 - re-raised, as the fault it reports where that is known
            raise _as_fault(err, run_dir) from None
    except BaseException:
        if created and not record.started and _rank() == 0:  # nothing of a run was written: no trace
            unlock_run(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    metrics = evaluation.final_metrics | module.time_metrics
    if trainer.global_rank == 0 and cfg.eval.final_episodes > 0 and module.global_frames >= cfg.total_frames:
        metrics |= final_metrics(final_evaluation(cfg, run_dir))
    return metrics


@dataclass
class Trained:
    """What `train` returns: the run directory, the metrics `fit` returned, and the trained policy."""

    run_dir: Path
    metrics: dict[str, float]

    @property
    def policy(self):
        """The run's policy, `ccpo_pl.load(run_dir)` (`predict(obs, eps)`, `metadata`)."""
        from ccpo_pl.deploy import load

        return load(self.run_dir)


def train(overrides: Sequence[str] = ()) -> Trained:
    """`python -m ccpo_pl.fit <overrides>` from Python: the same checks, the same run directory (re-running resumes
    it), the same training; returns the run directory, the metrics and the policy (`Trained`). A refused override
    is a `ConfigError` (a `ValueError`) with the command line's one-line message; `-m` sweeps are the command
    line's."""
    from hydra import compose, initialize_config_dir

    overrides = [str(o) for o in overrides]
    if "-m" in overrides or "--multirun" in overrides:
        raise ConfigError("ccpo_pl.train runs one run; sweep with python -m ccpo_pl.fit -m ... or call it per job")
    _check_group_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    metrics = fit(cfg, command=" ".join(["ccpo_pl.train", *overrides]))
    return Trained(Path(cfg.log_dir) / cfg.run_name, metrics)


def final_metrics(summary: dict) -> dict[str, float]:
    """`final/<average>` of the headline policy and `final/<policy>/<average>` of each, from the final evaluation's
    summary."""
    metrics = {f"final/{k}": v for k, v in summary["by_policy"][summary["policy"]].items()}  # the headline
    return metrics | {f"final/{policy}/{k}": v for policy, avg in summary["by_policy"].items() for k, v in avg.items()}


#: errors of a full, over-quota or read-only disk, from whatever writes (TensorBoard's writer thread, say)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _as_fault(err: Exception, run_dir: Path) -> Exception:
    """The `RunStopped` behind an exception out of `trainer.fit` (Lightning's clean-up after a fault can raise
    again, e.g. TensorBoard's flush on a full disk), a full disk as a `StorageError`, anything else as it is."""
    from ccpo_pl import checkpointing  # here, not at the top: it imports Lightning

    seen, e = set(), err
    while e is not None and id(e) not in seen:
        if isinstance(e, RunStopped):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    cause = checkpointing.storage_cause(err, DISK_ERRNOS)
    if cause is None:
        return err
    return StorageError(f"cannot write in {str(run_dir)!r} ({cause}); the last complete checkpoint is kept; free "
                        f"space, then re-run the same command to resume")


def build_module(cfg: DictConfig, obs_dim: int, act_dim: int) -> L.LightningModule:
    """The algorithm's training module from the config."""
    return build(
        cfg, obs_dim, act_dim,
        eps_behavior=list(cfg.eps.behavior), eps_range=list(cfg.eps.range), eps_bin=cfg.eps.bin,
        eps_eval=list(cfg.eps.eval), horizon=int(cfg.env.max_episode_steps), total_frames=int(cfg.total_frames),
        seed=int(cfg.seed), on_nan=cfg.faults.on_nan,
    )


def build_data(cfg: DictConfig, run_dir: Path) -> RolloutData:
    """The run's training data: envs, collector and replay buffer per rank, sidecars beside the checkpoints."""
    from ccpo_pl.data import RolloutData  # here, not at the top: TorchRL and Lightning

    return RolloutData(
        functools.partial(make_env, cfg.env, num_envs=cfg.collect.num_envs, eps_mode="sample",
                          parallel=cfg.collect.parallel),
        stream=dict(frames_per_collect=cfg.collect.frames_per_collect, updates_per_collect=updates_per_collect(cfg),
                    collects_per_epoch=cfg.collect.collects_per_epoch, buffer_size=cfg.collect.buffer_size,
                    batch_size=cfg.collect.batch_size),
        eps_behavior=list(cfg.eps.behavior), seed=int(cfg.seed),
        sidecar_dir=str(run_dir / "checkpoints" / "sidecars"), keep_buffers=cfg.checkpoint.keep_buffers,
        on_policy=ALGOS[cfg.algo.name].on_policy)


def build_evaluation(cfg: DictConfig) -> PeriodicEvaluation:
    """The periodic evaluation on `eps.eval` during training."""
    from ccpo_pl.evaluation import PeriodicEvaluation  # here, not at the top: TorchRL and Lightning

    return PeriodicEvaluation(OmegaConf.to_container(cfg.env, resolve=True), list(cfg.eps.eval),
                              list(cfg.eps.behavior), episodes=int(cfg.eval.episodes),
                              every_epochs=int(cfg.eval.every_epochs), seed=int(cfg.seed),
                              horizon=int(cfg.env.max_episode_steps))


def build_video(cfg: DictConfig, evaluation: PeriodicEvaluation) -> PeriodicVideo:
    """`eval.video`: at each evaluation, one episode at `eval.video_eps` (default the middle behaviour threshold)
    as a GIF in TensorBoard."""
    from ccpo_pl.video import PeriodicVideo  # here, not at the top: imageio, Lightning and the simulators

    behavior = sorted(float(e) for e in cfg.eps.behavior)
    eps = cfg.eval.video_eps if cfg.eval.video_eps is not None else behavior[len(behavior) // 2]
    return PeriodicVideo(OmegaConf.to_container(cfg, resolve=True), float(eps), length=int(cfg.eval.video_length),
                         every_epochs=evaluation.every_epochs, seed=evaluation.seed + 10_000)


def final_evaluation_done(run_dir: Path) -> bool:
    """Whether the run has its final evaluation: `<run dir>/eval/summary.json`, the last file of the evaluation's
    folder, which is written whole (`ccpo_pl.outputs`)."""
    return (run_dir / "eval" / "summary.json").is_file()


class _FinalEvaluationStopped(BaseException):
    """Raised by the signal handler of the final evaluation (a BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def _signals_stop_final_evaluation():
    """SIGTERM or SIGINT during the final evaluation: `Preempted` (exit 0) with the line that says how to finish it;
    nothing of the evaluation is written (its folder is written whole, at its end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _FinalEvaluationStopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def final_evaluation(cfg: DictConfig, run_dir: Path) -> dict:
    """`eval.final_episodes` episodes per threshold of `eps.eval` with the final policy, deterministic and
    stochastic, written to `<run dir>/eval/` exactly as `python -m ccpo_pl.evaluate run=<run dir>` would (an
    incomplete one replaced). A signal stops it as a `Preempted`, a failed write as a `StorageError`, each saying
    that the same command runs it again."""
    from ccpo_pl.evaluation import evaluate_run  # here, not at the top: TorchRL and Lightning

    again = "re-run the same command to run the final evaluation (training is complete)"
    try:
        with _signals_stop_final_evaluation():
            return evaluate_run(run_dir, eps=list(cfg.eps.eval), episodes=int(cfg.eval.final_episodes),
                                seed=int(cfg.seed), overwrite=True)
    except _FinalEvaluationStopped as stop:
        raise Preempted(f"stopped by {stop} during the final evaluation; nothing of it was written; {again}") from None
    except ConfigError as err:
        raise StorageError(f"the final evaluation was not written: {err}; {again}") from None


def make_trainer(cfg: DictConfig, run_dir: Path, module: L.LightningModule, max_epochs: int, n_ranks: int,
                 ckpt_frames: int | None, record: RecordRun, evaluation: PeriodicEvaluation,
                 thread_tuner: ThreadTuner | None = None) -> L.Trainer:
    import lightning as L  # here, not at the top: the config checks run without Lightning
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ccpo_pl.callbacks import DDPSyncCheck, FlushLogs, FramesProgressBar, Preemption
    from ccpo_pl.checkpointing import AtomicCheckpointIO
    from ccpo_pl.loggers import make_logger

    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        evaluation,  # before the epoch's checkpoints (Lightning runs checkpoint callbacks last)
        # last.ckpt after every epoch (overwritten atomically), and a kept checkpoint every N epochs
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=True),
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:04d}", auto_insert_metric_name=False,
                        every_n_epochs=cfg.checkpoint.every_epochs, save_top_k=-1, save_on_train_epoch_end=True),
        FramesProgressBar(int(cfg.total_frames), every_s=float(cfg.progress.every_s)),
        Preemption(ckpt_dir / "last.ckpt", total_frames=int(cfg.total_frames)),  # SIGTERM/SIGINT: save, stop
        FlushLogs(),
        record,  # config.yaml and commands.txt once training starts
    ]
    if cfg.check_sync:
        callbacks.append(DDPSyncCheck())
    if thread_tuner is not None:
        callbacks.append(thread_tuner)
    if cfg.eval.video:
        callbacks.insert(1, build_video(cfg, evaluation))
    # a resumed run appends to the same logger run, dropping (where the logger can) what was logged after its
    # checkpoint (what is at the checkpoint's own frame count was logged before it was written); a run started
    # over (killed before its first checkpoint) drops all earlier events
    logger = make_logger(cfg, run_dir, purge_step=0 if ckpt_frames is None else ckpt_frames + 1)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if kwargs.get("strategy", "auto") == "auto" and n_ranks > 1:  # DDP searches for unused parameters only where
        # some backward leaves some without a gradient (`SafeRLModule.ddp_unused_parameters`)
        kwargs["strategy"] = "ddp_find_unused_parameters_true" if module.ddp_unused_parameters else "ddp"
    # default_root_dir: where Lightning's own SLURM requeue handler would write hpc_ckpt_*.ckpt (this run's dir)
    return L.Trainer(**kwargs, max_epochs=max_epochs, callbacks=callbacks, logger=logger, default_root_dir=run_dir,
                     plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, log_every_n_steps=1)


# ---------------------------------------------------------------- command line
def _check_group_overrides(argv: list[str]) -> None:
    """Unknown `env=`/`algo=`/... names and unknown keys fail here with one line, before Hydra's multi-line
    message."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in GROUPS and value not in ("null", ""):
            for name in value.split(","):  # multirun sweeps: env=a,b
                if not (CONF_DIR / key / f"{name}.yaml").is_file():
                    allowed = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
                    raise ConfigError(f"unknown {key} {name!r}; allowed: {', '.join(allowed)}")
        elif sep and key.startswith("hydra/"):  # Hydra's own groups, e.g. hydra/launcher=submitit_slurm
            require(f"{key}={value}")  # the slurm extra
            allowed = hydra_group_options(key)
            if value not in allowed:
                raise ConfigError(f"unknown {key} {value!r}; allowed: {', '.join(allowed)}")
    check_override_keys(argv)


def hydra_group_options(group: str) -> list[str]:
    """The options of a Hydra group (`hydra/launcher`: basic and the installed launcher plugins')."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers the installed plugins' configs
    return sorted(name.removesuffix(".yaml") for name in ConfigStore.instance().list(group))


@hydra.main(config_path=CONF_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from ccpo_pl import quiet

    quiet.install()  # again here: a launcher's job process (submitit) runs this function without `main`
    try:
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)  # as typed: `${...}` too
        metrics = fit(cfg, command=" ".join(["python -m ccpo_pl.fit", *overrides]))
    except ConfigError as err:
        print(f"ccpo_pl.fit: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as err:  # preempted (exit 0), numerical fault or failed save (exit 3): one line
        print(f"ccpo_pl.fit: {'' if err.exit_code == 0 else 'error: '}{err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training (set-up, final evaluation): as a second one in training
        print("ccpo_pl.fit: interrupted (SIGINT); the last complete checkpoint, if any, is kept", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    if metrics and _rank() == 0:
        print("\n".join(finished_lines(cfg, metrics)))


#: the metrics of the line `fit` ends with (all of them are in the logger and the final evaluation's files)
FINISHED_KEYS = ("train/frames", "eval/avg_reward", "eval/avg_cv", "final/avg_reward", "final/avg_cv")


def finished_lines(cfg: DictConfig, metrics: dict[str, float]) -> list[str]:
    """What `fit` prints at the end: where the run is, its headline numbers, and the commands that come next."""
    run_dir = Path(cfg.log_dir) / cfg.run_name
    logs = LOGGER_DIRS.get(cfg.logger.name, cfg.logger.name)
    final = ", the final evaluation in eval/" if (run_dir / "eval" / "summary.json").is_file() else ""
    lines = [f"ccpo_pl.fit: run {run_dir} at {int(metrics.get('train/frames', 0))} frames: checkpoints/, {logs}/"
             f"{final}",
             " ".join(f"{k}={metrics[k]:.4g}" for k in FINISHED_KEYS if k in metrics),
             f"next: python -m ccpo_pl.evaluate run={run_dir}"]
    if cfg.logger.name == "tensorboard":
        lines.append(f"      tensorboard --logdir {run_dir}")
    return lines


def _quiet_disk_errors_in_threads(args) -> None:
    """threading.excepthook: a full disk in a writer thread (TensorBoard's) is reported once, in one line, when
    the main thread meets it; other thread errors as Python reports them."""
    from ccpo_pl import checkpointing  # here, not at the top: it imports Lightning

    if checkpointing.storage_cause(args.exc_value, DISK_ERRNOS) is None:
        threading.__excepthook__(args)


#: Hydra's own `--info <topic>` (any other `--info` is ccpo_pl's: the config with its comments)
HYDRA_INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def print_info(overrides: list[str]) -> None:
    """`--info [overrides]`: the composed run config with each key's comment from conf/ (`confdoc.describe`)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ccpo_pl.confdoc import describe

    try:
        print(describe(overrides), end="")
    except (HydraException, OmegaConfBaseException) as err:
        print(f"ccpo_pl.fit: error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    from ccpo_pl import quiet

    quiet.install()  # third-party messages no user acts on (each named in ccpo_pl/quiet.py)
    threading.excepthook = _quiet_disk_errors_in_threads
    argv = sys.argv[1:]
    if "--info" in argv and argv[argv.index("--info") + 1:][:1] not in [[t] for t in HYDRA_INFO_TOPICS]:
        overrides = [a for a in argv if a != "--info"]
        refuse_or_run("ccpo_pl.fit", lambda: _check_group_overrides(overrides), lambda: print_info(overrides))
        return
    refuse_or_run("ccpo_pl.fit", lambda: _check_group_overrides(argv), _hydra_main)


if __name__ == "__main__":
    main()
