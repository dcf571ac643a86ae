"""Algorithm name -> `AlgoSpec`: how to build its training module and how to rebuild its policy for evaluation.

A plain table of the families' builders (`algos/<family>/build.py`, each exporting `build` and `make_actor`);
a family's `build` reads `cfg.algo.name` where one family holds several algorithms (e.g. `pdo` is a `CPO` variant).
Reading the table (names, `on_policy`, as the config checks do) imports no family: a family imports Lightning and
TorchRL, and is imported when one of its algorithms is first built or its policy rebuilt (`FromFamily`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from torch import nn

if TYPE_CHECKING:
    from ccpo_pl.algos.safe_module import SafeRLModule


def family_builders(family: str) -> ModuleType:
    """The builder module `ccpo_pl.algos.<family>.build`."""
    # here, not at the top: the families import Lightning and TorchRL, which the config checks do without
    from ccpo_pl.algos.ccpo import build as ccpo
    from ccpo_pl.algos.combined import build as combined
    from ccpo_pl.algos.cpo import build as cpo
    from ccpo_pl.algos.lagrangian import build as lagrangian

    return {"ccpo": ccpo, "combined": combined, "cpo": cpo, "lagrangian": lagrangian}[family]


@dataclass(frozen=True)
class FromFamily:
    """The function `name` of `ccpo_pl.algos.<family>.build`, imported when first called."""

    family: str
    name: str

    def __call__(self, *args, **kwargs):
        return getattr(family_builders(self.family), self.name)(*args, **kwargs)


def make_run_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> nn.Module:
    """`ccpo_pl.nets.make_run_actor`, the default policy network of an `AlgoSpec`."""
    from ccpo_pl.nets import make_run_actor  # here, not at the top: the networks import TorchRL

    return make_run_actor(run_cfg, obs_dim, act_dim)


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
    make_actor: Callable[[Mapping, int, int], nn.Module] = make_run_actor
    on_policy: bool = False
    increasing_behavior: bool = False


def _family(family: str, **flags: bool) -> AlgoSpec:
    return AlgoSpec(FromFamily(family, "build"), FromFamily(family, "make_actor"), **flags)


CCPO = _family("ccpo")
LAGRANGIAN = _family("lagrangian")
COMBINED = _family("combined", on_policy=True, increasing_behavior=True)
CPO = _family("cpo", on_policy=True)

ALGOS: dict[str, AlgoSpec] = {
    "ccpo": CCPO,
    "ccpo_wo_vve": CCPO,  # CCPO paper Table 3 ablations: conf/algo/ccpo_wo_{vve,cvi}.yaml
    "ccpo_wo_cvi": CCPO,
    "cvpo": CCPO,  # CCPO at one fixed threshold: conf/algo/cvpo.yaml
    "v_sac_lag": LAGRANGIAN,
    "v_ddpg_lag": LAGRANGIAN,
    "c_ppo_lag": COMBINED,
    "c_trpo_lag": COMBINED,
    "cpo": CPO,  # CPO paper: conf/algo/{cpo,pdo,trpo,fpo}.yaml, variants of one module
    "pdo": CPO,
    "trpo": CPO,
    "fpo": CPO,
}


def build(cfg: DictConfig, obs_dim: int, act_dim: int, **base_kwargs) -> SafeRLModule:
    """Build the module named by `cfg.algo.name`; an unknown name is a one-line error."""
    name = cfg.algo.name
    if name not in ALGOS:
        raise ValueError(f"unknown algo {name!r}; allowed: {', '.join(sorted(ALGOS))}")
    module = ALGOS[name].build(cfg, obs_dim, act_dim, **base_kwargs)
    module.hparams.update(obs_dim=int(obs_dim), act_dim=int(act_dim))  # in the checkpoint, for `make_actor`
    return module
