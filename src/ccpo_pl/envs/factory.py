"""Builds batched TorchRL envs with ``cost``, ``eps`` and episode sums for the bullet and safety-gymnasium tasks and
for any gymnasium env with a cost (the ``gymnasium`` suite, :mod:`ccpo_pl.envs.custom`).

The single envs they batch are `ccpo_pl.envs.base.make_base_env`'s; `BulletBatchEnv` batches the bullet ones in one
process.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from omegaconf import OmegaConf
from torchrl.envs import (
    ClipTransform,
    Compose,
    DoubleToFloat,
    EnvBase,
    ParallelEnv,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)

from ccpo_pl.envs.base import make_base_env
from ccpo_pl.envs.batched import BulletBatchEnv
from ccpo_pl.envs.tasks import SUITES, TASKS
from ccpo_pl.envs.transforms import CostToReward, EndOnNonFinite, EpsSampler


def _check_task(env_cfg: Mapping) -> tuple[str, str, int]:
    """Returns (suite, id, max_episode_steps) of ``env_cfg`` after checking suite and id against :data:`TASKS`, or
    for the ``gymnasium`` suite the env itself (``check_gym_env``: its spaces and cost)."""
    suite, env_id = env_cfg["suite"], env_cfg["id"]
    if suite not in SUITES:
        raise ValueError(f"unknown env suite {suite!r}; allowed: {SUITES}")
    if suite == "gymnasium":
        from ccpo_pl.envs.custom import check_gym_env  # here: importing gymnasium prints warnings

        check_gym_env(env_id, _kwargs(env_cfg))
        return suite, env_id, int(env_cfg["max_episode_steps"])
    ids = sorted(task_id for task_suite, task_id, _ in TASKS.values() if task_suite == suite)
    if env_id not in ids:
        raise ValueError(f"unknown {suite} env id {env_id!r}; allowed: {ids}")
    return suite, env_id, int(env_cfg["max_episode_steps"])


def _kwargs(env_cfg: Mapping) -> dict:
    """The env constructor's keyword arguments, ``env.kwargs`` (the ``gymnasium`` suite; empty elsewhere)."""
    kwargs = env_cfg.get("kwargs") or {}
    return OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)


def _action_bounds(env: EnvBase) -> tuple[float, float]:
    """Returns the scalar (low, high) of ``env``'s action spec; ``ClipTransform`` takes scalars only."""
    space = env.action_spec.space
    low, high = space.low, space.high
    if low.min() != low.max() or high.min() != high.max():
        raise ValueError(f"action bounds must be the same for every dimension; got low={low}, high={high}")
    return low.min().item(), high.max().item()


def action_bounds(env_cfg: Mapping) -> tuple[float, float]:
    """The scalar (low, high) that :func:`make_env` clips every action of the task ``env_cfg`` to; builds one env."""
    suite, env_id, _ = _check_task(env_cfg)
    env = make_base_env(suite, env_id, kwargs=_kwargs(env_cfg))
    try:
        return _action_bounds(env)
    finally:
        env.close(raise_if_closed=False)


def make_env(
    env_cfg: Mapping,
    *,
    num_envs: int,
    seed: int,
    eps_values: Sequence[float],
    eps_mode: str = "sample",
    parallel: bool = False,
    device: str | torch.device = "cpu",
) -> TransformedEnv:
    """Builds a batch of ``num_envs`` envs of one task, with cost, threshold and episode statistics.

    The result is ``TransformedEnv(SerialEnv(num_envs, ...))`` (``ParallelEnv`` if ``parallel``), batch size
    ``[num_envs]``; for the bullet suite in one process, ``TransformedEnv(BulletBatchEnv(...))``, the same
    entries with one tensordict per batched step (:mod:`ccpo_pl.envs.batched`). All transforms run batched in the
    calling process. Entries, per env (float32 unless noted):

    * ``observation`` ``[obs_dim]``; ``eps`` ``[1]``, the raw cost threshold of the current episode, also in
      ``("next", "eps")`` (see :class:`EpsSampler`); ``step_count`` int64 ``[1]``.
    * ``action`` ``[act_dim]``: kept as the policy wrote it; the simulator receives it clipped to the action bounds.
    * ``("next", "reward")``, ``("next", "cost")`` ``[1]``: the simulator's per-step reward and cost. Both are reward
      entries, so ``env.reward_key`` raises; pass keys explicitly.
    * ``("next", "episode_reward")``, ``("next", "episode_cost")`` ``[1]``: running sums within the episode.
    * ``done``/``terminated``/``truncated``: the time limit (``max_episode_steps``, enforced by ``StepCounter``
      as well as the gym ``TimeLimit``) sets ``truncated``, not ``terminated``; so does a step that returns a NaN
      or inf observation, reward or cost (:class:`EndOnNonFinite`: the value never reaches the policy).

    Args:
        env_cfg: mapping with ``name``, ``suite`` (``bullet`` | ``safety_gymnasium`` | ``gymnasium``), ``id`` (gym
            id, one of :data:`TASKS`; for ``gymnasium`` see :mod:`ccpo_pl.envs.custom`), ``max_episode_steps``
            and, for ``gymnasium``, optionally ``kwargs``.
        num_envs: number of envs in the batch.
        seed: sub-env ``i`` is seeded with ``seed + i`` when built. Under DDP pass ``base_seed + rank * num_envs``
            so that no two envs of the run share a seed. Bullet envs draw from numpy's global RNG (see
            :class:`~ccpo_pl.envs.base.BulletSafetyEnv`), so in one process they share one stream, seeded with ``seed``
            (``BulletBatchEnv``) or ``seed + num_envs - 1`` (``SerialEnv``, the last sub-env's seed). ``eps``
            draws use torch's global RNG: seed torch per rank as well.
        eps_values: thresholds for ``eps``: the set to draw from (``sample``) or one per env (``fixed``).
        eps_mode: ``"sample"`` (redrawn at every reset with torch's global RNG) or ``"fixed"`` (env ``i`` always
            has ``eps_values[i]``; needs ``len(eps_values) == num_envs``).
        parallel: one worker process per env (``ParallelEnv``) instead of one process (``SerialEnv``).
        device: device of the batched env's tensordicts.

    Raises:
        ValueError: unknown suite or id, unknown ``eps_mode``, or ``fixed`` mode with ``len(eps_values) != num_envs``;
            for the ``gymnasium`` suite a ``ConfigError`` (a ``ValueError``) from ``check_gym_env``.
    """
    suite, env_id, max_episode_steps = _check_task(env_cfg)
    eps_sampler = EpsSampler(eps_values, eps_mode)
    if eps_mode == "fixed" and len(eps_values) != num_envs:
        raise ValueError(
            f"eps_mode='fixed' needs len(eps_values) == num_envs; got eps_values={list(eps_values)}, "
            f"num_envs={num_envs}"
        )
    if suite == "bullet" and not parallel:
        base_env = BulletBatchEnv(env_id, num_envs, seed=seed, device=device)
    else:
        batched_cls = ParallelEnv if parallel else SerialEnv
        base_env = batched_cls(
            num_envs,
            functools.partial(make_base_env, suite, env_id, kwargs=_kwargs(env_cfg)),
            create_env_kwargs=[{"seed": seed + i} for i in range(num_envs)],
            device=device,
        )
    low, high = _action_bounds(base_env)
    transforms = Compose(
        ClipTransform(in_keys_inv=["action"], low=low, high=high),
        DoubleToFloat(),
        CostToReward(),
        StepCounter(max_steps=max_episode_steps),
        RewardSum(in_keys=["reward", "cost"], out_keys=["episode_reward", "episode_cost"]),
        eps_sampler,
        EndOnNonFinite(),
    )
    return TransformedEnv(base_env, transforms)
