"""`python -m ccpo_pl.plot`: mean and std over runs against frames, threshold curves, its files and its errors."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from ccpo_pl import plot
from ccpo_pl.evaluation import evaluate_run
from ccpo_pl.fit import fit
from ccpo_pl.validation import CONF_DIR


def test_runs_are_averaged_on_the_union_of_their_frames_inside_each_runs_range():
    a = (np.array([0.0, 10, 20]), np.array([1.0, 2, 3]))
    b = (np.array([20.0, 0, 10]), np.array([5.0, 3, 4]))  # any order
    st = plot.mean_std_curve([a, b])
    assert st["frames"].tolist() == [0, 10, 20]
    assert st["mean"].tolist() == [2, 3, 4] and st["std"].tolist() == [1, 1, 1] and st["n"].tolist() == [2, 2, 2]
    c = (np.array([0.0, 20]), np.array([0.0, 4]))  # no point at 10: interpolated there (2)
    d = (np.array([5.0, 10]), np.array([7.0, 9]))  # shorter: absent at 0 and 20, interpolated nowhere outside
    st = plot.mean_std_curve([a, c, d])
    assert st["frames"].tolist() == [0, 5, 10, 20]
    assert st["n"].tolist() == [2, 3, 3, 2]
    assert np.allclose(st["mean"], [0.5, (1.5 + 1 + 7) / 3, (2 + 2 + 9) / 3, 3.5])
    assert np.allclose(st["std"][0], 0.5) and np.allclose(st["std"][3], 0.5)


def test_threshold_stats_take_each_eps_over_the_runs_that_evaluated_it():
    t1 = {"eps": np.array([10.0, 20]), "reward": np.array([1.0, 2]), "cost": np.array([5.0, 15]),
          "extrapolation": np.array([0.0, 0])}
    t2 = {"eps": np.array([10.0, 20, 90]), "reward": np.array([3.0, 4, 9]), "cost": np.array([7.0, 25, 95]),
          "extrapolation": np.array([0.0, 0, 1])}
    st = plot.threshold_stats([t1, t2])
    assert st["eps"].tolist() == [10, 20, 90] and st["n"].tolist() == [2, 2, 1]
    assert st["reward_mean"].tolist() == [2, 3, 9] and st["reward_std"].tolist() == [1, 1, 0]
    assert st["cost_mean"].tolist() == [6, 20, 95] and st["cost_std"].tolist() == [1, 5, 0]
    assert st["extrapolation"].tolist() == [False, False, True]


def fake_run(root: Path, name: str, algo: str, seed: int, rewards: dict[int, float], per_eps=None) -> Path:
    """A run directory as ccpo_pl.fit leaves it: config.yaml, TensorBoard scalars, optionally eval/per_eps.csv."""
    run = root / name
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"label": algo, "seed": seed, "algo": {"name": algo},
                                                     "env": {"name": "ball_circle"},
                                                     "eps": {"behavior": [20, 40], "range": [10, 50]}}))
    writer = SummaryWriter(str(run / "tb"))
    for frames, value in rewards.items():
        writer.add_scalar("eval/avg_reward", value, global_step=frames)
        writer.add_scalar("eval/eps_20/cost", 1.0, global_step=frames)
    writer.close()
    if per_eps is not None:
        (run / "eval").mkdir()
        lines = ["policy,eps,reward_mean,reward_std,cost_mean,cost_std,cv,cv_per_episode,seen,extrapolation"]
        lines += [f"{policy},{e},{r},0,{c},0,0,0,0,{int(e > 50)}" for policy, e, r, c in per_eps]
        (run / "eval" / "per_eps.csv").write_text("\n".join(lines) + "\n")
    return run


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_plot_writes_figures_and_their_data_grouped_by_a_config_key(tmp_path, capsys):
    logs = tmp_path / "logs"
    fake_run(logs, "a0", "ccpo", 0, {100: 1.0, 200: 3.0},
             [("deterministic", 20, 10, 5), ("deterministic", 60, 12, 70), ("stochastic", 20, 99, 99)])
    fake_run(logs, "a1", "ccpo", 1, {100: 3.0, 200: 5.0},
             [("deterministic", 20, 20, 15), ("deterministic", 60, 14, 80)])
    fake_run(logs / "sweep", "b0", "cvpo", 0, {100: 10.0})
    out = tmp_path / "plots"
    plot.main([str(logs), "--by", "algo", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"ccpo_pl.plot: wrote {out / f}" for f in
                       ("learning_eval_avg_reward.png", "learning_eval_avg_reward.csv", "thresholds.png",
                        "thresholds.csv")]
    rows = read_csv(out / "learning_eval_avg_reward.csv")
    assert [(r["group"], r["frames"], float(r["mean"]), float(r["std"]), r["n"]) for r in rows] == [
        ("ccpo", "100", 2.0, 1.0, "2"), ("ccpo", "200", 4.0, 1.0, "2"), ("cvpo", "100", 10.0, 0.0, "1")]
    rows = read_csv(out / "thresholds.csv")  # the deterministic rows only; the run without an evaluation left out
    assert [(r["group"], float(r["eps"]), float(r["reward_mean"]), float(r["cost_std"]), r["extrapolation"])
            for r in rows] == [("ccpo", 20, 15, 5, "0"), ("ccpo", 60, 13, 5, "1")]
    for png in ("learning_eval_avg_reward.png", "thresholds.png"):
        image = imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0  # decodes, not blank


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/none"], "is not a directory; pass run directories or a sweep directory"),
    (["{tmp}"], "no run directories (config.yaml and tb/) under"),
    (["{logs}", "--metric", "eval/avg_rewrd"], "--metric eval/avg_rewrd is logged by none of the 1 runs; logged: "
                                               "eval/avg_reward"),
    (["{logs}", "--by", "algo.nme"], "has no config key algo.nme; give a dotted key of config.yaml"),
    (["{logs}", "--metrc", "x"], "unrecognized arguments: --metrc x; did you mean --metric?"),
])
def test_bad_input_is_one_line_and_status_2_writing_nothing(tmp_path, capsys, args, message):
    logs = tmp_path / "logs"
    fake_run(logs, "a0", "ccpo", 0, {100: 1.0})
    (tmp_path / "empty").mkdir()
    fill = {"tmp": tmp_path / "empty", "logs": logs}
    with pytest.raises(SystemExit) as done:
        plot.main([a.format(**fill) for a in args] + ["--out", str(tmp_path / "plots")])
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ccpo_pl.plot: error: ") and message in err[0], err
    assert not (tmp_path / "plots").exists()


def test_plot_reads_real_runs_of_two_seeds(tmp_path):
    logs = tmp_path / "logs"
    for seed in (0, 1):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=smoke", "threads=1", f"log_dir={logs}", f"seed={seed}",
                                               "total_frames=800"])
        fit(cfg)
        evaluate_run(logs / f"ball_circle-ccpo-s{seed}", eps=[10, 40, 90], episodes=1, policy="deterministic")
    out = tmp_path / "plots"
    written = plot.plot([logs], ["eval/avg_reward", "train/frames"], by="algo", out=out)
    assert [p.name for p in written] == ["learning_eval_avg_reward.png", "learning_eval_avg_reward.csv",
                                         "learning_train_frames.png", "learning_train_frames.csv", "thresholds.png",
                                         "thresholds.csv"]
    frames = read_csv(out / "learning_train_frames.csv")
    assert [int(r["frames"]) for r in frames] == [int(float(r["mean"])) for r in frames]  # frames logged vs frames
    assert {r["n"] for r in frames} == {"2"} and {float(r["std"]) for r in frames} == {0.0}
    rewards = read_csv(out / "learning_eval_avg_reward.csv")
    assert {r["n"] for r in rewards} == {"2"} and any(float(r["std"]) > 0 for r in rewards)  # two seeds differ
    thresholds = read_csv(out / "thresholds.csv")
    assert [(float(r["eps"]), r["n"], r["extrapolation"]) for r in thresholds] == [(10, "2", "0"), (40, "2", "0"),
                                                                                   (90, "2", "1")]


def test_a_run_without_a_final_evaluation_plots_its_newest_evaluate_output(tmp_path):
    """experiment=smoke trains with eval.final_episodes=0: the thresholds come from the newest eval-<date-time>/."""
    run = fake_run(tmp_path, "smoke", "ccpo", 0, {400: 1.0}, per_eps=[("deterministic", 20, 5.0, 1.0)])
    (run / "eval").rename(run / "eval-20261208-010000")
    (run / "eval-20261208-020000").mkdir()  # newer, but no summary.json: incomplete
    (run / "eval-20261208-020000" / "per_eps.csv").write_text("policy,eps\n")
    assert plot.read_thresholds(run) is None  # the older output has no summary.json either
    (run / "eval-20261208-010000" / "summary.json").write_text("{}")
    assert plot.read_thresholds(run)["reward"].tolist() == [5.0]


def test_a_run_logged_to_mlflow_only_beside_readable_runs_is_skipped_with_a_warning(tmp_path, capsys):
    """`plot logs` after the guide's logger=mlflow smoke run: the other runs are still plotted."""
    run = fake_run(tmp_path / "logs", "tb-run", "ccpo", 0, {400: 1.0})
    other = tmp_path / "logs" / "smoke-mlflow"
    (other / "mlruns").mkdir(parents=True)
    (other / "config.yaml").write_text("seed: 0\n")
    assert plot.find_runs([tmp_path / "logs"]) == [run.resolve()]
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("ccpo_pl.plot: warning: skipping ") and "smoke-mlflow" in warning
