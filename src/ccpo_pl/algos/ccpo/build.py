"""CCPO's builders (`registry.AlgoSpec`): `ccpo` and its ablations as flags (`algo.vve`, `algo.cvi`), and `cvpo`,
the CCPO module at one fixed threshold behind an eps-pinned policy (`ccpo.cvpo`)."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ccpo_pl.algos.ccpo.cvpo import PinnedEps, cvpo_threshold
from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.nets import make_critic, make_run_actor

__all__ = ["build", "make_actor"]


def is_cvpo(run_cfg: Mapping) -> bool:
    return run_cfg["algo"]["name"] == "cvpo"


def make_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> nn.Module:
    """The policy of a run from its plain resolved config: the `EpsActor`, pinned to CVPO's threshold for `cvpo`."""
    actor = make_run_actor(run_cfg, obs_dim, act_dim)
    if not is_cvpo(run_cfg):
        return actor
    eps = run_cfg["eps"]
    return PinnedEps(actor, cvpo_threshold(run_cfg["algo"], eps["behavior"], eps["range"]))


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> CCPO:
    """CCPO (or CVPO, `algo.name=cvpo`) from the composed config."""
    a = cfg.algo
    threshold = None
    if is_cvpo(cfg):  # its training envs draw only this threshold (`CCPO.collection_eps`)
        threshold = cvpo_threshold(a, cfg.eps.behavior, cfg.eps.range)
    plain = OmegaConf.to_container(a, resolve=True)
    return CCPO(
        make_actor(cfg, obs_dim, act_dim), make_critic(a, obs_dim, act_dim, cfg.eps.range), gamma=a.gamma,
        tau=a.tau, lr_actor=a.lr_actor, lr_critic=a.lr_critic, n_eps=a.n_eps, versatile_start=a.versatile_start,
        versatile_frac=a.versatile_frac, states_per_eps=a.states_per_eps,
        num_samples=a.num_samples,
        kappa=a.kappa, action_penalty=a.get("action_penalty", 0.0),
        episode_cost_decay=a.get("episode_cost_decay", 0.0), dual=plain["dual"],
        kl_mean_bound=a.kl_mean_bound, kl_cov_bound=a.kl_cov_bound,
        kl_lr=tuple(a.kl_lr), kl_max=tuple(a.kl_max), cvi=a.cvi, lagrangian=plain["lagrange"], compile=a.compile,
        estep_precision=a.estep_precision, threshold=threshold, **base_kwargs,
    )
