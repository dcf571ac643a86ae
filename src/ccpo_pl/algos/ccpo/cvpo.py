"""Single-threshold CVPO (Liu et al., "Constrained Variational Policy Optimization", ICML 2022): the base CCPO extends.

`CVPO` is the `CCPO` module (same critic step, conditioned E-step, M-step, equations) run at one fixed threshold:
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

import functools
from collections.abc import Mapping, Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.nets import make_actor


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


class CVPO(CCPO):
    """CCPO's E-step/M-step at one fixed threshold, without VVE or versatile thresholds (see module docstring)."""

    def __init__(self, actor: nn.Module, critic: nn.Module, *, threshold: float, **kwargs):
        super().__init__(PinnedEps(actor, threshold), critic, **kwargs)
        self.threshold = float(threshold)

    def collection_eps(self) -> list[float]:
        """The training envs draw only this threshold."""
        return [self.threshold]

    def sample_train_eps(self) -> Tensor:
        """The one threshold of every update."""
        return torch.tensor([self.threshold], device=self.device)


def cvpo_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> PinnedEps:
    """CVPO's policy from a run's plain resolved config (`AlgoSpec.make_actor`)."""
    eps = run_cfg["eps"]
    threshold = cvpo_threshold(run_cfg["algo"], eps["behavior"], eps["range"])
    return PinnedEps(make_actor(run_cfg["algo"], obs_dim, act_dim, eps["range"]), threshold)


def build_cvpo(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> CVPO:
    """CVPO from the composed config: CCPO's builder with the module class and threshold swapped in."""
    from ccpo_pl.algos.registry import build_ccpo

    threshold = cvpo_threshold(cfg.algo, cfg.eps.behavior, cfg.eps.range)
    return build_ccpo(cfg, obs_dim, act_dim, module_cls=functools.partial(CVPO, threshold=threshold),
                      **base_kwargs)
