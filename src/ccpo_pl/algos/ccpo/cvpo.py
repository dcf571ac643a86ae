"""Single-threshold CVPO (Liu et al., "Constrained Variational Policy Optimization", ICML 2022): the base CCPO extends.

CVPO is the `CCPO` module (same critic step, conditioned E-step, M-step, equations) run at one fixed threshold
(`CCPO(threshold=...)`, built by `ccpo.build.build` for `algo=cvpo`):
- one threshold per update, `algo.threshold` (default: the middle behaviour threshold), never versatile draws;
- a critic without VVE (`vve: false` in conf/algo/cvpo.yaml): eps is the constant threshold, so it is a plain Q(s, a);
- collection uses that threshold only (the training envs draw no other); `eps.behavior` keeps its meaning for the
  evaluation's seen/unseen split, so CVPO's R-G / CV-G are over the same thresholds as every other algorithm's;
- the policy ignores the eps it is given (`PinnedEps`): evaluated at any eps it is the one policy trained for
  its threshold, which is what a single-threshold baseline is.

Differences from FSRL's CVPO (fsrl/policy/cvpo.py, as summarised in the project's research notes), all inherited from
our CCPO implementation (see `ccpo_pl.algos.ccpo.module`):
1. E-step dual solved per batch to convergence by a batched projected Newton method, warm-started (FSRL: one Adam
   step, lr 0.02, on a persistent dual); eta in [1e-3, 1e3], lam <= 100 (FSRL: both clamped to [~1e-6, 20]).
2. Weights use Q_r - lam Q_c once (FSRL's in-place subtraction applies lam twice; not copied).
3. E-step Q values from the target critic (FSRL: the current critic).
4. M-step loss sums the K weighted log-likelihoods per state (FSRL: mean over K * S, i.e. / K); KL multipliers
   persistent per threshold bin and stepped by projected gradient (FSRL: Adam, reset every collect, clipped at read).
5. TD(0) critic targets (FSRL: 2-step returns); reward and cost heads on one shared trunk by default
   (`critic_trunk: shared`; FSRL: separate MLPs); the critic input carries the constant normalised threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def cvpo_threshold(algo_cfg: Mapping, eps_behavior: Sequence[float], eps_range: Sequence[float]) -> float:
    """The run's threshold: `algo.threshold`, or the middle behaviour threshold when it is null."""
    value = algo_cfg.get("threshold")
    if value is None:
        ordered = sorted(float(e) for e in eps_behavior)
        return ordered[len(ordered) // 2]
    lo, hi = float(eps_range[0]), float(eps_range[1])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"algo.threshold={value!r} is not allowed; use a number in eps.range={[lo, hi]} or null")
    return float(value)


class PinnedEps(nn.Module):
    """pi(a|s, eps) = policy(a|s, threshold) for every eps: a single-threshold policy behind the eps interface."""

    def __init__(self, policy: nn.Module, threshold: float):
        super().__init__()
        self.policy, self.threshold = policy, float(threshold)

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy(observation, torch.full_like(eps, self.threshold))
