"""The CCPO paper's evaluation metrics (Table 1), as pure functions of episode data.

Per threshold eps: J_r(eps) and J_c(eps) are the mean episode reward and cost over the evaluation episodes, and
CV(eps) = max(0, J_c(eps) - eps). Over a threshold grid: Avg. R and Avg. CV average them over every threshold;
Avg. R-G and Avg. CV-G over the thresholds outside the behaviour set (the zero-shot ones). Over seeds: mean and
standard deviation (numpy's default, ddof=0) of each run's averages.

CV comes in two definitions: `cv` of the mean episode cost (above), and `cv_per_episode`, the mean over episodes
of max(0, J_c - eps). By Jensen's inequality cv <= cv_per_episode: an episode far below eps hides one above it in
the first, not in the second. The paper does not state its formula; both are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: tolerance for "this threshold is one of the behaviour thresholds"
SEEN_ATOL = 1e-6


def eps_tag(eps: float) -> str:
    """`eps_20`, `eps_12.5`: the TensorBoard group of a threshold."""
    return f"eps_{float(eps):g}"


def threshold_bins(eps_behavior: Sequence[float], eps_range: Sequence[float], step: float) -> list[float]:
    """The training-threshold grid of the per-threshold training metrics: `eps_range` every `step`, plus the
    behaviour thresholds."""
    lo, hi = float(eps_range[0]), float(eps_range[1])
    grid = np.arange(lo, hi + 1e-9, float(step)).tolist()
    return sorted({round(x, 6) for x in grid} | {float(e) for e in eps_behavior})


def cost_violation(cost: Tensor, eps: Tensor) -> Tensor:
    """CCPO paper Table 1: CV(eps) = max(0, J_c(eps) - eps), the episodic cost above the threshold."""
    return (cost - eps).clamp_min(0.0)


def cost_violation_per_episode(ep_cost: Tensor, eps: Tensor) -> Tensor:
    """Mean over episodes of max(0, J_c - eps): `ep_cost [n_eps, episodes]`, `eps [n_eps]` -> `[n_eps]`."""
    return (ep_cost - eps[:, None]).clamp_min(0.0).mean(1)


def seen_mask(eps: Sequence[float], behavior: Sequence[float]) -> list[bool]:
    """True for the thresholds of `eps` that are behaviour thresholds (trained on), False for unseen ones."""
    return [any(abs(float(e) - float(b)) <= SEEN_ATOL for b in behavior) for e in eps]


def outside_range(eps: Sequence[float], eps_range: Sequence[float]) -> list[bool]:
    """True for the thresholds outside the trained interval `eps_range` (extrapolation, not interpolation)."""
    lo, hi = float(eps_range[0]), float(eps_range[1])
    return [not lo - SEEN_ATOL <= float(e) <= hi + SEEN_ATOL for e in eps]


def per_eps_stats(eps: Sequence[float], ep_reward: Tensor, ep_cost: Tensor) -> dict[str, list[float]]:
    """Mean and std (over episodes, ddof=0) of episode reward and cost per threshold, CV(eps) of the mean cost and
    the per-episode CV (`cost_violation_per_episode`).

    `ep_reward`, `ep_cost`: `[n_eps, episodes]`, row i holding the episodes run at `eps[i]`.
    """
    if ep_reward.shape != ep_cost.shape or ep_reward.shape[0] != len(eps):
        raise ValueError(f"episode tensors {tuple(ep_reward.shape)}/{tuple(ep_cost.shape)} do not match "
                         f"{len(eps)} thresholds")
    r, c = ep_reward.double(), ep_cost.double()
    cost_mean = c.mean(1)
    eps_t = torch.tensor([float(e) for e in eps], dtype=torch.float64)
    return {"eps": [float(e) for e in eps],
            "reward_mean": r.mean(1).tolist(), "reward_std": r.std(1, correction=0).tolist(),
            "cost_mean": cost_mean.tolist(), "cost_std": c.std(1, correction=0).tolist(),
            "cv": cost_violation(cost_mean, eps_t).tolist(),
            "cv_per_episode": cost_violation_per_episode(c, eps_t).tolist()}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarize(reward_mean: Sequence[float], cv: Sequence[float], seen: Sequence[bool],
              cv_per_episode: Sequence[float] | None = None) -> dict[str, float]:
    """CCPO paper Table 1 averages over a threshold grid: Avg. R, Avg. CV, and Avg. R-G, Avg. CV-G over the
    unseen thresholds (NaN when every threshold was a behaviour threshold); with `cv_per_episode`, the same two
    averages of it (`avg_cv_per_episode`, `avg_cv_per_episode_unseen`)."""
    unseen = [i for i, s in enumerate(seen) if not s]
    out = {"avg_reward": _mean(list(reward_mean)), "avg_cv": _mean(list(cv)),
           "avg_reward_unseen": _mean([reward_mean[i] for i in unseen]),
           "avg_cv_unseen": _mean([cv[i] for i in unseen])}
    if cv_per_episode is not None:
        out["avg_cv_per_episode"] = _mean(list(cv_per_episode))
        out["avg_cv_per_episode_unseen"] = _mean([cv_per_episode[i] for i in unseen])
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof=0) over seeds, ignoring NaN; (nan, nan) when nothing is left."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def sweep_grid(eps_range: Sequence[float], step: float = 2.5, ends: int = 2) -> list[float]:
    """A fine threshold grid for a policy's J_c(eps): `eps_range` every `step`, plus `ends` steps beyond each end
    (the extrapolated thresholds), keeping only thresholds > 0."""
    lo, hi, step = float(eps_range[0]), float(eps_range[1]), float(step)
    n = int(math.floor((hi - lo) / step + 1e-9))
    grid = [lo + i * step for i in range(-ends, n + 1 + ends)]
    return [round(e, 6) for e in grid if e > 0]


def monotone_within_noise(eps: Sequence[float], cost_mean: Sequence[float], cost_sem: Sequence[float],
                          z: float = 2.0) -> tuple[bool, float]:
    """Whether J_c(eps) is non-decreasing in eps within noise: for every pair eps_i < eps_j the drop
    J_c(eps_i) - J_c(eps_j) stays within z combined standard errors sqrt(sem_i^2 + sem_j^2). Returns (monotone,
    the largest drop in those standard errors; 0 where J_c never falls)."""
    order = np.argsort(np.asarray(eps, dtype=float), kind="stable")
    c = np.asarray(cost_mean, dtype=float)[order]
    s = np.asarray(cost_sem, dtype=float)[order]
    drop = c[:, None] - c[None, :]  # [i, j]: J_c(eps_i) - J_c(eps_j)
    se = np.sqrt(s[:, None] ** 2 + s[None, :] ** 2)
    later = np.triu(np.ones_like(drop, dtype=bool), k=1)  # pairs eps_i < eps_j
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(drop > 0, np.where(se > 0, drop / se, np.inf), 0.0)
    worst = float(score[later].max()) if later.any() else 0.0
    return worst <= z, worst


def sweep_summary(eps: Sequence[float], ep_cost: Tensor, *, tolerance: float = 0.1) -> dict[str, float | bool]:
    """What a fine-grid sweep of one policy says about its cost: the worst CV(eps) (`cost_violation` of the mean
    episode cost) and where it is, the worst CV relative to eps, the share of thresholds whose CV exceeds
    `tolerance` * eps, and whether J_c(eps) is monotone within noise (`monotone_within_noise`, standard errors of
    the mean over episodes, ddof=1). `ep_cost`: `[n_eps, episodes]`, row i at `eps[i]`."""
    c = ep_cost.double()
    eps_t = torch.tensor([float(e) for e in eps], dtype=torch.float64)
    cost_mean = c.mean(1)
    sem = c.std(1, correction=1) / math.sqrt(c.shape[1]) if c.shape[1] > 1 else torch.zeros_like(cost_mean)
    cv = cost_violation(cost_mean, eps_t)
    i = int(cv.argmax())
    monotone, drop = monotone_within_noise(eps_t.tolist(), cost_mean.tolist(), sem.tolist())
    return {"worst_cv": float(cv[i]), "worst_cv_eps": float(eps_t[i]), "worst_cv_rel": float((cv / eps_t).max()),
            "share_violated": float((cv > tolerance * eps_t).double().mean()), "monotone": monotone,
            "max_drop_se": drop}
