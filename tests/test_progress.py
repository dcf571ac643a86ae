"""The progress display (`callbacks.FramesProgressBar`): its text fields, the Rich bar within 80 columns, and the
plain line printed every `progress.every_s` seconds when stdout is not a terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from ccpo_pl.callbacks import FramesProgressBar, progress_fields

EVAL = {"eval/avg_reward": 838.66, "eval/avg_cv": 0.354}


def test_progress_fields_show_frames_of_the_budget_speed_run_eta_and_last_evaluation():
    f = progress_fields(250_000, 1_000_000, 500.0, EVAL)
    assert f == {"frames": "frames 250.0k/1.00M", "speed": "500 steps/s", "eta": "ETA 0:25:00",
                 "eval": "eval R 838.7 CV 0.35"}
    assert progress_fields(1_600, 1_600, 59.2, None) == {"frames": "frames 1,600/1,600", "speed": "59 steps/s",
                                                         "eta": "ETA 0:00:00", "eval": ""}
    assert progress_fields(0, 5_000_000, None, {})["eta"] == "ETA --:--"  # no speed yet: no estimate


def test_rich_bar_fits_one_line_of_80_columns_with_every_field():
    console = Console(file=io.StringIO(), width=80, color_system=None, force_terminal=True)
    progress = FramesProgressBar.make_progress(console)
    f = progress_fields(12_345_678, 50_000_000, 12_345.0, {"eval/avg_reward": -1234.56, "eval/avg_cv": 123.456})
    progress.add_task(f["frames"], total=50_000_000, completed=12_345_678,
                      info=" ".join((f["speed"], f["eta"], f["eval"])))
    console.print(progress.get_renderable())
    lines = console.file.getvalue().rstrip("\n").splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    for text in ("frames 12.35M/50.00M", "12,345 steps/s", "ETA 0:50:50", "eval R -1234.6 CV 123.46"):
        assert text in lines[0]


def test_plain_line_every_interval_when_stdout_is_not_a_terminal(capsys):
    bar = FramesProgressBar(total_frames=1_000, every_s=0.5, terminal=False)
    bar._trainer = SimpleNamespace(callbacks=[SimpleNamespace(final_metrics=EVAL)], current_epoch=1, max_epochs=4)
    bar._start = (100.0, 0)
    for now, frames in ((100.0, 0), (100.2, 100), (100.5, 200), (100.9, 300), (101.0, 400), (102.0, 500)):
        bar.tick(frames, now)
    bar.tick(500, 102.1, force=True)  # the end of training
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["0:00:00", "0:00:00", "0:00:01", "0:00:02", "0:00:02"]
    assert lines[0] == "0:00:00  frames 0/1,000  epoch 2/4  - steps/s  ETA --:--  eval R 838.7 CV 0.35"
    assert lines[3] == "0:00:02  frames 500/1,000  epoch 2/4  250 steps/s  ETA 0:00:02  eval R 838.7 CV 0.35"
