"""Videos of a policy pi(a|s, eps): one episode per threshold, rendered headless.

`record_clips` runs one episode per threshold in a gymnasium env of the task (the policy through
`ccpo_pl.deploy.run_episodes`, eps fixed over the episode) and keeps a frame after the reset and after every step
(`FrameRecorder`): Bullet-Safety-Gym renders with pybullet's TinyRenderer (`rgb_array`, no display needed),
Safety-Gymnasium with MuJoCo, which needs an offscreen OpenGL (`MUJOCO_GL=egl` or `osmesa`) where there is no
display. A task that cannot render is one `ConfigError` line, raised before anything is written.
`encode_mp4` (imageio's ffmpeg plugin, the binary from imageio-ffmpeg) is what `python -m ccpo_pl.evaluate
video=true` writes (`mp4_files`); `log_gif` puts a clip into TensorBoard's Images tab as an animated GIF, as
`SummaryWriter.add_video` does, encoded by imageio instead of moviepy: what `PeriodicVideo`, the callback of
`eval.video`, logs during training.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ccpo_pl import compat
from ccpo_pl.deploy import Policy, policy_metadata, run_episodes
from ccpo_pl.errors import ConfigError
from ccpo_pl.metrics import eps_tag

#: `MUJOCO_GL` values MuJoCo knows; egl and osmesa render without a display
MUJOCO_GL = ("egl", "osmesa", "glfw")
MUJOCO_HINT = ("set MUJOCO_GL=egl (EGL: a GPU driver or Mesa) or MUJOCO_GL=osmesa (libOSMesa) to render MuJoCo "
               "without a display")


@dataclass
class Clip:
    """One recorded episode: `frames` uint8 `[steps + 1, H, W, 3]` (the reset's frame first), its return, cost
    and the playback rate (the simulator's steps per second)."""

    eps: float
    frames: np.ndarray
    reward: float
    cost: float
    fps: float


class FrameRecorder(gym.Wrapper):
    """A gymnasium wrapper that keeps `grab()`'s frame after every reset and step in `frames` (the current
    episode's)."""

    def __init__(self, env: gym.Env, grab: Callable[[], np.ndarray]):
        super().__init__(env)
        self.grab, self.frames = grab, []

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames = [np.asarray(self.grab(), dtype=np.uint8)]
        return out

    def step(self, action):
        out = self.env.step(action)
        self.frames.append(np.asarray(self.grab(), dtype=np.uint8))
        return out


def check_mujoco_gl(env_id: str) -> None:
    """One `ConfigError` line unless MuJoCo can be asked for an offscreen (or a display's) OpenGL context."""
    backend = os.environ.get("MUJOCO_GL")
    hint = MUJOCO_HINT
    if backend is None and not os.environ.get("DISPLAY"):
        raise ConfigError(f"video: {env_id} (Safety-Gymnasium, MuJoCo) cannot render here: no DISPLAY and no "
                          f"MUJOCO_GL; {hint}")
    if backend is not None and backend not in MUJOCO_GL:
        raise ConfigError(f"video: MUJOCO_GL={backend!r} is not one of {', '.join(MUJOCO_GL)}; {hint}")


def check_renders(env_cfg: Mapping) -> None:
    """What can be known without building an env: one `ConfigError` line for a MuJoCo task without an OpenGL
    context to ask for (see `check_mujoco_gl`); the other failures show when `record_clips` starts the renderer."""
    if env_cfg["suite"] == "safety_gymnasium":
        check_mujoco_gl(env_cfg["id"])


def render_env(env_cfg: Mapping, max_steps: int) -> FrameRecorder:
    """A gymnasium env of the task `env_cfg` whose episodes end after `max_steps` steps, recording frames."""
    suite, env_id = env_cfg["suite"], env_cfg["id"]
    if suite == "bullet":
        with compat.process_std_streams():
            import bullet_safety_gym  # noqa: F401  (registers the Safety*-v0 ids)

            env = gym.make(env_id, max_episode_steps=max_steps)
        return FrameRecorder(env, lambda: env.unwrapped.render(mode="rgb_array"))  # its render takes the mode
    check_renders(env_cfg)
    import safety_gymnasium

    # the camera that follows the agent (every Safety-Gymnasium agent has one; the default one can miss it)
    env = safety_gymnasium.make(env_id, render_mode="rgb_array", camera_name="track", max_episode_steps=max_steps)
    return FrameRecorder(env, env.render)


def playback_fps(env: gym.Env) -> float:
    """The simulator's steps per second (1 / its control period), so that a video plays in real time."""
    dt = getattr(env.unwrapped, "dt", None)
    return float(env.metadata.get("render_fps") or (1.0 / dt if dt else 30.0))


def episode_policy(actor: nn.Module, cfg: Mapping, env: gym.Env) -> Policy:
    """`actor` as a deployed policy (`ccpo_pl.deploy.Policy`: the mean action clipped to the env's action box)."""
    space = env.action_space
    bounds = (float(np.min(space.low)), float(np.max(space.high)))
    meta = policy_metadata(cfg, env.observation_space.shape[0], space.shape[0], bounds)
    return Policy(actor, meta, next(actor.parameters()).device)


def started_env(env_cfg: Mapping, steps: int, seed: int) -> FrameRecorder:
    """`render_env`, reset once: a renderer that fails to start is one `ConfigError` line, whatever it raised."""
    env = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glfw's warnings when there is no display: the error says it
            env = render_env(env_cfg, steps)
            env.reset(seed=seed)
        return env
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring
        if env is not None:
            with contextlib.suppress(Exception):  # a renderer that did not start may not close either
                env.close()
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = f"; {MUJOCO_HINT}" if env_cfg["suite"] == "safety_gymnasium" else ""
        raise ConfigError(f"video: {env_cfg['id']} does not render here ({reason}){hint}") from None


def record_clips(actor: nn.Module, cfg: Mapping, eps: Sequence[float], *, seed: int, length: int | None = None,
                 deterministic: bool = True) -> list[Clip]:
    """One episode per threshold of `eps` of the policy `actor` of the run `cfg`, as frames.

    Every episode starts from the same state (numpy's global RNG, which bullet-safety-gym draws from, seeded with
    `seed` before each; Safety-Gymnasium's reset gets `seed`); `length` steps at most (None: the task's episode
    length). `deterministic`: the mean action, else sampled actions (torch's RNG seeded with `seed`). The
    caller's RNG streams are left as they were. A task that does not render here is one `ConfigError` line.
    """
    horizon = int(cfg["env"]["max_episode_steps"])
    steps = horizon if length is None else min(int(length), horizon)
    np_state = np.random.get_state()
    clips = []
    try:
        with torch.random.fork_rng(devices=[]):
            for e in eps:
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                env = started_env(cfg["env"], steps, seed)
                try:
                    np.random.seed(seed % 2**32)  # the probe reset above drew from it
                    episode = run_episodes(episode_policy(actor, cfg, env), env, lambda step, so_far: float(e),
                                           seed=seed, deterministic=deterministic)[0]
                    clips.append(Clip(float(e), np.stack(env.frames), episode.reward, episode.cost,
                                      playback_fps(env)))
                finally:
                    env.close()
    finally:
        np.random.set_state(np_state)
    return clips


def encode_mp4(clip: Clip) -> bytes:
    """The clip as an H.264 MP4 (yuv420p, plays in browsers): imageio's ffmpeg plugin; frames are padded to an
    even size, never rescaled."""
    frames = clip.frames
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    return iio.imwrite("<bytes>", np.pad(frames, pad), extension=".mp4", plugin="FFMPEG", fps=clip.fps,
                       macro_block_size=2)


def check_video_settings(video, length) -> None:
    """`evaluate`'s `video` (true or false) and `video_length` (steps > 0, or None); one `ConfigError` line."""
    if not isinstance(video, bool):
        raise ConfigError(f"video={video!r} is not allowed; video must be true or false")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length <= 0):
        raise ConfigError(f"video_length={length!r} must be a positive integer (steps) or null (the episode)")


def mp4_files(*, seed: int, length: int | None = None, deterministic: bool = True):
    """The `extra_files` of `ccpo_pl.evaluation.evaluate_run` that records one episode per threshold
    (`record_clips`) and encodes each as `video/eps_<eps>.mp4`, before the evaluation writes anything."""
    def files(actor: nn.Module, cfg: Mapping, eps: Sequence[float]) -> dict[str, bytes]:
        check_renders(cfg["env"])
        clips = record_clips(actor, cfg, eps, seed=seed, length=length, deterministic=deterministic)
        return {f"video/{video_name(clip.eps)}": encode_mp4(clip) for clip in clips}

    return files


def video_name(eps: float) -> str:
    """`eps_40.mp4`, `eps_12.5.mp4`: the file of a threshold's video."""
    return f"{eps_tag(eps)}.mp4"


def video_paths(out_dir: Path, eps: Sequence[float]) -> list[Path]:
    """Where `python -m ccpo_pl.evaluate video=true` writes the videos of `eps`: `<out>/video/eps_<eps>.mp4`."""
    return [Path(out_dir) / "video" / video_name(e) for e in eps]


def log_gif(writer, tag: str, clip: Clip, step: int, stride: int = 2) -> None:
    """`clip` as an animated GIF in TensorBoard's Images tab under `tag` (`SummaryWriter.add_video`'s summary;
    add_video itself needs moviepy), every `stride`-th pixel in each direction to keep the event file small."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = clip.frames[:, ::stride, ::stride]
    gif = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / clip.fps, loop=0)
    image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3, encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class PeriodicVideo(Callback):
    """At the periodic evaluation's epochs (every `every_epochs` and the last), one deterministic episode of the
    policy being trained at threshold `eps`, at most `length` steps, logged to TensorBoard as the animated GIF
    `eval/video` at the global frame count (rank 0; `run_cfg`: the run's resolved config; start state from
    `seed`, the same at every evaluation)."""

    def __init__(self, run_cfg: Mapping, eps: float, *, length: int, every_epochs: int, seed: int):
        self.run_cfg, self.eps, self.length = run_cfg, float(eps), int(length)
        self.every_epochs, self.seed = int(every_epochs), int(seed)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        writer = getattr(pl_module.logger, "experiment", None)
        if trainer.global_rank != 0 or not hasattr(writer, "_get_file_writer"):
            return
        if epoch % self.every_epochs == 0 or epoch >= trainer.max_epochs:
            start = time.perf_counter()
            clip, = record_clips(pl_module.actor, self.run_cfg, [self.eps], seed=self.seed, length=self.length)
            log_gif(writer, "eval/video", clip, pl_module.global_frames)
            if hasattr(pl_module, "clock"):  # the rendering is part of the evaluation's time (`time/eval_s`)
                pl_module.clock.add_eval(time.perf_counter() - start)
