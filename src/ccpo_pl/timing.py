"""`WallClock`: the wall-clock of a training run, for the checkpoint and the benchmarks.

- `elapsed_s`: seconds of training over every process that worked on the run (a resume adds to the checkpoint's);
- after training, `metrics`: this process's `time/loop_s` (collection + updates + evaluation), `time/eval_s`,
  `time/update_s`, `time/updates`, and, from the second epoch on (after one-off compilation and warm-up),
  `time/steady_env_steps_per_s` (frames per second outside the evaluation) and `time/steady_update_ms`.
The module marks the loop's start, each epoch's end (after that epoch's evaluation) and the end; updates and
evaluations add their seconds.
"""

from __future__ import annotations

import time


class WallClock:
    """Totals of one process's training loop and the run's elapsed seconds (module docstring)."""

    def __init__(self):
        self.totals = {"loop_s": 0.0, "eval_s": 0.0, "update_s": 0.0, "updates": 0}
        self.elapsed_before = 0.0  # seconds of the processes before this one (from the checkpoint)
        self.metrics: dict[str, float] = {}  # after training: `time/...` of this process
        self._start: float | None = None
        self._marks: list[tuple[float, ...]] = []

    def add_update(self, seconds: float) -> None:
        self.totals["update_s"] += seconds
        self.totals["updates"] += 1

    def add_eval(self, seconds: float) -> None:
        self.totals["eval_s"] += seconds

    def start(self) -> None:
        self._start = time.perf_counter()
        self._marks = []

    def mark_epoch(self, frames: int) -> None:
        """An epoch ended at `frames` global frames (after its evaluation)."""
        t = self.totals
        self._marks.append((frames, time.perf_counter() - self._start, t["eval_s"], t["update_s"], t["updates"]))

    def elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, over every process that worked on this run."""
        return self.elapsed_before + (0.0 if self._start is None else time.perf_counter() - self._start)

    def stop(self) -> dict[str, float]:
        """The loop ended: sets and returns `metrics`."""
        self.totals["loop_s"] = time.perf_counter() - self._start
        self.metrics = {f"time/{k}": float(v) for k, v in self.totals.items()}
        if len(self._marks) >= 2:  # steady state: after the first epoch (one-off compilation, warm-up)
            (f0, t0, e0, u0, n0), (f1, t1, e1, u1, n1) = self._marks[0], self._marks[-1]
            self.metrics["time/steady_env_steps_per_s"] = (f1 - f0) / ((t1 - t0) - (e1 - e0))
            self.metrics["time/steady_update_ms"] = 1e3 * (u1 - u0) / max(n1 - n0, 1)
        return self.metrics
