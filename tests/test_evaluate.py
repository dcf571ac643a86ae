"""The CCPO paper's metrics, the evaluate CLI, the training-time evaluation logs, and the report command."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import CSV_COLUMNS, evaluate_run
from ccpo_pl.fit import CONF_DIR, fit
from ccpo_pl.metrics import cost_violation, mean_std, outside_range, per_eps_stats, seen_mask, summarize
from ccpo_pl.report import report

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- metrics on hand-made episodes
def test_per_eps_stats_and_cv_on_hand_made_episodes():
    eps = [10.0, 20.0, 30.0]
    ep_r = torch.tensor([[1.0, 3.0], [10.0, 10.0], [0.0, 4.0]])
    ep_c = torch.tensor([[12.0, 16.0], [5.0, 15.0], [40.0, 30.0]])  # J_c = 14, 10, 35
    s = per_eps_stats(eps, ep_r, ep_c)
    assert s["reward_mean"] == [2.0, 10.0, 2.0]
    assert s["reward_std"] == [1.0, 0.0, 2.0]  # ddof=0
    assert s["cost_mean"] == [14.0, 10.0, 35.0]
    assert s["cost_std"] == [2.0, 5.0, 5.0]
    assert s["cv"] == [4.0, 0.0, 5.0]  # max(0, J_c - eps): 14-10, below 20, 35-30
    assert cost_violation(torch.tensor([9.0, 11.0]), torch.tensor([10.0, 10.0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="3 thresholds"):
        per_eps_stats(eps, ep_r[:2], ep_c[:2])


def test_unseen_thresholds_select_r_g_and_cv_g():
    eps = [10, 20, 30, 40, 50, 60]
    seen = seen_mask(eps, [20, 40, 60])
    assert seen == [False, True, False, True, False, True]
    reward, cv = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 10.0, 3.0, 0.0, 6.0, 0.0]
    s = summarize(reward, cv, seen)
    assert s["avg_reward"] == pytest.approx(3.5) and s["avg_cv"] == pytest.approx(19.0 / 6)
    assert s["avg_reward_unseen"] == pytest.approx((1 + 3 + 5) / 3)  # eps 10, 30, 50
    assert s["avg_cv_unseen"] == pytest.approx((0 + 3 + 6) / 3)
    all_seen = summarize([1.0], [0.0], [True])
    assert math.isnan(all_seen["avg_reward_unseen"]) and math.isnan(all_seen["avg_cv_unseen"])
    assert outside_range([5, 10, 70, 71], [10, 70]) == [True, False, False, True]


def test_mean_std_over_seeds_ignores_missing_values():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([2.0, float("nan"), None]) == (2.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


# ---------------------------------------------------------------- a tiny trained run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", f"log_dir={log_dir}", "total_frames=800",
                                           "run_name=evaluated", "eval.final_episodes=1"])
    metrics = fit(cfg, command="python -m ccpo_pl.fit experiment=smoke")
    assert math.isfinite(metrics["final/avg_reward"])
    return log_dir / "evaluated"


def test_fit_ends_with_the_final_evaluation_files(run_dir):
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["eps"] == [10.0, 40.0, 70.0] and summary["episodes"] == 1
    assert summary["frames"] == 800 and summary["task"] == "ball_circle" and summary["label"] == "ccpo"
    assert summary["train_wall_s"] > 0
    assert summary["avg_reward_unseen"] is not None  # 10 and 70 are not behaviour thresholds
    assert "python -m ccpo_pl.fit experiment=smoke" in (run_dir / "commands.txt").read_text()


def test_training_evaluation_logs_cv_unseen_averages_layout_and_plot(run_dir):
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in ("eval/eps_10/cv", "eval/eps_70/cost", "eval/avg_reward_unseen", "eval/avg_cv_unseen",
                 "eval/avg_cv"):
        assert name in tags["scalars"], name
    assert "eval/curves" in tags["images"]
    assert [e.step for e in acc.Images("eval/curves")] == [e.step for e in acc.Scalars("eval/avg_cv")]
    assert "custom_scalars__config__" in tags["tensors"]


def test_evaluate_cli_writes_csv_table_summary_and_a_real_png(run_dir, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.evaluate", f"run={run_dir}", "eps=[15,40,80]",
                           "episodes=2", "seed=3", f"out={out}", "batch_envs=4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "avg_reward=" in proc.stdout.strip().splitlines()[-1]
    rows = list(csv.DictReader((out / "per_eps.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [float(r["eps"]) for r in rows] == [15.0, 40.0, 80.0]
    assert [r["seen"] for r in rows] == ["0", "1", "0"] and [r["extrapolation"] for r in rows] == ["0", "0", "1"]
    for r in rows:
        assert float(r["cv"]) == pytest.approx(max(0.0, float(r["cost_mean"]) - float(r["eps"])), abs=1e-4)
    table = (out / "table.md").read_text()
    assert table.count("extrapolation") == 1 and "| 80 |" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"avg_reward", "avg_cv", "avg_reward_unseen", "avg_cv_unseen", "episodes", "eps"}
    assert summary["avg_reward"] == pytest.approx(sum(float(r["reward_mean"]) for r in rows) / 3, rel=1e-4)
    png = out / "curves.png"
    assert png.stat().st_size > 20_000
    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 300 and image.shape[1] >= 600 and image.std() > 0.01  # decodes, not blank
    assert not (run_dir / "eval" / "per_eps.csv").read_text() == (out / "per_eps.csv").read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": []}, "non-empty list"),
    ({"eps": [10, 0]}, "numbers > 0"),
    ({"eps": [-5]}, "numbers > 0"),
    ({"episodes": 0}, "episodes=0"),
    ({"policy": "greedy"}, "allowed: deterministic, stochastic"),
    ({"expect": {"env.name": "car_circle"}}, "env.name='ball_circle' checkpoint, not env.name='car_circle'"),
    ({"expect": {"algo.name": "cvpo"}}, "algo.name='ccpo' checkpoint"),
])
def test_evaluate_refuses_bad_inputs_in_one_line(run_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        evaluate_run(run_dir, **kwargs)
    assert "\n" not in str(err.value)


def test_evaluate_refuses_a_run_without_checkpoint_or_a_foreign_file(run_dir, tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match="has no checkpoints/last.ckpt"):
        evaluate_run(tmp_path / "empty_run")
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_run(tmp_path / "missing")
    future = safe_load(run_dir / "checkpoints" / "last.ckpt")
    future["ccpo"]["format_version"] = 99
    torch.save(future, tmp_path / "future.ckpt")
    with pytest.raises(ConfigError, match="checkpoint format 99"):
        evaluate_run(tmp_path / "future.ckpt")
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(ConfigError, match="not a loadable ccpo_pl checkpoint"):
        evaluate_run(junk)


@pytest.mark.parametrize("args, message", [
    (["eps=[]"], "eps=[] must be a non-empty list"),
    (["expect_env=car_circle"], "not env.name='car_circle'"),
])
def test_evaluate_cli_bad_input_exits_2_with_one_line(run_dir, args, message):
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.evaluate", f"run={run_dir}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "ccpo_pl.evaluate: error:" in line]
    assert len(errors) == 1 and message in errors[0]


# ---------------------------------------------------------------- the report
def _fake_run(root: Path, name: str, **summary) -> None:
    base = {"task": "ball_circle", "algo": "ccpo", "label": "ccpo", "seed": 0, "episodes": 10, "eps": [10, 20],
            "frames": 1000, "train_wall_s": 3600.0, "avg_reward_unseen": None, "avg_cv_unseen": None}
    (root / name / "eval").mkdir(parents=True)
    (root / name / "eval" / "summary.json").write_text(json.dumps(base | summary))


def test_report_aggregates_seeds_per_task_and_label_and_bolds_the_lowest_cv(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_run(sweep, "a", seed=0, avg_reward=700.0, avg_cv=1.0, avg_reward_unseen=690.0, avg_cv_unseen=2.0)
    _fake_run(sweep, "b", seed=1, avg_reward=720.0, avg_cv=3.0, avg_reward_unseen=710.0, avg_cv_unseen=4.0)
    _fake_run(sweep, "c", label="cvpo", algo="cvpo", avg_reward=800.0, avg_cv=0.5)
    _fake_run(sweep, "d", task="car_circle", avg_reward=400.0, avg_cv=0.0)
    text = report([sweep])
    lines = text.splitlines()
    assert "| Task | Stats | ccpo | cvpo |" in lines
    assert "| ball_circle | Avg. R ↑ | 710.00 ± 10.00 | 800.00 ± 0.00 |" in lines
    assert "| ball_circle | Avg. CV ↓ | 2.00 ± 1.00 | **0.50 ± 0.00** |" in lines
    assert "| ball_circle | Avg. CV-G ↓ | **3.00 ± 1.00** | n/a |" in lines  # cvpo has no unseen thresholds
    assert "| ball_circle | seeds | 2 | 1 |" in lines
    assert "| car_circle | Avg. CV ↓ | **0.00 ± 0.00** | n/a |" in lines
    assert lines.index("| ball_circle | seeds | 2 | 1 |") < lines.index("| car_circle | seeds | 1 | 0 |")
    assert (sweep / "report.md").read_text() == text
    rows = {(r["task"], r["label"]): r for r in csv.DictReader((sweep / "report.csv").open())}
    assert float(rows[("ball_circle", "ccpo")]["avg_reward_mean"]) == 710.0
    assert float(rows[("ball_circle", "ccpo")]["avg_cv_std"]) == 1.0 and rows[("ball_circle", "ccpo")]["runs"] == "2"


def test_report_sections_build_one_file_and_regenerate_in_place(tmp_path):
    main, extra = tmp_path / "main", tmp_path / "extra"
    _fake_run(main, "a", avg_reward=700.0, avg_cv=1.0)
    _fake_run(extra, "b", label="v_sac_lag", algo="v_sac_lag", avg_reward=650.0, avg_cv=9.0)
    out = tmp_path / "RESULTS.md"
    first = report([main], out=out, title="CCPO per task")
    report([extra], out=out, title="Baselines at 100k", section=True)
    text = out.read_text()
    assert text.startswith(first) and "## Baselines at 100k" in text and "| ball_circle | Avg. CV ↓ | **9.00 ± 0.00** |" in text
    assert (tmp_path / "RESULTS-baselines-at-100k.csv").is_file() and (tmp_path / "RESULTS.csv").is_file()
    _fake_run(extra, "c", label="v_sac_lag", algo="v_sac_lag", seed=1, avg_reward=660.0, avg_cv=7.0)
    report([extra], out=out, title="Baselines at 100k", section=True)  # regenerated: replaced, not appended
    again = out.read_text()
    assert again.count("## Baselines at 100k") == 1 and "| ball_circle | Avg. CV ↓ | **8.00 ± 1.00** |" in again
    assert again.startswith(first)


def test_report_refuses_a_directory_without_evaluated_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no evaluated runs" in proc.stderr


def test_paper_table1_sweep_runs_each_job_to_its_final_evaluation_and_reports(tmp_path):
    """The experiment's multirun, shrunk to BallCircle x 2 seeds on smoke-sized budgets, then the report."""
    tiny = ["env=ball_circle", "seed=0,1", "paper_budgets.ball_circle=400",
            "collect.num_envs=2", "collect.frames_per_collect=200", "collect.collects_per_epoch=2",
            "collect.batch_size=64", "collect.buffer_size=1000", "algo.hidden=[32,32]", "algo.num_samples=4",
            "algo.compile=false", "eval.episodes=1", "eval.final_episodes=1", "eps.eval=[10,20,30]"]
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.fit", "experiment=paper_table1",
                           f"log_dir={tmp_path / 'paper'}", *tiny], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for seed in (0, 1):
        summary = json.loads((tmp_path / "paper" / f"ball_circle-ccpo-s{seed}" / "eval" / "summary.json").read_text())
        assert summary["seed"] == seed and summary["frames"] == 400 and summary["behavior"] == [20.0, 40.0, 60.0]
    text = report([tmp_path / "paper"])
    assert "| ball_circle | seeds | 2 |" in text
    assert text.count("experiment=paper_table1") == 2  # each run's command, from its commands.txt


@pytest.mark.parametrize("behavior_set, behavior", [("b3", [20, 40, 60]), ("b6", [20, 30, 40, 50, 60, 70])])
def test_eps_sampling_experiment_gives_each_behaviour_set_its_run_and_report_column(behavior_set, behavior):
    from omegaconf import OmegaConf

    from ccpo_pl.fit import validate
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=eps_sampling", f"behavior_set={behavior_set}", "seed=2"],
                      return_hydra_config=True)
    sweep = OmegaConf.to_container(cfg.hydra.sweeper.params)
    del cfg.hydra
    validate(cfg)
    assert list(cfg.eps.behavior) == behavior and len(cfg.eps.eval) == 13
    assert cfg.run_name == f"ball_circle-ccpo-{behavior_set}-s2" and cfg.label == f"ccpo-{behavior_set}"
    assert sweep == {"behavior_set": "b3,b6", "seed": "0,1,2"}
