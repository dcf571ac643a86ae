"""Videos of a policy: `python -m ccpo_pl.evaluate video=true` (one MP4 per threshold) and the periodic
evaluation's GIF in TensorBoard (`eval.video`), on a tiny checkpoint and a few steps per episode."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.conf import CONF_DIR
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluate import evaluate, written
from ccpo_pl.evaluation import load_run
from ccpo_pl.fit import fit
from ccpo_pl.validation import validate
from ccpo_pl.video import record_clips

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "tests" / "fixtures" / "checkpoints_main" / "ball_circle-ccpo-s0"  # read only: out= elsewhere


def _command_line(*overrides: str, run: Path = RUN) -> DictConfig:
    """`conf/evaluate.yaml` composed as `python -m ccpo_pl.evaluate run=<run> ... <overrides>` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("evaluate", overrides=[f"run={run}", "episodes=1", "threads=1", "policy=deterministic",
                                              *overrides])


def test_evaluate_video_writes_one_decodable_mp4_per_threshold_named_by_eps(tmp_path):
    out = tmp_path / "eval"
    cfg = _command_line("eps=[20,45.5]", "video=true", "video_length=6", f"out={out}")
    lines = written(cfg, evaluate(cfg))
    assert f"ccpo_pl.evaluate: wrote 2 videos (eps_20.mp4, eps_45.5.mp4) in {out / 'video'}" in lines
    assert sorted(p.name for p in (out / "video").iterdir()) == ["eps_20.mp4", "eps_45.5.mp4"]
    assert (out / "summary.json").is_file()
    for name in ("eps_20.mp4", "eps_45.5.mp4"):
        frames = iio.imread(out / "video" / name, plugin="FFMPEG")  # decodes as a video
        assert frames.shape == (7, 360, 480, 3)  # the reset's frame and one per step; bullet's camera size
        assert frames.std() > 1.0  # not a blank image
        moved = np.abs(frames[1:].astype(int) - frames[0].astype(int)).mean(axis=(1, 2, 3))
        assert moved.max() > 1.0  # the ball moves: not the same frame repeated


def test_record_clips_repeat_for_a_seed_and_leave_the_callers_rng_alone():
    *_, actor, cfg = load_run(RUN)
    np.random.seed(123)
    torch.manual_seed(123)
    before = np.random.rand(), torch.rand(1).item()
    np.random.seed(123)
    torch.manual_seed(123)
    first = record_clips(actor, cfg, [20.0], seed=5, length=3)
    again = record_clips(actor, cfg, [20.0], seed=5, length=3)
    assert (np.random.rand(), torch.rand(1).item()) == before  # the caller's streams go on as without videos
    assert first[0].frames.shape[0] == 4 and np.array_equal(first[0].frames, again[0].frames)
    assert first[0].fps == pytest.approx(10.0)  # BallCircle's control period is 0.1 s: plays in real time


@pytest.mark.parametrize("overrides, message", [
    (["video=yes"], "video='yes' is not allowed; video must be true or false"),
    (["video=1"], "video=1 is not allowed; video must be true or false"),
    (["video=true", "video_length=0"], "video_length=0 must be a positive integer (steps) or null (the episode)"),
    (["video=true", "video_length=2.5"], "video_length=2.5 must be a positive integer"),
])
def test_evaluate_command_line_refuses_a_bad_video_value_in_one_line(tmp_path, overrides, message):
    cfg = _command_line("eps=[20]", f"out={tmp_path / 'eval'}", *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:  # what main prints, exit status 2
        evaluate(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("gl, message", [
    (None, "SafetyPointCircle1-v0 (Safety-Gymnasium, MuJoCo) cannot render here: no DISPLAY and no MUJOCO_GL; "
           "set MUJOCO_GL=egl"),
    ("vulkan", "MUJOCO_GL='vulkan' is not one of egl, osmesa, glfw; set MUJOCO_GL=egl"),
])
def test_video_of_a_mujoco_task_that_cannot_render_is_one_line_before_any_file(tmp_path, monkeypatch, gl, message):
    ckpt = safe_load(RUN / "checkpoints" / "last.ckpt")  # the policy of a Safety-Gymnasium run, as far as video goes
    ckpt["hyper_parameters"]["run_config"]["env"] |= {"name": "point_circle", "suite": "safety_gymnasium",
                                                      "id": "SafetyPointCircle1-v0", "max_episode_steps": 500}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, tmp_path / "run" / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("DISPLAY", raising=False)
    if gl is None:
        monkeypatch.delenv("MUJOCO_GL", raising=False)
    else:
        monkeypatch.setenv("MUJOCO_GL", gl)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        evaluate(_command_line("eps=[20]", "video=true", "video_length=2", run=tmp_path / "run"))
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "run").rglob("*")] == ["checkpoints", "last.ckpt"]  # not even eval/


def test_periodic_evaluation_logs_the_episode_as_a_gif_when_asked(tmp_path, smoke_config, tb_events):
    cfg = smoke_config(tmp_path, "total_frames=400", "run_name=video", "eval.video=true", "eval.video_length=4",
                       "threads=1")
    fit(cfg, command="python -m ccpo_pl.fit experiment=smoke eval.video=true")
    acc = tb_events(tmp_path / "video")
    gifs = acc.Images("eval/video")
    assert [e.step for e in gifs] == [e.step for e in acc.Scalars("eval/avg_cv")]  # one per evaluation
    frames = iio.imread(gifs[0].encoded_image_string, extension=".gif")
    assert frames.shape == (5, 180, 240, 3)  # 4 steps and the reset, every second pixel of 360 x 480
    assert (gifs[0].height, gifs[0].width) == (180, 240)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1.0
    shutil.rmtree(tmp_path / "video")


@pytest.mark.parametrize("override, message", [
    ("eval.video=yes", "eval.video"),
    ("eval.video_eps=0", "eval.video_eps"),
    ("eval.video_length=0", "eval.video_length"),
])
def test_fit_refuses_bad_eval_video_settings_in_one_line(compose_config, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_config(override))
    assert "\n" not in str(err.value)


def test_a_renderer_that_fails_to_start_is_one_line_naming_the_env(monkeypatch):
    *_, actor, cfg = load_run(RUN)

    def broken(env_cfg, steps):
        raise RuntimeError("an OpenGL platform library has not been loaded\nsecond line")

    monkeypatch.setattr("ccpo_pl.video.render_env", broken)
    with pytest.raises(ConfigError) as err:
        record_clips(actor, cfg, [20.0], seed=0, length=2)
    assert str(err.value) == ("video: SafetyBallCircle-v0 does not render here (an OpenGL platform library has not "
                              "been loaded)")


def test_the_periodic_video_counts_its_rendering_time_in_the_evaluation_time(monkeypatch):
    import time
    from types import SimpleNamespace

    from ccpo_pl import video
    from ccpo_pl.timing import WallClock

    monkeypatch.setattr(video, "record_clips", lambda *args, **kwargs: (time.sleep(0.2), [np.zeros((1, 2, 2, 3))])[1])
    monkeypatch.setattr(video, "log_gif", lambda *args: None)
    module = SimpleNamespace(logger=SimpleNamespace(experiment=SimpleNamespace(_get_file_writer=None)),
                             actor=None, global_frames=400, clock=WallClock())
    trainer = SimpleNamespace(current_epoch=0, global_rank=0, max_epochs=1)
    video.PeriodicVideo({}, 40.0, length=4, every_epochs=1, seed=0).on_train_epoch_end(trainer, module)
    assert module.clock.totals["eval_s"] >= 0.2
