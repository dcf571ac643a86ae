"""`python -m ccpo_pl.report` on the edges of a user's directory: a run directory given itself, runs not yet
evaluated, evaluations older than the run's last checkpoint, and what it prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ccpo_pl import report as report_module


def fake_run(root: Path, name: str, evaluated_at: float | None, ckpt_at: float = 1_000_000.0, **summary) -> Path:
    """A run directory with a last checkpoint written at `ckpt_at` and, if `evaluated_at`, an evaluation then."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    os.utime(run / "checkpoints" / "last.ckpt", (ckpt_at, ckpt_at))
    if evaluated_at is not None:
        (run / "eval").mkdir()
        base = {"task": "ball_circle", "algo": "ccpo", "label": "ccpo", "seed": 0, "episodes": 10, "eps": [10, 20],
                "frames": 1000, "train_wall_s": 3600.0, "avg_reward": 700.0, "avg_cv": 1.0}
        (run / "eval" / "summary.json").write_text(json.dumps(base | summary))
        os.utime(run / "eval" / "summary.json", (evaluated_at, evaluated_at))
    return run


def test_a_run_directory_given_itself_is_named_and_its_report_goes_beside_it(tmp_path, capsys):
    run = fake_run(tmp_path / "logs", "ball_circle-ccpo-s0", evaluated_at=2_000_000.0)
    report_module.main([str(run)])
    printed = capsys.readouterr().out.splitlines()
    assert not (run / "report.md").exists() and (tmp_path / "logs" / "report.md").is_file()
    assert printed[-1] == f"ccpo_pl.report: wrote {tmp_path / 'logs' / 'report.md'}"
    assert "| ball_circle | Avg. R ↑ | 700.00 |" in printed  # the table is printed, one seed without "± 0.00"
    assert not any(line.startswith("| ball_circle-ccpo-s0 |") for line in printed)  # the runs list stays in the file
    text = (tmp_path / "logs" / "report.md").read_text()
    assert "| ball_circle-ccpo-s0 | ball_circle | ccpo | 0 |" in text and "| . |" not in text


def test_an_out_without_an_extension_gets_the_markdown_one_and_its_table_beside_it(tmp_path, capsys):
    run = fake_run(tmp_path / "logs", "ball_circle-ccpo-s0", evaluated_at=2_000_000.0)
    report_module.main([str(run), "--out", str(tmp_path / "table")])
    assert capsys.readouterr().out.splitlines()[-1] == f"ccpo_pl.report: wrote {tmp_path / 'table.md'}"
    assert (tmp_path / "table.md").read_text().startswith("# CCPO paper Table 1 metrics")
    assert (tmp_path / "table.csv").is_file() and not (tmp_path / "table").exists()


def test_unevaluated_runs_and_stale_evaluations_are_named_in_one_warning_each(tmp_path, capsys):
    logs = tmp_path / "logs"
    fake_run(logs, "fresh", evaluated_at=2_000_000.0)
    fake_run(logs, "stale", evaluated_at=500_000.0, seed=1)
    fake_run(logs, "never", evaluated_at=None)
    text = report_module.report([logs])
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("ccpo_pl.report: warning: ") for w in warnings)
    assert "never'" in warnings[0] and "not evaluated (no eval/summary.json)" in warnings[0]
    assert "stale'" in warnings[1] and "older than checkpoints/last.ckpt" in warnings[1]
    assert "| ball_circle | seeds | 2 |" in text  # the stale evaluation still counts: it is what there is


def test_thresholds_outside_the_trained_range_are_left_out_of_the_averages_unless_asked(tmp_path):
    run = fake_run(tmp_path / "logs", "wide", evaluated_at=2_000_000.0, eps=[20, 40, 90], eps_range=[10, 70],
                   behavior=[20, 60], policy="deterministic", avg_reward=700.0, avg_cv=10.0)
    rows = [("deterministic", 20, 500.0, 0.0), ("deterministic", 40, 700.0, 1.0), ("deterministic", 90, 900.0, 29.0),
            ("stochastic", 20, 450.0, 2.0), ("stochastic", 40, 650.0, 4.0), ("stochastic", 90, 550.0, 40.0)]
    lines = ["policy,eps,reward_mean,reward_std,cost_mean,cost_std,cv,cv_per_episode,seen,extrapolation"]
    lines += [f"{p},{e},{r},0,{e + cv},0,{cv},{cv},{int(e == 20)},{int(e == 90)}" for p, e, r, cv in rows]
    (run / "eval" / "per_eps.csv").write_text("\n".join(lines) + "\n")
    text = report_module.report([tmp_path / "logs"])
    assert "| ball_circle | Avg. R ↑ | 600.00 |" in text  # (500 + 700) / 2: eps = 90 left out
    assert "| ball_circle | Avg. CV ↓ | **0.50** |" in text
    assert "| ball_circle | Avg. R-G ↑ | 700.00 |" in text  # the unseen thresholds inside the range: 40
    assert "| ball_circle | Avg. CV ↓ (stochastic) | **3.00** |" in text
    assert "left out, outside the trained range: eps = 90" in text and "are left out of its averages" in text
    asked = report_module.report([tmp_path / "logs"], extrapolated=True)
    assert "| ball_circle | Avg. R ↑ | 700.00 |" in asked and "| ball_circle | Avg. CV ↓ | **10.00** |" in asked
    assert "left out" not in asked


def test_an_extrapolated_evaluation_without_its_per_threshold_file_is_skipped_with_a_warning(tmp_path, capsys):
    fake_run(tmp_path / "logs", "wide", evaluated_at=2_000_000.0, eps=[40, 90], eps_range=[10, 70])
    fake_run(tmp_path / "logs", "narrow", evaluated_at=2_000_000.0, eps=[40, 70], eps_range=[10, 70], seed=1)
    text = report_module.report([tmp_path / "logs"])
    (warning,) = capsys.readouterr().err.splitlines()
    assert "wide" in warning and "per_eps.csv' is needed to leave out the extrapolated thresholds" in warning
    assert "| ball_circle | seeds | 1 |" in text


def test_a_run_without_a_final_evaluation_is_reported_from_its_newest_evaluate_output(tmp_path, capsys):
    """experiment=smoke trains with eval.final_episodes=0: after `evaluate` (eval-<date-time>/), report reads that."""
    run = fake_run(tmp_path / "logs", "smoke", evaluated_at=None)
    base = {"task": "ball_circle", "algo": "ccpo", "label": "ccpo", "seed": 0, "episodes": 2, "eps": [25, 35],
            "frames": 1000, "train_wall_s": 60.0, "avg_cv": 0.0}
    for name, reward in (("eval-20261208-010000", 1.0), ("eval-20261208-020000", 2.0),
                         ("eval-20261208-020000-2", 3.0), ("eval-20261208-030000", None)):  # the last: incomplete
        (run / name).mkdir()
        if reward is not None:
            (run / name / "summary.json").write_text(json.dumps(base | {"avg_reward": reward}))
    assert report_module.newest_evaluation(run) == run / "eval-20261208-020000-2" / "summary.json"
    text = report_module.report([tmp_path / "logs"])
    assert "| ball_circle | Avg. R ↑ | 3.00 |" in text
    err = capsys.readouterr().err
    assert "has no final evaluation (eval/): using its newest evaluation eval-20261208-020000-2/" in err
    assert "warning" not in err
    assert report_module.newest_evaluation(fake_run(tmp_path / "logs", "none", evaluated_at=None)) is None
