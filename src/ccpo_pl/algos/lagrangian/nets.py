"""Actors of V-SAC-Lag and V-DDPG-Lag, with the project's actor interface `forward(observation, eps) -> (loc, scale)`.

Evaluation (`ccpo_pl.evaluation`) and the module's own periodic evaluation wrap `forward` in an `IndependentNormal`
and take `loc` as the deterministic action, so `loc` must be the algorithm's deterministic action:
- SAC: `loc = tanh(mu)`, the squashed mean (the SAC paper's deterministic evaluation action). Training and collection
  use the squashed Gaussian tanh(N(mu, sigma)) through `pre_tanh` (one squash; FSRL squashes an already
  tanh-bounded mean a second time, which we do not copy).
- DDPG: `loc = tanh(mu)`, the deterministic policy; `scale` is the fixed Gaussian exploration noise std, so the
  default collection (N(loc, scale), clipped by the env) is DDPG's exploration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from ccpo_pl.nets import EpsActor, cat_broadcast, normalise_eps


class SquashedEpsActor(EpsActor):
    """SAC's policy pi(a|s, eps) = tanh(N(mu(s, e), diag sigma(s, e)^2)); same weights and `forward` as `EpsActor`.

    `pre_tanh` returns the Gaussian before the squash (for the reparameterised sample and its log-probability);
    `forward` returns (tanh(mu), sigma), i.e. exactly `EpsActor.forward`, so any `EpsActor` loader evaluates it.
    """

    def pre_tanh(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, sigma) of the Gaussian before tanh, each `[..., act_dim]`."""
        h = self.trunk(cat_broadcast(observation, normalise_eps(eps, self.eps_range)))
        return self.mu(h), self.log_std(h).clamp(self.log_std_min, self.log_std_max).exp()

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        mu, scale = self.pre_tanh(observation, eps)
        return torch.tanh(mu), scale


class DeterministicEpsActor(nn.Module):
    """DDPG's policy mu(s, eps) = tanh(MLP([s, e])); `forward` adds the fixed exploration std as `scale`."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], eps_range: Sequence[float],
                 noise_std: float):
        super().__init__()
        if not noise_std > 0:
            raise ValueError(f"algo.exploration_noise={noise_std!r} is not allowed; use a std > 0")
        self.eps_range = tuple(float(x) for x in eps_range)
        self.noise_std = float(noise_std)
        self.trunk = MLP(obs_dim + 1, hidden[-1], num_cells=list(hidden[:-1]), activation_class=nn.ReLU,
                         activate_last_layer=True)
        self.mu = nn.Linear(hidden[-1], act_dim)

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (action, exploration std), each `[..., act_dim]`."""
        loc = torch.tanh(self.mu(self.trunk(cat_broadcast(observation, normalise_eps(eps, self.eps_range)))))
        return loc, torch.full_like(loc, self.noise_std)


class _PreTanh(nn.Module):
    """`actor.pre_tanh` as a module, for a `TensorDictModule`."""

    def __init__(self, actor: SquashedEpsActor):
        super().__init__()
        self.actor = actor

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        return self.actor.pre_tanh(observation, eps)


def make_squashed_policy(actor: SquashedEpsActor) -> ProbabilisticActor:
    """SAC's collection policy for TorchRL collectors: a ~ tanh(N(mu, sigma)) (TorchRL `TanhNormal` on [-1, 1])."""
    module = TensorDictModule(_PreTanh(actor), in_keys=["observation", "eps"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                              return_log_prob=False)
