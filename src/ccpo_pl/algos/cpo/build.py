"""Builder of CPO and the CPO paper's baselines (`registry.AlgoSpec`): `algo.name` (cpo, pdo, trpo, fpo) is the
`variant` of the one `CPO` module."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ccpo_pl.algos.cpo.module import CPO
from ccpo_pl.errors import ConfigError
from ccpo_pl.nets import ValueCritic, make_run_actor

__all__ = ["build", "make_actor"]

KEYS = ("gamma", "gae_lambda", "lr_value", "value_epochs", "minibatch_size", "target_kl", "cg_iters", "cg_damping",
        "cg_residual_tol", "max_backtracks", "backtrack_coeff", "penalty_nu", "lagrange", "cost_shaping", "shaping")


#: The policy of a run: its `EpsActor`, trained at the run's one threshold.
make_actor = make_run_actor


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> CPO:
    """CPO / PDO / TRPO / FPO (`algo.name`) from the composed config; a one-line `ConfigError` unless
    `eps.behavior` holds exactly one threshold (the cost limit)."""
    a = OmegaConf.to_container(cfg.algo, resolve=True)
    if len(cfg.eps.behavior) != 1:
        raise ConfigError(f"algo={a['name']} trains at one cost limit: eps.behavior={list(cfg.eps.behavior)} must "
                          f"hold one value, e.g. eps.behavior=[25]")
    actor = make_actor(cfg, obs_dim, act_dim)
    value = ValueCritic(obs_dim, a["hidden"], cfg.eps.range)
    return CPO(actor, value, variant=a["name"], **{k: a[k] for k in KEYS}, **base_kwargs)
