"""Evaluation of a threshold-conditioned policy: deterministic episodes per eps and the CCPO paper's metrics.

One path runs the episodes: `evaluate_thresholds` (the policy wrapped by `make_policy`, sub-env j of the grid seeded
with `seed + j`, the caller's RNG streams left as they were). Two callers use it:

`PeriodicEvaluation` is the Lightning callback that evaluates the policy being trained every
`eval.every_epochs` epochs and at the last one (seed `seed + 10000 (1 + rank)`, the same start states at every
evaluation): the logger's `eval/eps_<eps>/{reward,cost,cv}`, the paper's averages `eval/avg_{reward,cv}` and over
unseen thresholds `eval/avg_{reward,cv}_unseen`, the J(eps) plot `eval/curves` (in each logger's form:
`loggers.log_figure`), and in TensorBoard a custom-scalar layout that puts all thresholds' curves of a quantity on
one chart, one colour per threshold.

`evaluate_run` is what `python -m ccpo_pl.evaluate` and the end of `ccpo_pl.fit` call: it loads the policy of a
checkpoint (no training state), runs episodes on a threshold grid in batched envs with the deterministic (mean
action) and/or the stochastic (sampled actions) policy, and writes `eval/per_eps.csv`, `eval/per_episode.csv`,
`eval/table.md`, `eval/curves.png` and `eval/summary.json` (and the caller's `extra_files`, e.g. the videos of
`ccpo_pl.video`).

Over 300 lines: the one episode path, its two callers and the files they write (CSV, Markdown, PNG, JSON) stay
together, so that the periodic and the final evaluation cannot drift apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from ccpo_pl import outputs, tb_runs
from ccpo_pl.algos.combined.equations import EXTRAPOLATIONS
from ccpo_pl.checkpointing import READABLE_FORMATS, check_checkpoint, training_state
from ccpo_pl.envs import make_env
from ccpo_pl.errors import ConfigError
from ccpo_pl.loggers import log_figure
from ccpo_pl.metrics import (
    cost_violation,  # the per-threshold metric lives with the others; re-exported here
    cost_violation_per_episode,
    eps_tag,
    outside_range,
    per_eps_stats,
    seen_mask,
    summarize,
)
from ccpo_pl.nets import EpsActor, make_policy
from ccpo_pl.validation import current_run_config

#: the algorithms whose policy is the linear combination of per-threshold policies (`extrapolation=` applies)
COMBINED = ("c_ppo_lag", "c_trpo_lag")
EXPLORATION = {"deterministic": ExplorationType.DETERMINISTIC, "stochastic": ExplorationType.RANDOM}
#: `policy=` values: one policy, or both (the deterministic one is the headline, as in the paper's protocol)
POLICIES = {"deterministic": ("deterministic",), "stochastic": ("stochastic",),
            "both": ("deterministic", "stochastic")}
CSV_COLUMNS = ("policy", "eps", "reward_mean", "reward_std", "cost_mean", "cost_std", "cv", "cv_per_episode", "seen",
               "extrapolation")
EPISODE_COLUMNS = ("policy", "eps", "episode", "reward", "cost", "length")


def load_policy(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[EpsActor, dict]:
    """The actor pi(a|s, eps) of a `ccpo_pl.fit` checkpoint, loaded with `weights_only=True`, and the run's config.

    Network sizes come from the stored weights; everything else from the resolved config stored as plain data
    in the checkpoint (`hyper_parameters.run_config`). No training state is built. A file that is not a usable
    checkpoint (unreadable, not written by `ccpo_pl.fit`, a format this version does not read, non-finite policy
    weights) is one `ConfigError` line (`checkpointing.check_checkpoint`).
    """
    device = check_device(device)
    try:
        checked = check_checkpoint(ckpt_path, name="ckpt_path", prefix="actor.")
    except ConfigError as err:
        raise ConfigError(f"{str(ckpt_path)!r} is not a ccpo_pl.fit checkpoint that loads: {err}") from None
    return policy_from_checkpoint(checked, ckpt_path, device)


def check_device(device) -> torch.device:
    """`device` as a torch device this machine has: cpu, or cuda / cuda:<index> where CUDA has that device; a
    one-line `ConfigError` (a ValueError) naming it otherwise, a TypeError for what is not a device name."""
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise TypeError(f"device={device!r} ({type(device).__name__}) is not allowed; give a device name (cpu, "
                        f"cuda or cuda:1) or a torch.device")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a torch device; give e.g. cpu, cuda or cuda:1") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not allowed; give cpu, cuda or cuda:1 (a CUDA device this machine "
                          f"has)")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device!r} is not available: this machine has no CUDA device; give cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device={device!r} is not available: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; give one of them or cpu")
    return dev


def policy_from_checkpoint(ckpt: dict, ckpt_path: str | Path, device: str | torch.device = "cpu",
                           algo_overrides: Mapping | None = None) -> tuple[EpsActor, dict]:
    """`load_policy` on an already loaded checkpoint dict (`ckpt_path` only names it in errors); `algo_overrides`
    replace keys of the run's `algo` config that only shape the policy (e.g. `extrapolation`)."""
    cfg = current_run_config((ckpt.get("hyper_parameters") or {}).get("run_config"))
    if not cfg or "state_dict" not in ckpt:
        raise ValueError(f"{str(ckpt_path)!r} is not a ccpo_pl.fit checkpoint")
    version = (training_state(ckpt) or {}).get("format_version", 1)
    if version not in READABLE_FORMATS:
        raise ValueError(f"{str(ckpt_path)!r} has checkpoint format {version!r}; this ccpo_pl reads "
                         f"{', '.join(map(str, READABLE_FORMATS))}")
    from ccpo_pl.algos.registry import ALGOS  # here: the registry imports the modules, which import this file

    name = cfg["algo"]["name"]
    if name not in ALGOS:
        raise ValueError(f"{str(ckpt_path)!r} is a checkpoint of algo {name!r}, which this ccpo_pl does not know; "
                         f"known: {', '.join(sorted(ALGOS))}")
    if algo_overrides:
        cfg = {**cfg, "algo": {**cfg["algo"], **algo_overrides}}
    actor = ALGOS[name].make_actor(cfg, *actor_sizes(ckpt))
    actor.load_state_dict(actor_weights(ckpt))
    return actor.to(device).eval(), cfg


def actor_weights(ckpt: dict) -> dict[str, Tensor]:
    """The policy's `actor.*` entries of a checkpoint's state dict, without the prefix."""
    return {k.removeprefix("actor."): v for k, v in ckpt["state_dict"].items() if k.startswith("actor.")}


def actor_sizes(ckpt: dict) -> tuple[int, int]:
    """(obs_dim, act_dim) of a checkpoint's policy, from the stored sizes or, in checkpoints written before they
    were stored (an EpsActor, whose input is [observation, e]), from its weights."""
    hp = ckpt["hyper_parameters"]
    if hp.get("obs_dim") is not None:
        return int(hp["obs_dim"]), int(hp["act_dim"])
    weights = actor_weights(ckpt)
    return weights["trunk.0.weight"].shape[1] - 1, weights["mu.weight"].shape[0]


def load_run(run: str | Path, device: str | torch.device = "cpu",
             algo_overrides: Mapping | None = None) -> tuple[Path, Path, dict, nn.Module, dict]:
    """(checkpoint path, run directory, checkpoint dict, actor, run config) of a run directory or checkpoint file
    (`algo_overrides`: as in `policy_from_checkpoint`); a missing, unreadable or foreign file is one `ConfigError`
    line naming `run` and the reason."""
    device = check_device(device)
    ckpt, run_dir = resolve_checkpoint(run)
    data = check_checkpoint(ckpt, name="run", prefix="actor.")  # readable, ccpo_pl's, a finite policy: one line
    try:
        actor, cfg = policy_from_checkpoint(data, ckpt, device, algo_overrides)
    except Exception as err:  # noqa: BLE001 - an unreadable or foreign file is reported the same way
        reason = str(err).splitlines()[0] if isinstance(err, ValueError) else type(err).__name__
        raise ConfigError(f"run={str(run)!r}: {str(ckpt)!r} is not a loadable ccpo_pl checkpoint ({reason})") from None
    return ckpt, run_dir, data, actor, cfg


@torch.no_grad()
def rollout_episodes(env: EnvBase, policy, max_steps: int,
                     exploration: ExplorationType = ExplorationType.DETERMINISTIC) -> tuple[Tensor, Tensor, Tensor]:
    """One episode per sub-env of a batched env; returns (episode reward `[N]`, episode cost `[N]`, episode length
    `[N]` in steps).

    Each sub-env keeps its own threshold (build the env with `eps_mode="fixed"`). The rollout runs until every
    sub-env finished at least once (`StepCounter` truncates at the episode length) and reads the episode sums at
    each sub-env's first `done`. `exploration`: DETERMINISTIC (the mean action, the paper's protocol) or RANDOM
    (sampled actions: the stochastic policy the E-step constrains).
    """
    with set_exploration_type(exploration):
        td = env.rollout(max_steps, policy, break_when_any_done=False, auto_cast_to_device=True)
    done = td["next", "done"].reshape(*td.batch_size[:2], -1)[..., 0]  # [N, T]
    if not bool(done.any(-1).all()):
        raise RuntimeError(f"some evaluation episodes did not finish within {max_steps} steps")
    first = done.float().argmax(-1)
    rows = torch.arange(done.shape[0])
    ep_r = td["next", "episode_reward"].reshape(*done.shape, -1)[rows, first, 0]
    ep_c = td["next", "episode_cost"].reshape(*done.shape, -1)[rows, first, 0]
    return ep_r.cpu(), ep_c.cpu(), (first + 1).cpu()


class EnvPool:
    """Evaluation envs kept from one `evaluate_thresholds` call to the next, for the suites whose envs cost far more to
    build than to reset: bullet-safety-gym's drone and car load their body assets for about a second and half a second
    per sub-env, which a periodic evaluation of 13 thresholds x 2 episodes paid every time (docs/performance.md).

    A kept env is reseeded and reset instead of rebuilt, from the same start states: the bullet envs draw every
    random number from numpy's global stream, which `BulletBatchEnv` seeds with the batch's seed both after building
    and on `set_seed`, and a reset re-places the agent from that stream. The episodes are those of new envs on
    BallCircle (tested); the drone carries simulator state across a reset, so its episodes differ from new envs' at
    round-off level (docs/performance.md). So only the
    periodic evaluation keeps its envs (a training-time measurement, deterministic within a run); `evaluate_run`,
    whose files must be reproducible by any later `evaluate`, builds new ones. Envs of other suites are built anew
    each time (a `SerialEnv` seeds its sub-envs at construction, seed + i, which `set_seed` does not reproduce). It
    keeps at most `max_envs` sub-envs, closing the least recently used batches to make room (a drone sub-env holds
    ~55 MB: 64 of them are what one batch of `evaluate_thresholds` holds anyway); `close()` closes what it keeps.
    """

    def __init__(self, max_envs: int = 64) -> None:
        self.max_envs = int(max_envs)
        self._envs: dict[tuple, EnvBase] = {}  # oldest use first

    def env(self, env_cfg: Mapping, eps: Sequence[float], seed: int) -> tuple[EnvBase, bool]:
        """The env of `len(eps)` sub-envs at the fixed thresholds `eps`, seeded with `seed`, and whether it is kept
        (the caller closes one that is not)."""
        if env_cfg["suite"] != "bullet":
            return make_env(env_cfg, num_envs=len(eps), seed=seed, eps_values=eps, eps_mode="fixed"), False
        key = (env_cfg["id"], int(env_cfg["max_episode_steps"]), tuple(float(e) for e in eps))
        env = self._envs.pop(key, None)
        if env is not None:
            env.set_seed(seed)
        else:
            while self._envs and sum(e.batch_size.numel() for e in self._envs.values()) + len(eps) > self.max_envs:
                self._envs.pop(next(iter(self._envs))).close(raise_if_closed=False)
            env = make_env(env_cfg, num_envs=len(eps), seed=seed, eps_values=eps, eps_mode="fixed")
            if len(eps) > self.max_envs:
                return env, False
        self._envs[key] = env  # now the most recently used
        return env, True

    def close(self) -> None:
        for env in self._envs.values():
            env.close(raise_if_closed=False)
        self._envs.clear()


def evaluate_thresholds(policy, env_cfg: Mapping, eps: Sequence[float], episodes: int, *, seed: int,
                        max_steps: int, batch_envs: int = 64,
                        exploration: ExplorationType = ExplorationType.DETERMINISTIC,
                        pool: EnvPool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Episode reward, cost and length `[n_eps, episodes]` each of a TorchRL policy (e.g. `make_policy(actor)`):
    `episodes` episodes at each threshold of `eps`.

    All episodes run side by side in batched envs of at most `batch_envs` sub-envs, each sub-env at its own fixed
    threshold; sub-env j (over the whole grid) is seeded with `seed + j`, and the torch stream that samples the
    stochastic policy's actions is seeded with `seed + j` of the batch's first sub-env, so the same call gives the
    same episodes whatever ran before it. The caller's RNG streams (torch, CUDA, and numpy's global one that
    bullet-safety-gym draws from) are left as they were. `pool`: an `EnvPool` that keeps the envs for the next call
    (the same episodes as new envs); None builds and closes them here.
    """
    flat = [float(e) for e in eps for _ in range(episodes)]
    results = []
    envs = EnvPool() if pool is None else pool
    np_state = np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            for start in range(0, len(flat), batch_envs):
                torch.manual_seed(seed + start)
                chunk = flat[start:start + batch_envs]
                env, kept = envs.env(env_cfg, chunk, seed + start)
                try:
                    results.append(rollout_episodes(env, policy, max_steps, exploration))
                finally:
                    if not kept:
                        env.close(raise_if_closed=False)
    finally:
        np.random.set_state(np_state)
        if pool is None:
            envs.close()
    return tuple(torch.cat(parts).view(len(eps), episodes) for parts in zip(*results))


class PeriodicEvaluation(Callback):
    """Deterministic episodes on the evaluation grid every `every_epochs` epochs and after the last one, logged at
    the global frame count (see the module docstring). `latest_eval` (eps -> J_c) feeds the progress bar;
    `final_metrics` (the last evaluation's `eval/...` and `train/frames`) is what `ccpo_pl.fit` returns.

    Args:
        env_cfg: the run's `env` config (`make_env`).
        eps_eval: the evaluation grid; `eps_behavior`: the behaviour thresholds (seen / unseen split, the plot).
        episodes: episodes per threshold; `every_epochs`: the evaluation period; `seed`: the run's seed.
        horizon: the episode length bound (`env.max_episode_steps`).
    """

    def __init__(self, env_cfg: Mapping, eps_eval: Sequence[float], eps_behavior: Sequence[float], *,
                 episodes: int = 1, every_epochs: int = 1, seed: int = 0, horizon: int):
        self.env_cfg, self.eps_eval = env_cfg, [float(e) for e in eps_eval]
        self.eps_behavior = [float(e) for e in eps_behavior]
        self.episodes, self.every_epochs = int(episodes), int(every_epochs)
        self.seed, self.horizon = int(seed), int(horizon)
        self.latest_eval: dict[float, float] = {}
        self.final_metrics: dict[str, float] = {}
        self.pool = EnvPool()  # the evaluation envs, built at the first evaluation and kept for the run

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.pool.close()

    def on_train_start(self, trainer, pl_module) -> None:
        self.log_layout(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_epochs == 0 or epoch >= trainer.max_epochs:
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Deterministic episodes on the evaluation grid; logs the per-threshold metrics, the averages and the plot."""
        start = time.perf_counter()
        ep_r, ep_c, _ = evaluate_thresholds(make_policy(pl_module.actor), self.env_cfg, self.eps_eval, self.episodes,
                                            seed=self.seed + 10_000 * (1 + trainer.global_rank),
                                            max_steps=self.horizon, batch_envs=len(self.eps_eval) * self.episodes,
                                            pool=self.pool)
        eps = torch.tensor(self.eps_eval, dtype=torch.float64)
        ep_c = ep_c.double()
        stats = torch.stack([ep_r.double().mean(1), ep_c.mean(1), cost_violation_per_episode(ep_c, eps)], 0)
        stats = pl_module.reduce_mean(stats.to(pl_module.device)).cpu().double()
        reward, cost = stats[0].tolist(), stats[1].tolist()
        cv = cost_violation(stats[1], eps).tolist()
        metrics = {}
        for i, e in enumerate(self.eps_eval):
            metrics |= {f"eval/{eps_tag(e)}/reward": reward[i], f"eval/{eps_tag(e)}/cost": cost[i],
                        f"eval/{eps_tag(e)}/cv": cv[i]}
        summary = summarize(reward, cv, seen_mask(self.eps_eval, self.eps_behavior), stats[2].tolist())
        metrics |= {f"eval/{k}": v for k, v in summary.items() if not math.isnan(v)}
        frames = pl_module.global_frames
        self.latest_eval = dict(zip(self.eps_eval, cost))
        self.final_metrics = metrics | {"train/frames": float(frames)}
        if pl_module.logger is not None:
            pl_module.logger.log_metrics(metrics, step=frames)
            if trainer.global_rank == 0:  # the J(eps) plot: `eval/curves`, to each logger in its own form
                fig = plot_curves({"eps": self.eps_eval, "reward_mean": reward, "cost_mean": cost},
                                  self.eps_behavior, f"{frames} frames")
                log_figure(trainer.loggers, "eval/curves", fig, frames)
        if hasattr(pl_module, "clock"):
            pl_module.clock.add_eval(time.perf_counter() - start)
        return metrics

    @staticmethod
    def log_layout(trainer, pl_module) -> None:
        """TensorBoard custom scalars: every threshold's curve of a quantity on one chart, one colour and legend
        entry per threshold (each threshold is its own TensorBoard run: `tb_runs`; rank 0 only)."""
        writer = getattr(pl_module.logger, "experiment", None)
        if trainer.global_rank != 0 or not hasattr(writer, "add_custom_scalars"):
            return
        multi = lambda tag: ["Multiline", [f"^{re.escape(tag)}$"]]  # noqa: E731 - a TensorBoard regex over tags
        per_eps = getattr(pl_module, "per_eps_metrics", dict)()
        first = tb_runs.FIRST_SECTION
        layout = {
            "eval: one line per threshold": {
                "J_r(eps): episode reward": multi(f"{first}/eval_reward"),
                "J_c(eps): episode cost": multi(f"{first}/eval_cost"),
                "CV(eps) = max(0, J_c - eps)": multi("eval/cv"),
                "Avg. R and Avg. R-G": ["Multiline", [r"^eval/avg_reward.*"]],
                "Avg. CV and Avg. CV-G": ["Multiline", [r"^eval/avg_cv.*"]],
            },
            "train: one line per behaviour threshold": {
                "episode reward": multi(f"{first}/train_episode_reward"),
                "episode cost": multi(f"{first}/train_episode_cost"),
            },
            "per threshold bin": {name: multi(name) for name in per_eps},
        }
        writer.add_custom_scalars(layout)


def plot_curves(stats: Mapping[str, Sequence[float]] | Mapping[str, Mapping[str, Sequence[float]]],
                behavior: Sequence[float], title: str = "", eps_range: Sequence[float] | None = None) -> Figure:
    """J_r(eps) and J_c(eps) against eps (mean +- std over episodes), with the line y = eps on the cost panel
    and the behaviour thresholds marked. `stats`: one policy's per-threshold stats, or policy name -> stats (one
    line each: the deterministic policy solid, the stochastic one dashed). With `eps_range`, the trained range,
    the thresholds outside it are shaded (extrapolation)."""
    by_policy = stats if "eps" not in stats else {"": stats}
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax_r, ax_c = fig.subplots(1, 2)
    for name, st in by_policy.items():
        style = {"marker": "o", "capsize": 3, "linestyle": "--" if name == "stochastic" else "-"}
        suffix = f" ({name})" if name else ""
        ax_r.errorbar(st["eps"], st["reward_mean"], yerr=st.get("reward_std"), color="C0", label=f"J_r(eps){suffix}",
                      **style)
        ax_c.errorbar(st["eps"], st["cost_mean"], yerr=st.get("cost_std"), color="C3", label=f"J_c(eps){suffix}",
                      **style)
    eps = [e for st in by_policy.values() for e in st["eps"]]
    lo, hi = min(eps), max(eps)
    ax_c.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = eps")
    for ax, name in ((ax_r, "J_r(eps): episode reward"), (ax_c, "J_c(eps): episode cost")):
        outside = [] if eps_range is None else [(lo, float(eps_range[0])), (float(eps_range[1]), hi)]
        for i, (a, b) in enumerate((a, b) for a, b in outside if a < b):
            ax.axvspan(a, b, color="grey", alpha=0.15, label="outside the trained eps range" if i == 0 else None)
        for i, b in enumerate(behavior):
            ax.axvline(float(b), color="grey", linestyle=":", linewidth=1, label="behaviour eps" if i == 0 else None)
        ax.set_xlabel("cost threshold eps")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    ax_c.legend(loc="upper left")
    if len(by_policy) > 1:
        ax_r.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def markdown_table(stats: Mapping[str, Mapping[str, Sequence]], summary: Mapping[str, Mapping[str, float]],
                   title: str) -> str:
    """`eval/table.md`: per policy (name -> per-threshold stats, name -> averages), the per-threshold table and the
    summary lines. CV: of the mean episode cost; CV/ep: the mean over episodes of each episode's violation."""
    fmt = lambda v: "n/a (no unseen threshold)" if v is None or math.isnan(v) else f"{v:.2f}"  # noqa: E731
    lines = [f"# {title}"]
    for policy, st in stats.items():
        avg = summary[policy]
        lines += ["", f"## {policy} policy", "", "| eps | J_r(eps) | J_c(eps) | CV(eps) | CV/ep(eps) | seen | note |",
                  "|---:|---:|---:|---:|---:|:---:|---|"]
        for i, e in enumerate(st["eps"]):
            note = "extrapolation: outside the trained eps range" if st["extrapolation"][i] else ""
            lines.append(f"| {e:g} | {st['reward_mean'][i]:.2f} ± {st['reward_std'][i]:.2f} "
                         f"| {st['cost_mean'][i]:.2f} ± {st['cost_std'][i]:.2f} | {st['cv'][i]:.2f} "
                         f"| {st['cv_per_episode'][i]:.2f} | {'yes' if st['seen'][i] else 'no'} | {note} |")
        lines += ["", f"- Avg. R: {fmt(avg['avg_reward'])}",
                  f"- Avg. CV: {fmt(avg['avg_cv'])} (per episode: {fmt(avg['avg_cv_per_episode'])})",
                  f"- Avg. R-G (unseen thresholds): {fmt(avg['avg_reward_unseen'])}",
                  f"- Avg. CV-G (unseen thresholds): {fmt(avg['avg_cv_unseen'])} "
                  f"(per episode: {fmt(avg['avg_cv_per_episode_unseen'])})"]
    return "\n".join(lines) + "\n"


def _csv(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _cell(key: str, value) -> str:
    if key in ("seen", "extrapolation", "episode", "length"):
        return str(int(value))
    if key == "policy":
        return value
    return f"{value:g}" if key == "eps" else f"{value:.6g}"


def eval_files(stats: Mapping[str, Mapping[str, Sequence]], episodes: Mapping[str, Sequence[Tensor]],
               summary: Mapping, behavior: Sequence[float], title: str) -> dict[str, bytes]:
    """The evaluation's files: `per_eps.csv` (a row per policy and threshold), `per_episode.csv` (a row per
    episode: policy, eps, episode, reward, cost, length), `table.md`, `curves.png` and `summary.json`.
    `stats`: policy -> per-threshold stats; `episodes`: policy -> (reward, cost, length) `[n_eps, episodes]`."""
    per_eps = [CSV_COLUMNS] + [[_cell(k, policy if k == "policy" else st[k][i]) for k in CSV_COLUMNS]
                               for policy, st in stats.items() for i in range(len(st["eps"]))]
    per_episode = [EPISODE_COLUMNS]
    for policy, (reward, cost, length) in episodes.items():
        for i, e in enumerate(stats[policy]["eps"]):
            per_episode += [[policy, _cell("eps", e), str(j), _cell("reward", float(reward[i, j])),
                             _cell("cost", float(cost[i, j])), _cell("length", int(length[i, j]))]
                            for j in range(reward.shape[1])]
    png = io.BytesIO()
    plot_curves(stats, behavior, title, summary.get("eps_range")).savefig(png, format="png")
    return {"per_eps.csv": _csv(per_eps), "per_episode.csv": _csv(per_episode),
            "table.md": markdown_table(stats, summary["by_policy"], title).encode(), "curves.png": png.getvalue(),
            "summary.json": (json.dumps(_json_safe(dict(summary)), indent=2) + "\n").encode()}


def resolve_checkpoint(run: str | Path) -> tuple[Path, Path]:
    """(checkpoint, run directory) of `run`: a run directory (its `checkpoints/last.ckpt`) or a checkpoint file."""
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"run={run!r} ({type(run).__name__}) is not allowed; allowed: a run directory or a .ckpt "
                        f"file, as a str or a Path")
    path = Path(run)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ConfigError(f"run={str(run)!r} has no checkpoints/last.ckpt; pass a ccpo_pl.fit run directory "
                              f"or a .ckpt file")
        return ckpt, path
    if path.is_file():
        return path, path.parent.parent if path.parent.name == "checkpoints" else path.parent
    raise ConfigError(f"run={str(run)!r} does not exist; pass a ccpo_pl.fit run directory or a .ckpt file")


FLOAT32_MAX = float(np.finfo(np.float32).max)
#: the most episodes per threshold, sub-envs side by side and thresholds an evaluation takes
MAX_EPISODES, MAX_BATCH_ENVS, MAX_THRESHOLDS = 100_000, 4096, 1000


def check_thresholds(eps) -> list[float]:
    """The evaluation thresholds as floats; a one-line error for an empty list, a value that is not > 0 and finite
    in float32 (the precision the policy and the simulator use), or one given twice."""
    if eps is None or isinstance(eps, (str, int, float, Mapping)) or len(eps) == 0:
        raise ConfigError(f"eps={eps!r} must be a non-empty list of thresholds > 0, e.g. eps=[10,40,70]")
    if len(eps) > MAX_THRESHOLDS:
        raise ConfigError(f"eps has {len(eps)} thresholds; at most {MAX_THRESHOLDS} are allowed")
    bad = [e for e in eps if isinstance(e, bool) or not isinstance(e, (int, float)) or not float32_positive(e)]
    if bad:
        raise ConfigError(f"eps has {bad}; thresholds must be numbers > 0, finite in float32 (at most 3.4e38)")
    twice = sorted({float(e) for e in eps if [float(x) for x in eps].count(float(e)) > 1})
    if twice:
        raise ConfigError(f"eps has {twice[0]:g} more than once; give each threshold once (an average would count "
                          f"it twice)")
    return [float(e) for e in eps]


def float32_positive(value: float) -> bool:
    """`value` > 0 and finite once it is a float32."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX and float(np.float32(value)) > 0


def evaluate_run(run: str | Path, *, eps: Sequence[float] | None = None, episodes: int = 10, seed: int = 0,
                 out: str | Path | None = None, policy: str = "both", batch_envs: int = 64,
                 expect: Mapping[str, str] | None = None, extra: Mapping | None = None,
                 extrapolation: str | None = None,
                 extra_files: Callable[[nn.Module, dict, list[float]], Mapping[str, bytes]] | None = None,
                 overwrite: bool = False) -> dict:
    """Evaluate the policy of a run or checkpoint on a threshold grid and write the `eval/` files; returns the
    summary (the keys of `eval/summary.json`).

    `eps=None` uses the run's own evaluation grid. `expect`, e.g. `{"env.name": "ball_circle"}`, refuses a
    checkpoint of another env or algorithm. Thresholds outside the run's trained range are evaluated and flagged.
    `extrapolation` ("linear" or "nearest"; the combined-policy baselines only) replaces the run's reading of the
    linear combination outside the behaviour range; the nearest reading is labelled `<label>-nearest`.
    `extra_files(actor, run config, eps)` -> {path relative to the output directory: content}: called after every
    check and before the output directory is made (it may refuse with a `ConfigError`); its files are written with
    the others (`ccpo_pl.video.mp4_files`: one MP4 per threshold).

    The files are one folder, written whole (`ccpo_pl.outputs`): an existing evaluation in `out` is replaced only
    with `overwrite`, a folder holding anything else never; a second writer to the same `out` is refused.
    """
    if not isinstance(episodes, int) or isinstance(episodes, bool) or not 0 < episodes <= MAX_EPISODES:
        raise ConfigError(f"episodes={episodes!r} must be a positive integer, at most {MAX_EPISODES}")
    if not isinstance(batch_envs, int) or isinstance(batch_envs, bool) or not 0 < batch_envs <= MAX_BATCH_ENVS:
        raise ConfigError(f"batch_envs={batch_envs!r} must be a positive integer, at most {MAX_BATCH_ENVS}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32 - 1_000_000:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, {2**32 - 1_000_001}] (sub-env j uses seed + j)")
    if policy not in POLICIES:
        raise ConfigError(f"policy={policy!r}; allowed: {', '.join(POLICIES)}")
    if extrapolation not in (None, *EXTRAPOLATIONS):
        raise ConfigError(f"extrapolation={extrapolation!r}; allowed: {', '.join(EXTRAPOLATIONS)} (or null)")
    ckpt, run_dir, data, actor, cfg = load_run(run, algo_overrides=None if extrapolation is None
                                               else {"extrapolation": extrapolation})
    if extrapolation is not None and cfg["algo"]["name"] not in COMBINED:
        raise ConfigError(f"extrapolation={extrapolation!r} applies to {', '.join(COMBINED)} checkpoints only, "
                          f"not algo {cfg['algo']['name']!r}")
    for key, want in (expect or {}).items():
        group, name = key.split(".")
        have = cfg[group][name]
        if want is not None and have != want:
            raise ConfigError(f"{str(ckpt)!r} is a {key}={have!r} checkpoint, not {key}={want!r}")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = [eps]  # one threshold
    eps = check_thresholds(cfg["eps"]["eval"] if eps is None else list(eps))
    out_dir = Path(out) if out is not None else run_dir / "eval"
    outputs.check_target(out_dir, outputs.EVALUATION, overwrite=overwrite, inputs=[ckpt])
    files = extra_files(actor, cfg, eps) if extra_files is not None else {}
    with outputs.claim(out_dir, outputs.EVALUATION, overwrite=overwrite, inputs=[ckpt]) as place:
        summary, stats, runs, behavior, title = _evaluate(actor, cfg, data, ckpt, run_dir, eps, episodes, seed, policy,
                                                          batch_envs, extrapolation, extra)
        place.write_folder(eval_files(stats, runs, summary, behavior, title) | dict(files))
    return summary


def _evaluate(actor, cfg, data, ckpt, run_dir, eps, episodes, seed, policy, batch_envs, extrapolation, extra):
    """The episodes of `evaluate_run` and what its files are made of: (summary, stats, episodes, behaviour
    thresholds, title)."""
    behavior = [float(b) for b in cfg["eps"]["behavior"]]
    stats, averages, runs = {}, {}, {}
    for name in POLICIES[policy]:  # the same start states (seed) for every policy
        runs[name] = evaluate_thresholds(make_policy(actor), cfg["env"], eps, episodes, seed=seed,
                                         max_steps=int(cfg["env"]["max_episode_steps"]), batch_envs=batch_envs,
                                         exploration=EXPLORATION[name])
    for name in POLICIES[policy]:
        st = per_eps_stats(eps, *runs[name][:2])
        st["seen"] = seen_mask(eps, behavior)
        st["extrapolation"] = outside_range(eps, cfg["eps"]["range"])
        stats[name] = st
        averages[name] = summarize(st["reward_mean"], st["cv"], st["seen"], st["cv_per_episode"])
    state = training_state(data) or {}
    headline = POLICIES[policy][0]
    summary = averages[headline] | {
        "by_policy": averages, "episodes": episodes, "eps": eps,
        "task": cfg["env"]["name"], "env_id": cfg["env"]["id"], "algo": cfg["algo"]["name"],
        "label": (cfg.get("label") or cfg["algo"]["name"]) + ("-nearest" if extrapolation == "nearest" else ""),
        "seed": cfg["seed"], "behavior": behavior,
        "eps_range": [float(x) for x in cfg["eps"]["range"]], "policy": headline, "eval_seed": seed,
        "checkpoint": os.path.relpath(ckpt, run_dir),
        "frames": int(state.get("stream", {}).get("frames", 0)) * int(state.get("world_size", 1)),
        "train_wall_s": state.get("elapsed_s"),
    } | dict(extra or {})
    title = (f"{cfg['env']['id']} {summary['label']} seed {cfg['seed']}: {summary['frames']} frames, "
             f"{' and '.join(POLICIES[policy])} policy")
    return summary, stats, runs, behavior, title
