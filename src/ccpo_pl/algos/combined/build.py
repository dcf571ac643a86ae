"""Builder of C-PPO-Lag (`algo.name=c_ppo_lag`) and C-TRPO-Lag (`c_trpo_lag`) (`registry.AlgoSpec`)."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from ccpo_pl.algos.combined.actor import CombinedActor, make_combined_actor
from ccpo_pl.algos.combined.module import CombinedLagrangian, CPPOLag, CTRPOLag
from ccpo_pl.nets import ValueCritic

COMMON = ("gamma", "gae_lambda", "lr_value", "value_epochs", "minibatch_size", "lagrange", "standardise_cost_adv",
          "target_kl")
STEP = {"c_ppo_lag": (CPPOLag, ("lr_actor", "ppo_epochs", "clip_epsilon", "entropy_coeff", "max_grad_norm")),
        "c_trpo_lag": (CTRPOLag, ("cg_iters", "cg_damping", "max_backtracks", "backtrack_coeff"))}


def make_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> CombinedActor:
    """The `CombinedActor` of a run: pi(.|eps) for any eps by the linear combination of its behaviour policies."""
    return make_combined_actor(run_cfg["algo"], obs_dim, act_dim, run_cfg["eps"]["behavior"])


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> CombinedLagrangian:
    """C-PPO-Lag or C-TRPO-Lag from the composed config."""
    a = OmegaConf.to_container(cfg.algo, resolve=True)
    actor = make_combined_actor(a, obs_dim, act_dim, cfg.eps.behavior)
    value = ValueCritic(obs_dim, a["hidden"], cfg.eps.range)
    module_cls, step_keys = STEP[a["name"]]
    return module_cls(actor, value, **{k: a[k] for k in COMMON}, **{k: a[k] for k in step_keys}, **base_kwargs)
