"""CPU threads per training process: a fixed count (`threads=N`), or adaptive (`threads=null`, the default).

Why adaptive: the update is hundreds of small kernels, each a parallel region that ends in a barrier. On an idle
machine two threads make an update faster; with another busy process on the machine the second thread is
descheduled for a whole time slice in many of those regions and every region waits for it, so one thread is then
several times faster (`benchmarks/ccpo_throughput.py --load 1`; the timings are in docs/performance.md, "Threads on
a shared machine"). Neither count is right on both machines, and the load changes during a run (a second seed
starts, an editor compiles), so the count is chosen from the update times of the run itself:

- `ThreadChoice` runs the current count (the incumbent) and, once every `period` blocks of updates, one block with
  the other count (a probe). A probe faster than the incumbent's latest block by `margin` becomes the incumbent;
  a probe that loses doubles the period (up to `max_period`), so a settled run probes rarely. An incumbent block
  much slower than the one before it (the load changed) brings the next probe forward.
- `ThreadTuner` is the Lightning callback that times each training step and applies the choice. Compiled update
  kernels read the thread count when they run (inductor's `cpp.dynamic_threads`), so a change costs no compilation.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from lightning.pytorch.callbacks import Callback


def cores_per_process(local_procs: int, cpu_count: int | None = None) -> int:
    """The most threads one of `local_procs` processes on this node should use: the cores this process may run
    on (its affinity mask, e.g. a SLURM or taskset allocation), shared evenly, at least one."""
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(cpu_count) // max(1, int(local_procs)))


class ThreadChoice:
    """Picks the thread count, from `candidates` (most first), whose updates take least time now (see the module
    docstring). `record(seconds)` takes each update's duration and returns a count to switch to, or None."""

    def __init__(self, candidates: tuple[int, ...], *, min_updates: int = 20, min_seconds: float = 0.25,
                 warmup: int = 3, margin: float = 0.1, min_period: int = 2, max_period: int = 32,
                 slower: float = 1.5):
        if len(candidates) != 2:
            raise ValueError(f"ThreadChoice takes two candidate counts, got {candidates!r}")
        self.candidates = tuple(int(c) for c in candidates)
        self.min_updates, self.min_seconds, self.warmup = min_updates, min_seconds, warmup
        self.margin, self.min_period, self.max_period, self.slower = margin, min_period, max_period, slower
        self.incumbent = self.candidates[0]
        self.current = self.incumbent
        self.period = min_period
        self.blocks_since_probe = 0
        self.last_incumbent: float | None = None  # median seconds per update of the incumbent's latest block
        self.switches = 0
        self._block: list[float] = []
        self._skip = warmup

    @property
    def other(self) -> int:
        return self.candidates[1] if self.incumbent == self.candidates[0] else self.candidates[0]

    def record(self, seconds: float) -> int | None:
        """One update's wall-clock seconds; the thread count to set now, or None to keep the current one."""
        if self._skip > 0:  # the first updates after a change (thread start-up, caches)
            self._skip -= 1
            return None
        self._block.append(float(seconds))
        if len(self._block) < self.min_updates or sum(self._block) < self.min_seconds:
            return None
        median = statistics.median(self._block)
        self._block = []
        return self._end_block(median)

    def _end_block(self, median: float) -> int | None:
        if self.current != self.incumbent:  # a probe ended
            if median < (1.0 - self.margin) * self.last_incumbent:
                self.incumbent, self.period = self.current, self.min_period
                self.switches += 1
            else:
                self.period = min(2 * self.period, self.max_period)
            self.last_incumbent = median if self.incumbent == self.current else self.last_incumbent
            self.blocks_since_probe = 0
            return self._set(self.incumbent)
        if self.last_incumbent is not None and median > self.slower * self.last_incumbent:
            self.period = self.min_period  # the incumbent got much slower: the load changed, probe soon
        self.last_incumbent = median
        self.blocks_since_probe += 1
        if self.blocks_since_probe >= self.period:
            return self._set(self.other)
        return None

    def _set(self, count: int) -> int | None:
        if count == self.current:
            return None
        self.current = count
        self._skip = self.warmup
        return count


class ThreadTuner(Callback):
    """Times each training step (the update; collection happens before it) and sets `torch.set_num_threads` to
    `ThreadChoice`'s pick. `time/threads`, the mean count over the epoch's updates, is logged at each epoch end."""

    def __init__(self, max_threads: int, **choice_kwargs):
        self.choice = ThreadChoice((int(max_threads), 1), **choice_kwargs)
        self._start: float | None = None
        self._used = [0, 0]  # this epoch: updates, sum of their thread counts

    def on_train_start(self, trainer, pl_module) -> None:
        torch.set_num_threads(self.choice.current)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        self._used[0] += 1
        self._used[1] += self.choice.current
        count = self.choice.record(time.perf_counter() - self._start)
        self._start = None
        if count is not None:
            torch.set_num_threads(count)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        updates, count_sum = self._used
        self._used = [0, 0]
        if updates and trainer.logger is not None:
            trainer.logger.log_metrics({"time/threads": count_sum / updates},
                                       step=int(getattr(pl_module, "global_frames", trainer.global_step)))


def configure_threads(threads: int | None, local_procs: int) -> ThreadTuner | None:
    """Sets this process's CPU threads: `threads` if given; else the cores per process, adapted by the returned
    `ThreadTuner` callback during training (None where there is nothing to choose: one core per process)."""
    if threads:
        torch.set_num_threads(int(threads))
        return None
    most = cores_per_process(local_procs)
    torch.set_num_threads(most)
    if most == 1:
        return None
    import torch._inductor.config as inductor_config  # deferred: loads inductor's config only for adaptive runs

    inductor_config.cpp.dynamic_threads = True  # compiled kernels follow torch.set_num_threads without recompiling
    return ThreadTuner(most)
