"""Builders of V-SAC-Lag and V-DDPG-Lag (`registry.AlgoSpec`), chosen by `algo.name`.

They read only their own keys of `cfg.algo`; keys meant for other algorithms (e.g. `num_samples`, `compile` set by
`experiment=smoke`) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ccpo_pl.algos.lagrangian.module import OffPolicyLagrangian, VDDPGLag, VSACLag
from ccpo_pl.algos.lagrangian.nets import DeterministicEpsActor, SquashedEpsActor
from ccpo_pl.nets import PlainCritic

TRUNKS = ("shared", "separate")


def make_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> nn.Module:
    """The actor of a run from its config: SAC's squashed Gaussian (`v_sac_lag`) or DDPG's deterministic policy."""
    algo, eps_range = run_cfg["algo"], run_cfg["eps"]["range"]
    if algo["name"] == "v_ddpg_lag":
        return DeterministicEpsActor(obs_dim, act_dim, algo["hidden"], eps_range, algo["exploration_noise"])
    return SquashedEpsActor(obs_dim, act_dim, algo["hidden"], eps_range, *algo["log_std"])


def critics(cfg: DictConfig, obs_dim: int, act_dim: int, n: int) -> nn.ModuleList:
    """n `PlainCritic`s Q_r, Q_c of (s, a, e)."""
    trunk = cfg.algo.critic_trunk
    if trunk not in TRUNKS:
        raise ValueError(f"algo.critic_trunk={trunk!r} is not allowed; use 'shared' or 'separate'")
    return nn.ModuleList(PlainCritic(obs_dim, act_dim, cfg.algo.hidden, cfg.eps.range, trunk == "shared")
                         for _ in range(n))


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> OffPolicyLagrangian:
    """V-SAC-Lag (squashed-Gaussian actor, twin critics, auto-tuned temperature) or V-DDPG-Lag (deterministic actor
    with Gaussian exploration, one critic per objective), from the composed config."""
    a = cfg.algo
    common = dict(gamma=a.gamma, tau=a.tau, lr_actor=a.lr_actor, lr_critic=a.lr_critic, train_eps=a.train_eps,
                  lagrange=OmegaConf.to_container(a.lagrange, resolve=True))
    actor = make_actor(cfg, obs_dim, act_dim)
    if a.name == "v_ddpg_lag":
        return VDDPGLag(actor, critics(cfg, obs_dim, act_dim, 1), **common, **base_kwargs)
    return VSACLag(actor, critics(cfg, obs_dim, act_dim, 2), act_dim=act_dim, alpha_init=a.alpha.init,
                   lr_alpha=a.alpha.lr, target_entropy=a.alpha.target_entropy, learn_alpha=a.alpha.learn, **common,
                   **base_kwargs)
