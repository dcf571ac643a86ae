"""Lightning callbacks: a progress bar with env frames and evaluation cost per threshold; a DDP sync check;
preemption (checkpoint at a safe point on SIGTERM/SIGINT/SLURM requeue); log flushing after every collection."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, RichProgressBar

from ccpo_pl.faults import Preempted, StorageError

#: exit status after a second Ctrl-C (128 + SIGINT, as shells report a process ended by it)
INTERRUPTED_EXIT = 130


def _stream(trainer):
    """The train iterable of the trainer's rollouts (`data.RolloutData`), None before it is built."""
    return getattr(trainer.datamodule, "stream", None)


class FramesProgressBar(RichProgressBar):
    """Rich progress bar showing env frames, and J_c(eps) of the last evaluation for each evaluation threshold (the
    `latest_eval` of `evaluation.PeriodicEvaluation`)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items["frames"] = f"{getattr(pl_module, 'global_frames', 0):,}"
        latest = next((cb.latest_eval for cb in trainer.callbacks if hasattr(cb, "latest_eval")), {})
        if latest:
            items["eval cost"] = " ".join(f"{e:g}:{c:.1f}" for e, c in latest.items())
        return items


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
