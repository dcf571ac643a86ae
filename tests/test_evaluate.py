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

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import CSV_COLUMNS, evaluate_run, plot_curves
from ccpo_pl.fit import fit
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
def run_dir(tmp_path_factory, smoke_config):
    log_dir = tmp_path_factory.mktemp("logs")
    cfg = smoke_config(log_dir, "total_frames=800", "run_name=evaluated", "eval.final_episodes=1")
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


def test_training_evaluation_logs_cv_unseen_averages_layout_and_plot(run_dir, tb_events, tb_scalars):
    acc = tb_events(run_dir)
    tags = acc.Tags()
    scalars = tb_scalars(run_dir)  # the per-threshold ones from the runs tb/eps_<eps>/
    for name in ("eval/eps_10/cv", "eval/eps_70/cost", "eval/avg_reward_unseen", "eval/avg_cv_unseen",
                 "eval/avg_cv", "eval/avg_cv_per_episode"):
        assert name in scalars, name
    for name in ("eval/avg_reward_unseen", "eval/avg_cv_unseen", "eval/avg_cv", "eval/avg_cv_per_episode"):
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
    assert f"ccpo_pl.evaluate: wrote per_eps.csv, per_episode.csv, table.md, curves.png and summary.json in {out}" \
        in proc.stdout.splitlines()  # it says where it wrote
    all_rows = list(csv.DictReader((out / "per_eps.csv").open()))
    assert tuple(all_rows[0]) == CSV_COLUMNS
    assert [r["policy"] for r in all_rows] == ["deterministic"] * 3 + ["stochastic"] * 3  # policy=both by default
    rows = all_rows[:3]
    assert [float(r["eps"]) for r in rows] == [15.0, 40.0, 80.0]
    assert [r["seen"] for r in rows] == ["0", "1", "0"] and [r["extrapolation"] for r in rows] == ["0", "0", "1"]
    for r in rows:
        assert float(r["cv"]) == pytest.approx(max(0.0, float(r["cost_mean"]) - float(r["eps"])), abs=1e-4)
    table = (out / "table.md").read_text()
    assert table.count("extrapolation") == 2 and "| 80 |" in table  # one row in each policy's table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"avg_reward", "avg_cv", "avg_reward_unseen", "avg_cv_unseen", "episodes", "eps"}
    assert summary["avg_reward"] == pytest.approx(sum(float(r["reward_mean"]) for r in rows) / 3, rel=1e-4)
    png = out / "curves.png"
    assert png.stat().st_size > 20_000
    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 300 and image.shape[1] >= 600 and image.std() > 0.01  # decodes, not blank
    assert (run_dir / "eval" / "per_eps.csv").read_text() != (out / "per_eps.csv").read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": []}, "non-empty list"),
    ({"eps": [10, 0]}, "numbers > 0"),
    ({"eps": [-5]}, "numbers > 0"),
    ({"episodes": 0}, "episodes=0"),
    ({"policy": "greedy"}, "allowed: deterministic, stochastic, both"),
    ({"extrapolation": "flat"}, "allowed: linear, nearest"),
    ({"extrapolation": "nearest"}, "applies to c_ppo_lag, c_trpo_lag checkpoints only, not algo 'ccpo'"),
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
    future["training_state"]["format_version"] = 99
    torch.save(future, tmp_path / "future.ckpt")
    with pytest.raises(ConfigError, match="checkpoint format 99"):
        evaluate_run(tmp_path / "future.ckpt")
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(ConfigError, match=r"junk.ckpt. was not written by ccpo_pl.fit"):
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
    assert "| ball_circle | Avg. R ↑ | 710.00 ± 10.00 | 800.00 |" in lines
    assert "| ball_circle | Avg. CV ↓ | 2.00 ± 1.00 | **0.50** |" in lines
    assert "| ball_circle | Avg. CV-G ↓ | **3.00 ± 1.00** | n/a |" in lines  # cvpo has no unseen thresholds
    assert "| ball_circle | seeds | 2 | 1 |" in lines
    assert "| car_circle | Avg. CV ↓ | **0.00** | n/a |" in lines
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
    assert text.startswith(first) and "## Baselines at 100k" in text
    assert "| ball_circle | Avg. CV ↓ | **9.00** |" in text
    assert (tmp_path / "RESULTS-baselines-at-100k.csv").is_file() and (tmp_path / "RESULTS.csv").is_file()
    _fake_run(extra, "c", label="v_sac_lag", algo="v_sac_lag", seed=1, avg_reward=660.0, avg_cv=7.0)
    report([extra], out=out, title="Baselines at 100k", section=True)  # regenerated: replaced, not appended
    again = out.read_text()
    assert again.count("## Baselines at 100k") == 1 and "| ball_circle | Avg. CV ↓ | **8.00 ± 1.00** |" in again
    assert again.startswith(first)
    _fake_run(main, "d", seed=1, avg_reward=720.0, avg_cv=3.0)  # the main part regenerated: the sections stay
    head = report([main], out=out, title="CCPO per task")
    final = out.read_text()
    assert final.startswith(head) and "| ball_circle | Avg. R ↑ | 710.00 ± 10.00 |" in head
    assert final.count("## Baselines at 100k") == 1 and final.endswith(again[again.index("<!-- report section"):])


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
def test_eps_sampling_experiment_gives_each_behaviour_set_its_run_and_report_column(behavior_set, behavior,
                                                                                  compose_config):
    from omegaconf import OmegaConf

    from ccpo_pl.fit import validate
    cfg = compose_config("experiment=eps_sampling", f"behavior_set={behavior_set}", "seed=2", return_hydra_config=True)
    sweep = OmegaConf.to_container(cfg.hydra.sweeper.params)
    del cfg.hydra
    validate(cfg)
    assert list(cfg.eps.behavior) == behavior and len(cfg.eps.eval) == 13
    assert cfg.run_name == f"ball_circle-ccpo-{behavior_set}-s2" and cfg.label == f"ccpo-{behavior_set}"
    assert sweep == {"behavior_set": "b3,b6", "seed": "0,1,2"}


def test_a_later_evaluation_reproduces_the_final_stochastic_episodes_whatever_ran_before(run_dir, tmp_path):
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    final = [r for r in csv.DictReader((run_dir / "eval" / "per_episode.csv").open()) if r["policy"] == "stochastic"]
    torch.manual_seed(12345)  # the caller's stream differs from the one fit had after training
    again = evaluate_run(run_dir, eps=summary["eps"], episodes=summary["episodes"], seed=summary["seed"],
                         out=tmp_path / "again", policy="stochastic")
    rows = list(csv.DictReader((tmp_path / "again" / "per_episode.csv").open()))
    assert [(r["eps"], r["reward"], r["cost"]) for r in rows] == [(r["eps"], r["reward"], r["cost"]) for r in final]
    assert again["avg_reward"] == summary["by_policy"]["stochastic"]["avg_reward"]


def test_cv_per_episode_is_the_mean_violation_of_each_episode_and_never_below_the_cv_of_the_mean():
    eps = [10.0, 20.0]
    ep_c = torch.tensor([[0.0, 30.0], [15.0, 25.0]])  # J_c 15 and 20: CV 5 and 0; per episode (0+20)/2, (0+5)/2
    s = per_eps_stats(eps, torch.zeros(2, 2), ep_c)
    assert s["cv"] == [5.0, 0.0] and s["cv_per_episode"] == [10.0, 2.5]
    avg = summarize(s["reward_mean"], s["cv"], [False, True], s["cv_per_episode"])
    assert avg["avg_cv"] == 2.5 and avg["avg_cv_per_episode"] == 6.25 and avg["avg_cv_per_episode_unseen"] == 10.0
    gen = torch.Generator().manual_seed(0)
    costs = torch.rand(7, 9, generator=gen) * 80
    grid = [10.0 * (i + 1) for i in range(7)]
    s = per_eps_stats(grid, costs, costs)
    assert all(a <= b + 1e-12 for a, b in zip(s["cv"], s["cv_per_episode"]))  # Jensen


def test_evaluation_of_both_policies_writes_every_episode_and_both_cv_definitions(run_dir, tmp_path):
    out = tmp_path / "both"
    summary = evaluate_run(run_dir, eps=[15.0, 40.0], episodes=3, seed=1, out=out, batch_envs=4)
    assert summary["policy"] == "deterministic" and set(summary["by_policy"]) == {"deterministic", "stochastic"}
    assert summary["avg_reward"] == summary["by_policy"]["deterministic"]["avg_reward"]
    episodes = list(csv.DictReader((out / "per_episode.csv").open()))
    assert list(episodes[0]) == ["policy", "eps", "episode", "reward", "cost", "length"]
    assert len(episodes) == 2 * 2 * 3 and all(r["length"] == "200" for r in episodes)
    per_eps = list(csv.DictReader((out / "per_eps.csv").open()))
    assert [(r["policy"], r["eps"]) for r in per_eps] == [("deterministic", "15"), ("deterministic", "40"),
                                                          ("stochastic", "15"), ("stochastic", "40")]
    for row in per_eps:  # every per-threshold figure is recomputed from the per-episode rows
        mine = [r for r in episodes if (r["policy"], r["eps"]) == (row["policy"], row["eps"])]
        costs = [float(r["cost"]) for r in mine]
        rewards = [float(r["reward"]) for r in mine]
        # the files hold 6 significant digits: a mean of rounded rows is off by up to 5e-6 of the largest row
        assert float(row["cost_mean"]) == pytest.approx(sum(costs) / 3, rel=1e-5, abs=1e-5 * max(map(abs, costs)))
        assert float(row["reward_mean"]) == pytest.approx(sum(rewards) / 3, rel=1e-5,
                                                          abs=1e-5 * max(map(abs, rewards)))
        per_ep = sum(max(0.0, c - float(row["eps"])) for c in costs) / 3
        assert float(row["cv_per_episode"]) == pytest.approx(per_ep, rel=1e-5, abs=1e-6)
    stoch = [float(r["reward"]) for r in episodes if r["policy"] == "stochastic"]
    det = [float(r["reward"]) for r in episodes if r["policy"] == "deterministic"]
    assert stoch != det  # sampled actions, not the mean
    assert "## stochastic policy" in (out / "table.md").read_text()


def test_report_shows_both_cv_definitions_the_stochastic_policy_and_the_paper(tmp_path):
    sweep = tmp_path / "sweep"
    stoch = {"avg_reward": 600.0, "avg_cv": 1.0, "avg_cv_per_episode": 2.0, "avg_reward_unseen": 590.0,
             "avg_cv_unseen": 1.5, "avg_cv_per_episode_unseen": 2.5}
    _fake_run(sweep, "a", avg_reward=700.0, avg_cv=0.5, avg_cv_per_episode=0.75, avg_reward_unseen=690.0,
              avg_cv_unseen=0.0, avg_cv_per_episode_unseen=0.25, by_policy={"stochastic": stoch})
    _fake_run(sweep, "b", task="car_circle", avg_reward=400.0, avg_cv=0.0)  # deterministic only, older format
    lines = report([sweep], paper=True).splitlines()
    assert "| Task | Stats | ccpo | paper CCPO | paper safest baseline |" in lines
    assert "| ball_circle | Avg. R ↑ | 700.00 | 710.86 ± 20.47 | 762.61 ± 58.65 |" in lines  # V-DDPG-Lag
    # the lowest CV of a row is bold, the paper's columns included: here the paper's CCPO, not ours
    assert "| ball_circle | Avg. CV per episode ↓ | 0.75 | **0.59 ± 0.31** | 2.81 ± 1.12 |" in lines
    assert "| ball_circle | Avg. CV ↓ | **0.50** | 0.59 ± 0.31 | 2.81 ± 1.12 |" in lines
    assert "| ball_circle | Avg. CV-G per episode ↓ (stochastic) | **2.50** |  |  |" in lines
    assert "| ball_circle | seeds | 1 | 5 | 5 (V-DDPG-Lag) |" in lines  # lowest CV there: 2.81
    assert "| car_circle | seeds | 1 | 5 | 5 (C-TRPO-Lag) |" in lines  # lowest CV there: 7.84
    assert not [line for line in lines if line.startswith("| car_circle | Avg. R ↑ (stochastic)")]  # no such run
    assert "| car_circle | Avg. CV ↓ | **0.00** | 1.60 ± 0.91 | 7.84 ± 1.71 |" in lines


# ---------------------------------------------------------------- damaged inputs of evaluate, load_policy, report
def _nan_policy_checkpoint(run_dir, path):
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    name = next(k for k in ckpt["state_dict"] if k.startswith("actor."))
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    torch.save(ckpt, path)
    return name


def test_evaluate_refuses_bad_seeds_nan_weights_and_an_unwritable_out_before_any_episode(run_dir, tmp_path,
                                                                                         monkeypatch):
    import ccpo_pl.evaluation as evaluation

    ran = []
    monkeypatch.setattr(evaluation, "evaluate_thresholds", lambda *a, **k: ran.append(1) or (_ for _ in ()).throw(
        AssertionError("episodes ran")))
    cases = [({"seed": -1}, r"seed=-1 must be an integer in \[0, "), ({"seed": "abc"}, "seed='abc' must be an integer"),
             ({"out": run_dir / "config.yaml"}, "cannot be created")]  # a file, not a directory
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            evaluate_run(run_dir, **kwargs)
        assert "\n" not in str(err.value)
    name = _nan_policy_checkpoint(run_dir, tmp_path / "nan.ckpt")
    with pytest.raises(ConfigError, match=f"NaN or inf in {name}") as err:
        evaluate_run(tmp_path / "nan.ckpt")
    assert "\n" not in str(err.value) and not ran


def test_evaluate_takes_one_threshold_as_a_number(run_dir, tmp_path):
    summary = evaluate_run(run_dir, eps=30, episodes=1, policy="deterministic", out=tmp_path / "one")
    assert summary["eps"] == [30.0]
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.evaluate", f"run={run_dir}", "eps=30", "episodes=1",
                           "policy=deterministic", f"out={tmp_path / 'cli'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["eps"] == [30.0]


def test_load_policy_refuses_a_text_file_and_nan_weights_in_one_line(run_dir, tmp_path):
    from ccpo_pl.evaluation import load_policy

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n" * 20)
    with pytest.raises(ConfigError, match="is not a readable checkpoint") as err:
        load_policy(text)
    assert "\n" not in str(err.value)
    name = _nan_policy_checkpoint(run_dir, tmp_path / "nan.ckpt")
    with pytest.raises(ConfigError, match=name) as err:
        load_policy(tmp_path / "nan.ckpt")
    assert "\n" not in str(err.value)


def test_report_skips_a_malformed_summary_with_one_warning_naming_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _fake_run(sweep, "good", avg_reward=700.0, avg_cv=1.0)
    bad = {"list": "[]", "empty": "{}", "text": "not json", "nan_reward": None}
    for name, text in bad.items():
        (sweep / name / "eval").mkdir(parents=True)
        (sweep / name / "eval" / "summary.json").write_text(text or "")
    _fake_run(sweep, "word", avg_reward="abc", avg_cv=0.0)
    text = report([sweep])
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 5 and all(w.startswith("ccpo_pl.report: warning: skipping ") for w in warnings)
    for name in ("list", "empty", "text", "nan_reward", "word"):
        assert sum(f"{name}/eval/summary.json" in w for w in warnings) == 1
    assert "avg_reward is 'abc', not a number" in "\n".join(warnings)
    assert "| ball_circle | Avg. R ↑ | 700.00 |" in text and "| ball_circle | seeds | 1 |" in text


def test_evaluate_cli_without_out_writes_beside_the_final_evaluation_which_report_reads(run_dir, tmp_path):
    final = (run_dir / "eval" / "summary.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "ccpo_pl.evaluate", f"run={run_dir}", "eps=[40,90]", "episodes=1",
                           "policy=deterministic", "threads=1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (ad_hoc,) = [p for p in run_dir.glob("eval-*") if p.is_dir()]
    assert f"ccpo_pl.evaluate: wrote per_eps.csv, per_episode.csv, table.md, curves.png and summary.json in {ad_hoc}" \
        in proc.stdout.splitlines()
    assert json.loads((ad_hoc / "summary.json").read_text())["eps"] == [40.0, 90.0]
    assert (run_dir / "eval" / "summary.json").read_bytes() == final  # the final evaluation is untouched
    text = report([run_dir], out=tmp_path / "report.md")
    avg_reward = json.loads(final)["avg_reward"]
    assert f"| ball_circle | Avg. R ↑ | {avg_reward:.2f} |" in text.splitlines()
    assert "1 × 3 thresholds" in text  # the final evaluation's grid (10, 40, 70), not the ad-hoc one


def test_j_eps_plot_shades_the_thresholds_outside_the_trained_range():
    stats = {"eps": [5.0, 40.0, 90.0], "reward_mean": [1.0, 2.0, 3.0], "cost_mean": [4.0, 30.0, 80.0]}
    fig = plot_curves(stats, [40.0], eps_range=[10.0, 70.0])
    for ax in fig.axes:
        spans = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
        assert spans == [(5.0, 10.0), (70.0, 90.0)]
    inside = plot_curves(stats | {"eps": [10.0, 40.0, 70.0]}, [40.0], eps_range=[10.0, 70.0])
    assert all(not ax.patches for ax in inside.axes)  # nothing extrapolated: nothing shaded


@pytest.mark.parametrize("command, key", [("evaluate", "episodes: 10"), ("export", "format: onnx")])
def test_help_lists_the_commands_own_keys_not_fits_groups(command, key):
    proc = subprocess.run([sys.executable, "-m", f"ccpo_pl.{command}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"python -m ccpo_pl.{command} run=")
    assert key in proc.stdout.splitlines()
    assert not any(line.startswith(("algo:", "env:", "trainer:", "logger:")) for line in proc.stdout.splitlines())
