"""Lightning callbacks: a progress bar of the whole run in env frames, with the last evaluation; a DDP sync check;
preemption (checkpoint at a safe point on SIGTERM/SIGINT/SLURM requeue); log flushing after every collection; the
run's record (`config.yaml`, `commands.txt`) when training starts.

Five independent callbacks, each short; they share the trainer's rollout stream (`_stream`) and fit.py builds them
together, so one module holds them.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar
from omegaconf import OmegaConf

from ccpo_pl import checkpointing
from ccpo_pl.faults import INTERRUPTED_EXIT, Preempted, StorageError


def _stream(trainer):
    """The train iterable of the trainer's rollouts (`data.RolloutData`), None before it is built."""
    return getattr(trainer.datamodule, "stream", None)


def _count(n: float) -> str:
    """A frame count in at most 6 characters: 99,999, 123.5k, 12.34M."""
    return f"{n:,.0f}" if n < 100_000 else f"{n / 1e3:.1f}k" if n < 999_950 else f"{n / 1e6:.2f}M"


def _duration(seconds: float | None) -> str:
    """h:mm:ss, or --:-- when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_fields(frames: int, total: int, steps_per_s: float | None,
                    eval_metrics: dict[str, float] | None) -> dict[str, str]:
    """The progress bar's text fields: `frames` (collected / budget, all ranks), `speed` (environment steps per
    second since training started in this process, evaluations included), `eta` (the rest of the budget at that
    speed) and `eval` (the last evaluation's Avg. R and Avg. CV over `eps.eval`; empty before the first)."""
    eta = (max(total - frames, 0) / steps_per_s) if steps_per_s else None
    evaluation = ""
    if eval_metrics and "eval/avg_reward" in eval_metrics:
        evaluation = f"eval R {eval_metrics['eval/avg_reward']:.1f} CV {eval_metrics.get('eval/avg_cv', math.nan):.2f}"
    return {"frames": f"frames {_count(frames)}/{_count(total)}",
            "speed": f"{steps_per_s:,.0f} steps/s" if steps_per_s else "- steps/s",
            "eta": f"ETA {_duration(eta)}", "eval": evaluation}


class FramesProgressBar(ProgressBar):
    """Progress of the whole run in environment frames: frames / `total_frames`, environment steps per second, the
    time left for the whole budget, and the last evaluation's Avg. R and Avg. CV (`evaluation.PeriodicEvaluation`).

    In a terminal, one Rich bar line that fits 80 columns. When stdout is not a terminal (a SLURM log, `> log`),
    the same fields as a plain line every `every_s` seconds (and at the end), each starting with the elapsed time.
    Rank 0 only (Lightning disables the others).
    """

    def __init__(self, total_frames: int, every_s: float = 60.0, refresh_per_second: float = 2.0,
                 terminal: bool | None = None):
        super().__init__()
        self.total_frames, self.every_s = int(total_frames), float(every_s)
        self.refresh_per_second = refresh_per_second  # Rich's redraws (its thread; see docs/performance.md)
        self.terminal = terminal  # None: whether stdout is a terminal, decided when training starts
        self._enabled = True
        self._progress = self._task = None
        self._start: tuple[float, int] | None = None  # (time, frames) when training started in this process
        self._last_line: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    # ---------------------------------------------------------------- what is shown
    def fields(self, frames: int, now: float) -> dict[str, str]:
        start_t, start_frames = self._start or (now, frames)
        speed = (frames - start_frames) / (now - start_t) if now > start_t and frames > start_frames else None
        evaluation = next((cb.final_metrics for cb in self.trainer.callbacks if hasattr(cb, "final_metrics")), None)
        return progress_fields(frames, self.total_frames, speed, evaluation)

    def line(self, frames: int, now: float) -> str:
        """The plain progress line (not a terminal)."""
        f = self.fields(frames, now)
        elapsed = now - self._start[0] if self._start else 0.0
        epoch = min(self.trainer.current_epoch + 1, self.trainer.max_epochs)  # past the last after it ends
        epoch = f"epoch {epoch}/{self.trainer.max_epochs}"
        return "  ".join(x for x in (_duration(elapsed), f["frames"], epoch, f["speed"], f["eta"], f["eval"]) if x)

    def tick(self, frames: int, now: float, force: bool = False) -> None:
        """Update the bar, or print a line when `every_s` seconds have passed since the last one (or `force`)."""
        if self._progress is not None:
            f = self.fields(frames, now)
            self._progress.update(self._task, completed=min(frames, self.total_frames), description=f["frames"],
                                  info=" ".join(x for x in (f["speed"], f["eta"], f["eval"]) if x))
        elif force or self._last_line is None or now - self._last_line >= self.every_s:
            self._last_line = now
            print(self.line(frames, now), flush=True)

    @staticmethod
    def make_progress(console=None, refresh_per_second: float = 2.0):
        """The Rich display: the frames field, a bar that takes the room left, then speed, ETA and evaluation."""
        from rich.progress import BarColumn, Progress, TextColumn

        return Progress(TextColumn("{task.description}"), BarColumn(bar_width=None),
                        TextColumn("{task.fields[info]}"), console=console, expand=True,
                        refresh_per_second=refresh_per_second)

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        frames = int(getattr(pl_module, "global_frames", 0))
        self._start, self._last_line = (time.monotonic(), frames), None
        if not self._enabled:
            return
        if self.terminal if self.terminal is not None else sys.stdout.isatty():
            self._progress = self.make_progress(refresh_per_second=self.refresh_per_second)
            self._task = self._progress.add_task("", total=self.total_frames, info="")
            self._progress.start()
        self.tick(frames, time.monotonic())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._enabled:
            self.tick(int(getattr(pl_module, "global_frames", 0)), time.monotonic())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._enabled and self._progress is not None:  # the evaluation just ran: show its numbers
            self.tick(int(getattr(pl_module, "global_frames", 0)), time.monotonic())

    def on_train_end(self, trainer, pl_module) -> None:
        if self._enabled:
            self.tick(int(getattr(pl_module, "global_frames", 0)), time.monotonic(), force=True)
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, *args, **kwargs) -> None:
        (self._progress.console.print if self._progress is not None else print)(*args, **kwargs)


class DDPSyncCheck(Callback):
    """After every training batch, all-gather the module's parameters and buffers and check the ranks agree.

    Enabled with `check_sync=true`. A mismatch above `tol` raises (custom updates that bypass DDP's gradient
    all-reduce, such as dual solves or direct parameter writes, are where ranks drift apart silently).
    """

    def __init__(self, tol: float = 0.0):
        self.tol, self.checks, self.max_diff = float(tol), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flat = torch.cat([t.detach().reshape(-1).float() for t in (*pl_module.parameters(), *pl_module.buffers())])
        gathered = trainer.strategy.all_gather(flat)
        if gathered.dim() == 1:
            gathered = gathered.unsqueeze(0)
        diff = float((gathered - gathered[:1]).abs().max())
        self.checks += 1
        self.max_diff = max(self.max_diff, diff)
        if diff > self.tol:
            raise RuntimeError(f"ranks' parameters differ by {diff:.3g} after batch {batch_idx}")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"ddp_sync_checks={self.checks} max_param_diff={self.max_diff:.3g} ranks={trainer.world_size}")


class Preemption(Callback):
    """On SIGTERM or SIGINT (SLURM, Ctrl-C): write `path` at the next safe point, then stop (`Preempted`).

    The signal handler only records the signal. Safe points, reached at the same place on every rank (the request
    is or-reduced across ranks): the end of the last update of a collection (mid-epoch; the checkpoint resumes
    with the epoch's next collection), or the start of an epoch (the previous epoch's last.ckpt is already
    written, so nothing more is saved). The last collection of an epoch waits for the epoch's end so that its
    evaluation and periodic checkpoint still happen, and so does every collection once `total_frames` are
    collected (the run is then finishing its last epoch). A second Ctrl-C stops the process at once, exit status
    130, without saving: like a kill, it leaves the last complete checkpoint (a save in progress is abandoned in its
    temporary file). Handlers are installed when training starts, replacing Lightning's SIGTERM
    handler for the duration of training, and restored after.

    Under SLURM with Lightning's auto-requeue (the default there), the requeue signal (`SLURMEnvironment.
    requeue_signal`, SIGUSR1) gets the same treatment and then the job is requeued with `scontrol requeue`, as
    Lightning would do; Lightning's own handler would instead save at whatever point of an update the signal
    arrives, into `default_root_dir`.
    """

    def __init__(self, path: str | os.PathLike, total_frames: int | None = None):
        self.path, self.total_frames = Path(path), total_frames
        self.signum: int | None = None
        self.requeue = False
        self.requeue_signal: int | None = None
        self._previous: dict[int, object] = {}
        self._module = None

    # ---------------------------------------------------------------- handlers
    def watched_signals(self, trainer) -> list[int]:
        """SIGTERM, SIGINT, and SLURM's requeue signal when Lightning's auto-requeue is on."""
        signals = [signal.SIGTERM, signal.SIGINT]
        env = getattr(trainer, "_accelerator_connector", None)  # where Lightning's own signal handling looks
        env = getattr(env, "cluster_environment", None)
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None:
            signals.append(env.requeue_signal)
        return signals

    def on_train_start(self, trainer, pl_module) -> None:
        self._module = pl_module
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.watched_signals(trainer):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
            if signum not in (signal.SIGTERM, signal.SIGINT):
                self.requeue_signal = signum

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            self.exit_at_once()  # impatient second Ctrl-C
        self.requeue |= signum == self.requeue_signal
        self.signum = self.signum or signum

    def exit_at_once(self) -> None:
        """End the process now (no save, no clean-up: as safe as a kill), after one line saying what is kept."""
        frames = getattr(self._module, "global_frames", "?")
        kept = (f"the last complete checkpoint {str(self.path)!r} is kept" if self.path.is_file()
                else "no checkpoint yet")
        line = (f"ccpo_pl.fit: stopped at once by a second SIGINT at frame {frames}, nothing saved; {kept}; re-run "
                f"the same command to resume\n")
        os.write(2, line.encode())
        os._exit(INTERRUPTED_EXIT)

    def restore_handlers(self) -> None:
        """Put back the handlers that were there when training started."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore_handlers()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.restore_handlers()

    # ---------------------------------------------------------------- safe points
    def _stop_requested(self, trainer) -> bool:
        """Whether any rank got a signal (a collective: call at the same point on every rank)."""
        return bool(trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        per_collect = getattr(_stream(trainer), "updates_per_collect", 1)
        if (batch_idx + 1) % per_collect or batch_idx + 1 >= trainer.num_training_batches:
            return  # not a collection boundary, or the epoch's end (its own checkpoint follows)
        if self.total_frames is not None and getattr(pl_module, "global_frames", 0) >= self.total_frames:
            return  # the budget is collected: a checkpoint here would look finished to a re-run
        if self._stop_requested(trainer):
            trainer.save_checkpoint(self.path, weights_only=False)  # full training state; unset, Lightning logs a note
            self.stop(trainer, pl_module, saved=True)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._stop_requested(trainer):
            self.stop(trainer, pl_module, saved=self.path.is_file())

    def stop(self, trainer, pl_module, saved: bool) -> None:
        """Requeue the SLURM job if that was asked for, then end the run with a message on how to resume."""
        name = signal.Signals(self.signum).name if self.signum else "a signal on another rank"
        frames = getattr(pl_module, "global_frames", trainer.global_step)
        where = f"checkpoint {str(self.path)!r}" if saved else "no checkpoint yet (nothing trained)"
        message = f"stopped by {name} at frame {frames}; {where}; re-run the same command to resume"
        if self.requeue and trainer.is_global_zero:
            message += "; " + requeue_slurm_job()
        self.restore_handlers()
        raise Preempted(message)


def requeue_slurm_job() -> str:
    """`scontrol requeue` this job (an array task as <array job>_<task>), as Lightning's auto-requeue does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not requeued (no SLURM_JOB_ID)"
    try:
        code = subprocess.call(["scontrol", "requeue", job])
    except OSError as err:
        return f"requeueing SLURM job {job} failed ({err.strerror or err})"
    return f"SLURM job {job} requeued" if code == 0 else f"requeueing SLURM job {job} failed (scontrol exit {code})"


class FlushLogs(Callback):
    """Flush the loggers once per collection, after its metrics are logged: a killed run's curves end at its last
    collection instead of up to two minutes earlier (TensorBoard's default flush interval). CSV rows are written
    only here and at the end; W&B and MLflow send each value as it is logged (their `save` does nothing)."""

    def __init__(self):
        self._collects: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        collects = getattr(_stream(trainer), "collects", None)
        if collects != self._collects:
            self._collects = collects
            for logger in trainer.loggers:
                try:
                    logger.save()
                except OSError as err:
                    where = getattr(logger, "log_dir", None) or logger.save_dir
                    raise StorageError(f"cannot write the logs in {str(where)!r} ({err.strerror or err}); the last "
                                       f"complete checkpoint is kept; free space, then re-run the same command "
                                       f"to resume") from None


class RecordRun(Callback):
    """When training really starts (rank 0): write `config.yaml` atomically (fsync, rename) and append the command
    line to `commands.txt`. A run that failed before this point has not claimed its name. Every checkpoint carries
    the resolved config as plain data (`hyper_parameters.run_config`), which `load_policy` and resumes read, and the
    task's action box (`hyper_parameters.action_box`, [low, high]), which `ccpo_pl.load` reads without building an
    env."""

    def __init__(self, run_dir: Path, plain: dict, command: str | None,
                 action_box: tuple[float, float] | None = None):
        self.run_dir, self.plain, self.command = run_dir, plain, command
        self.action_box = None if action_box is None else [float(x) for x in action_box]
        self.started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = True
        if trainer.global_rank != 0:
            return
        checkpointing.atomic_write_text(OmegaConf.to_yaml(self.plain), self.run_dir / "config.yaml")
        if self.command:
            with open(self.run_dir / "commands.txt", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command}\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("hyper_parameters", {})["run_config"] = self.plain
        if self.action_box is not None:
            checkpoint["hyper_parameters"]["action_box"] = self.action_box
