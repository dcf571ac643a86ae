"""The versatile policy pi(a | s, eps): one diagonal Gaussian conditioned on the cost threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor

from ccpo_pl.nets.critics import cat_broadcast, normalise_eps


class EpsActor(nn.Module):
    """pi(a|s, eps) = N(mu(s, e), diag sigma(s, e)^2) with e the normalised threshold (CCPO; FSRL CVPO's actor + e).

    The mean is tanh-bounded to the action box [-1, 1] (FSRL `unbounded=False`); log sigma is state dependent and
    clamped to [log_std_min, log_std_max]. Samples are raw Gaussian draws: the env clips them (see `ccpo_pl.envs`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        eps_range: Sequence[float],
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.eps_range = tuple(float(x) for x in eps_range)
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.trunk = MLP(obs_dim + 1, hidden[-1], num_cells=list(hidden[:-1]), activation_class=nn.ReLU,
                         activate_last_layer=True)
        self.mu = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (loc, scale), each `[..., act_dim]`; `observation [..., obs]` and `eps [..., 1]` broadcast."""
        h = self.trunk(cat_broadcast(observation, normalise_eps(eps, self.eps_range)))
        log_std = self.log_std(h).clamp(self.log_std_min, self.log_std_max)
        return torch.tanh(self.mu(h)), log_std.exp()


def make_actor(algo_cfg, obs_dim: int, act_dim: int, eps_range: Sequence[float]) -> EpsActor:
    """Build the actor from the algorithm config (a DictConfig or the plain dict stored in a checkpoint)."""
    return EpsActor(obs_dim, act_dim, algo_cfg["hidden"], eps_range, *algo_cfg["log_std"])


def make_run_actor(run_cfg: Mapping, obs_dim: int, act_dim: int) -> EpsActor:
    """The `EpsActor` of a run from its whole config (composed, or the plain resolved one of a checkpoint)."""
    return make_actor(run_cfg["algo"], obs_dim, act_dim, run_cfg["eps"]["range"])


class EpsPolicy(TensorDictModuleBase):
    """pi(a|s, eps) for TorchRL collectors and rollouts: reads `observation` and `eps`, writes `action`, a draw from
    N(loc, scale^2) under `ExplorationType.RANDOM` (the collectors' default) and the mean `loc` otherwise, as
    `make_policy`'s `ProbabilisticActor` does.

    The same policy without the distribution object and the per-key output machinery of `ProbabilisticActor`,
    which take a large share of a collection's overhead beside the simulator (timings in docs/performance.md,
    "Mechanisms"). TorchRL losses, which need the distribution, keep `make_policy`.
    """

    in_keys = ["observation", "eps"]
    out_keys = ["action"]

    def __init__(self, actor: EpsActor):
        super().__init__()
        self.actor = actor

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        loc, scale = self.actor(tensordict.get("observation"), tensordict.get("eps"))
        if exploration_type() == ExplorationType.RANDOM:
            loc = loc + scale * torch.randn_like(loc)
        return tensordict.set("action", loc)


def make_policy(actor: EpsActor) -> ProbabilisticActor:
    """Wrap the actor as a TorchRL `ProbabilisticActor` (for TorchRL losses): reads `observation` and `eps`, writes
    `action` (mean when deterministic); collectors and rollouts use the lighter `EpsPolicy`."""
    module = TensorDictModule(actor, in_keys=["observation", "eps"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=IndependentNormal,
                              return_log_prob=False)
