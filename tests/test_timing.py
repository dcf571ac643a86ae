"""The run's wall-clock: elapsed seconds over resumes and the steady-state throughput after the first epoch."""

from __future__ import annotations

import pytest

from ccpo_pl import timing
from ccpo_pl.timing import WallClock


def test_steady_metrics_leave_out_the_first_epoch_and_the_evaluation(monkeypatch):
    now = iter([100.0, 110.0, 130.0, 150.0, 160.0, 161.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(now))
    clock = WallClock()
    clock.elapsed_before = 1000.0  # an earlier process of the same run
    clock.start()  # t = 100
    clock.add_update(2.0)
    clock.mark_epoch(400)  # t = 110
    clock.add_eval(4.0)
    for _ in range(4):
        clock.add_update(1.5)
    clock.mark_epoch(1200)  # t = 130
    assert clock.elapsed_s() == 1050.0  # t = 150
    metrics = clock.stop()  # t = 160
    assert metrics["time/loop_s"] == 60.0 and metrics["time/eval_s"] == 4.0 and metrics["time/updates"] == 5.0
    assert metrics["time/steady_env_steps_per_s"] == pytest.approx(800 / (20.0 - 4.0))
    assert metrics["time/steady_update_ms"] == pytest.approx(1500.0)
    assert clock.metrics is metrics


def test_one_epoch_has_no_steady_state_metrics(monkeypatch):
    now = iter([0.0, 5.0, 6.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(now))
    clock = WallClock()
    assert clock.elapsed_s() == 0.0  # before the loop starts: nothing yet
    clock.start()
    clock.mark_epoch(400)
    metrics = clock.stop()
    assert metrics["time/loop_s"] == 6.0 and "time/steady_env_steps_per_s" not in metrics
