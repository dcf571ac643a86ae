"""Algorithm name -> builder. Builders take the composed config and the env's sizes and return a module."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.nets import make_actor, make_critic


def build_ccpo(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """CCPO with its ablations as flags (`algo.vve`, `algo.cvi`)."""
    from ccpo_pl.algos.ccpo.module import CCPO

    a = cfg.algo
    actor = make_actor(a, obs_dim, act_dim, cfg.eps.range)
    critic = make_critic(a, obs_dim, act_dim, cfg.eps.range)
    plain = OmegaConf.to_container(a, resolve=True)
    return CCPO(
        actor, critic, gamma=a.gamma, tau=a.tau, lr_actor=a.lr_actor, lr_critic=a.lr_critic, n_eps=a.n_eps,
        versatile_start=a.versatile_start, versatile_frac=a.versatile_frac, states_per_eps=a.states_per_eps,
        num_samples=a.num_samples, kappa=a.kappa, dual=plain["dual"], kl_mean_bound=a.kl_mean_bound,
        kl_cov_bound=a.kl_cov_bound, kl_lr=tuple(a.kl_lr), kl_max=tuple(a.kl_max), cvi=a.cvi,
        lagrangian=plain["lagrangian"], compile=a.compile, estep_precision=a.estep_precision,
        on_nan=OmegaConf.select(cfg, "faults.on_nan", default="stop"), **base_kwargs,
    )


ALGOS: dict[str, Callable[..., SafeRLModule]] = {"ccpo": build_ccpo}


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """Build the module named by `cfg.algo.name`; an unknown name is a one-line error."""
    name = cfg.algo.name
    if name not in ALGOS:
        raise ValueError(f"unknown algo {name!r}; allowed: {', '.join(sorted(ALGOS))}")
    return ALGOS[name](cfg, obs_dim, act_dim, **base_kwargs)
