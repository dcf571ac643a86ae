"""Algorithm name -> `AlgoSpec`: how to build its training module and how to rebuild its policy for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ccpo_pl.algos.ccpo.cvpo import build_cvpo, cvpo_actor
from ccpo_pl.algos.lagrangian.build import build_v_ddpg_lag, build_v_sac_lag
from ccpo_pl.algos.lagrangian.nets import ddpg_actor, sac_actor
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.nets import make_actor, make_critic


def eps_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> nn.Module:
    """The `EpsActor` pi(a|s, eps) of a run, from its plain resolved config (what `load_policy` rebuilds)."""
    return make_actor(run_cfg["algo"], obs_dim, act_dim, run_cfg["eps"]["range"])


@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm as the trainer and the evaluation see it.

    build: `(cfg, obs_dim, act_dim, **base_kwargs) -> SafeRLModule`; the module holds its policy as `self.actor`.
    make_actor: `(run_cfg, obs_dim, act_dim) -> nn.Module` with `forward(observation, eps) -> (loc, scale)`; the
        evaluation loads the checkpoint's `actor.*` weights into it (deterministic action: `loc`).
    on_policy: one collection per update (no replay; `collect.updates_per_frame` is not used).
    increasing_behavior: one policy per behaviour threshold, combined between neighbours: `eps.behavior` must be
        strictly increasing.
    """

    build: Callable[..., SafeRLModule]
    make_actor: Callable[[Mapping, int, int], nn.Module] = eps_actor
    on_policy: bool = False
    increasing_behavior: bool = False


def build_ccpo(cfg: DictConfig, obs_dim: int, act_dim: int, module_cls: Callable[..., SafeRLModule] | None = None,
               **base_kwargs) -> SafeRLModule:
    """CCPO with its ablations as flags (`algo.vve`, `algo.cvi`); `module_cls`: a CCPO subclass (e.g. CVPO)."""
    from ccpo_pl.algos.ccpo.module import CCPO

    a = cfg.algo
    actor = make_actor(a, obs_dim, act_dim, cfg.eps.range)
    critic = make_critic(a, obs_dim, act_dim, cfg.eps.range)
    plain = OmegaConf.to_container(a, resolve=True)
    return (module_cls or CCPO)(
        actor, critic, gamma=a.gamma, tau=a.tau, lr_actor=a.lr_actor, lr_critic=a.lr_critic, n_eps=a.n_eps,
        versatile_start=a.versatile_start, versatile_frac=a.versatile_frac, states_per_eps=a.states_per_eps,
        num_samples=a.num_samples, kappa=a.kappa, dual=plain["dual"], kl_mean_bound=a.kl_mean_bound,
        kl_cov_bound=a.kl_cov_bound, kl_lr=tuple(a.kl_lr), kl_max=tuple(a.kl_max), cvi=a.cvi,
        lagrangian=plain["lagrange"], compile=a.compile, estep_precision=a.estep_precision, **base_kwargs,
    )


def build_combined(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """C-PPO-Lag / C-TRPO-Lag: one Lagrangian policy per behaviour threshold, linearly combined (`algos.combined`)."""
    from ccpo_pl.algos.combined.module import build_module

    return build_module(cfg, obs_dim, act_dim, **base_kwargs)


def combined_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> nn.Module:
    """The `CombinedActor` of a C-PPO-Lag / C-TRPO-Lag run: pi(.|eps) for any eps by the linear combination."""
    from ccpo_pl.algos.combined.actor import make_combined_actor

    return make_combined_actor(run_cfg["algo"], obs_dim, act_dim, run_cfg["eps"]["behavior"])


def build_cpo(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """CPO and the CPO paper's baselines PDO, TRPO, FPO (`algos.cpo`), chosen by `algo.name`."""
    from ccpo_pl.algos.cpo.module import build_module

    return build_module(cfg, obs_dim, act_dim, **base_kwargs)


ALGOS: dict[str, AlgoSpec] = {
    "ccpo": AlgoSpec(build_ccpo),
    "ccpo_wo_vve": AlgoSpec(build_ccpo),  # CCPO paper Table 3 ablations: conf/algo/ccpo_wo_{vve,cvi}.yaml
    "ccpo_wo_cvi": AlgoSpec(build_ccpo),
    "cvpo": AlgoSpec(build_cvpo, make_actor=cvpo_actor),
    "v_sac_lag": AlgoSpec(build_v_sac_lag, make_actor=sac_actor),
    "v_ddpg_lag": AlgoSpec(build_v_ddpg_lag, make_actor=ddpg_actor),
    "c_ppo_lag": AlgoSpec(build_combined, make_actor=combined_actor, on_policy=True,
                          increasing_behavior=True),
    "c_trpo_lag": AlgoSpec(build_combined, make_actor=combined_actor, on_policy=True,
                          increasing_behavior=True),
    "cpo": AlgoSpec(build_cpo, on_policy=True),  # CPO paper: conf/algo/{cpo,pdo,trpo,fpo}.yaml
    "pdo": AlgoSpec(build_cpo, on_policy=True),
    "trpo": AlgoSpec(build_cpo, on_policy=True),
    "fpo": AlgoSpec(build_cpo, on_policy=True),
}


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """Build the module named by `cfg.algo.name`; an unknown name is a one-line error."""
    name = cfg.algo.name
    if name not in ALGOS:
        raise ValueError(f"unknown algo {name!r}; allowed: {', '.join(sorted(ALGOS))}")
    module = ALGOS[name].build(cfg, obs_dim, act_dim, **base_kwargs)
    module.hparams.update(obs_dim=int(obs_dim), act_dim=int(act_dim))  # in the checkpoint, for `make_actor`
    return module
