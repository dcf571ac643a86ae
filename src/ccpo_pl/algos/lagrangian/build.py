"""Builders of V-SAC-Lag and V-DDPG-Lag from the composed config (`registry.AlgoSpec.build`).

They read only their own keys of `cfg.algo`; keys meant for other algorithms (e.g. `num_samples`, `compile` set by
`experiment=smoke`) are ignored.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ccpo_pl.algos.lagrangian.nets import DeterministicEpsActor, SquashedEpsActor
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.nets import PlainCritic

TRUNKS = ("shared", "separate")


def _critics(cfg: DictConfig, obs_dim: int, act_dim: int, n: int) -> nn.ModuleList:
    """n `PlainCritic`s Q_r, Q_c of (s, a, e)."""
    trunk = cfg.algo.critic_trunk
    if trunk not in TRUNKS:
        raise ValueError(f"algo.critic_trunk={trunk!r} is not allowed; use 'shared' or 'separate'")
    return nn.ModuleList(PlainCritic(obs_dim, act_dim, cfg.algo.hidden, cfg.eps.range, trunk == "shared")
                         for _ in range(n))


def _common(cfg: DictConfig) -> dict:
    a = cfg.algo
    return dict(gamma=a.gamma, tau=a.tau, lr_actor=a.lr_actor, lr_critic=a.lr_critic, train_eps=a.train_eps,
                lagrange=OmegaConf.to_container(a.lagrange, resolve=True))


def build_v_sac_lag(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """V-SAC-Lag: squashed-Gaussian eps-conditioned actor, twin critics, auto-tuned temperature."""
    from ccpo_pl.algos.lagrangian.module import VSACLag

    a = cfg.algo
    actor = SquashedEpsActor(obs_dim, act_dim, a.hidden, cfg.eps.range, *a.log_std)
    return VSACLag(actor, _critics(cfg, obs_dim, act_dim, 2), act_dim=act_dim, alpha_init=a.alpha.init,
                   lr_alpha=a.alpha.lr, target_entropy=a.alpha.target_entropy, learn_alpha=a.alpha.learn,
                   **_common(cfg), **base_kwargs)


def build_v_ddpg_lag(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """V-DDPG-Lag: deterministic eps-conditioned actor with Gaussian exploration, one critic per objective."""
    from ccpo_pl.algos.lagrangian.module import VDDPGLag

    a = cfg.algo
    actor = DeterministicEpsActor(obs_dim, act_dim, a.hidden, cfg.eps.range, a.exploration_noise)
    return VDDPGLag(actor, _critics(cfg, obs_dim, act_dim, 1), **_common(cfg), **base_kwargs)
