"""`CombinedActor`: one Gaussian policy per behaviour threshold, combined for any eps by the CCPO slides' rule.

Reading of pi(.|eps) = w1 pi(.|eps_1) + w2 pi(.|eps_2) (the slides give only this line; see `equations`):
- **Mixture of means and of standard deviations**: the combined policy is N(w1 mu_1 + w2 mu_2, diag(w1 sigma_1 +
  w2 sigma_2)^2). Its deterministic (evaluation) action, the mean, is the interpolated action w1 a_1 + w2 a_2 of
  the two neighbouring policies; it is also the mean of the true two-component mixture w1 N_1 + w2 N_2, so for the
  paper's deterministic evaluation the two readings agree. Rejected: (a) sampling the mixture (policy 1 with
  probability w1, else policy 2, every step): the evaluation would switch policies at random instead of acting
  deterministically, and its density is not a Gaussian that `make_policy` can wrap; (b) interpolating the
  parameters: independently trained networks have no aligned hidden units, so the average of two weight sets is
  not a policy between them. The standard deviation is interpolated linearly (the mixture's is larger by the
  spread of the means); it matters only for stochastic evaluation.
- **Extrapolation** (eps outside the behaviour range, `extrapolation`): "linear" (default, the paper's rule read
  literally) applies the formula to the two end policies, one weight negative; the mean is then clipped to the
  action box [-1, 1] (where the env would clip it), and the standard deviation is the nearest end policy's (its
  linear extrapolation can cross zero). "nearest" uses the end policy alone (mean and standard deviation).
Training: at eps = eps_i the rule returns policy i bit for bit, so collecting under the behaviour thresholds acts with
each threshold's own policy, and a loss over transitions collected under eps_i reaches only policy i's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrl.modules import MLP

from ccpo_pl.algos.combined.equations import EXTRAPOLATIONS, combination_weights
from ccpo_pl.nets import nearest_threshold


class GaussianPolicy(nn.Module):
    """pi_i(a|s) = N(tanh(mu(s)), diag exp(log_std)^2): one behaviour threshold's PPO/TRPO policy.

    The mean is tanh-bounded to the action box (as `nets.EpsActor`); the log std is a state-independent parameter
    (FSRL PPO-Lag / TRPO-Lag and OmniSafe's Gaussian learning actor), clamped to [log_std_min, log_std_max].
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], log_std_init: float = -0.5,
                 log_std_min: float = -20.0, log_std_max: float = 2.0):
        super().__init__()
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.trunk = MLP(obs_dim, hidden[-1], num_cells=list(hidden[:-1]), activation_class=nn.Tanh,
                         activate_last_layer=True)
        self.mu = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale), each `[..., act_dim]`."""
        loc = torch.tanh(self.mu(self.trunk(observation)))
        scale = self.log_std.clamp(self.log_std_min, self.log_std_max).exp().expand_as(loc)
        return loc, scale


class CombinedActor(nn.Module):
    """pi(a|s, eps): the per-behaviour-threshold policies `policies[i]` combined by `combination_weights`.

    Args:
        obs_dim, act_dim: sizes from the env specs.
        hidden: MLP widths of every policy.
        eps_behavior: the behaviour thresholds, strictly increasing (one policy each).
        log_std_init, log_std_min, log_std_max: see `GaussianPolicy`.
        extrapolation: "linear" or "nearest" outside the behaviour range (module docstring).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], eps_behavior: Sequence[float],
                 log_std_init: float = -0.5, log_std_min: float = -20.0, log_std_max: float = 2.0,
                 extrapolation: str = "linear"):
        super().__init__()
        if extrapolation not in EXTRAPOLATIONS:
            raise ValueError(f"algo.extrapolation={extrapolation!r}; allowed: {', '.join(EXTRAPOLATIONS)}")
        self.extrapolation = extrapolation
        eps_b = [float(e) for e in eps_behavior]
        if not eps_b or any(b <= a for a, b in zip(eps_b, eps_b[1:])):
            raise ValueError(f"eps.behavior={eps_b} must be non-empty and strictly increasing for the combined "
                             f"policies, e.g. [20, 40, 60]")
        self.register_buffer("eps_behavior", torch.tensor(eps_b))
        self.act_dim = int(act_dim)
        self.policies = nn.ModuleList(
            GaussianPolicy(obs_dim, act_dim, hidden, log_std_init, log_std_min, log_std_max) for _ in eps_b)

    def forward(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale), each `[..., act_dim]`; `observation [..., obs]` and `eps [..., 1]` broadcast.

        Computes `linear_combination` as the sum over policies of w_j * (loc_j, scale_j), each policy run only on
        the rows where one of its weights is not 0: one network per row at the behaviour thresholds (training costs
        one network per transition, not E), and the result there is exact: 0 + 1 * x = x. The means take the
        weights of `extrapolation` (clipped to [-1, 1] where they extrapolate linearly), the standard deviations
        those of "nearest" (equal inside the behaviour range). While traced (TorchScript or ONNX export), where
        that row selection would be frozen into the graph, `forward_all_policies` runs.
        """
        if torch.jit.is_tracing():
            return self.forward_all_policies(observation, eps)
        shape = torch.broadcast_shapes(observation.shape[:-1], eps.shape[:-1])
        obs = observation.expand(*shape, observation.shape[-1]).reshape(-1, observation.shape[-1])
        loc = obs.new_zeros(obs.shape[0], self.act_dim)
        scale = obs.new_zeros(obs.shape[0], self.act_dim)
        for policy, w, v in zip(self.policies, self.policy_weights(eps), self.policy_weights(eps, "nearest")):
            w, v = (x.expand(*shape, 1).reshape(-1, 1) for x in (w, v))  # the policy's mean and std weights per row
            rows = ((w != 0) | (v != 0)).view(-1).nonzero().view(-1)
            if rows.numel() == 0:
                continue
            loc_j, scale_j = policy(obs[rows])
            loc = loc.index_add(0, rows, w[rows] * loc_j)
            scale = scale.index_add(0, rows, v[rows] * scale_j)
        return self.clip_mean(loc).view(*shape, self.act_dim), scale.view(*shape, self.act_dim)

    def forward_all_policies(self, observation: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """`forward`'s (loc, scale) with every policy run on every row, summed with its weights (0 away from eps'
        neighbours): no data-dependent control flow, so a trace holds for any batch and thresholds."""
        loc = scale = 0.0
        for policy, w, v in zip(self.policies, self.policy_weights(eps), self.policy_weights(eps, "nearest")):
            loc_j, scale_j = policy(observation)
            loc, scale = loc + w * loc_j, scale + v * scale_j
        return self.clip_mean(loc), scale

    def clip_mean(self, loc: Tensor) -> Tensor:
        """The combined mean in the action box [-1, 1] where it extrapolates linearly (a no-op inside the
        behaviour range, where it is a convex mix of tanh means)."""
        return loc.clamp(-1.0, 1.0) if self.extrapolation == "linear" else loc

    def policy_weights(self, eps: Tensor, extrapolation: str | None = None) -> list[Tensor]:
        """Each policy's weight in pi(.|eps), `[..., 1]` each: w1 or w2 of `combination_weights` (with
        `extrapolation`, default the actor's) for the two neighbouring behaviour thresholds, 0 for the others."""
        i1, i2, w1, w2 = combination_weights(eps, self.eps_behavior, extrapolation or self.extrapolation)
        return [torch.where(i1 == j, w1, 0.0) + torch.where(i2 == j, w2, 0.0) for j in range(len(self.policies))]

    def threshold_index(self, eps: Tensor) -> Tensor:
        """Index of the behaviour threshold nearest to each eps (exact for data collected under them)."""
        return nearest_threshold(eps, self.eps_behavior)


def make_combined_actor(algo_cfg, obs_dim: int, act_dim: int, eps_behavior: Sequence[float]) -> CombinedActor:
    """Build the actor from the algorithm config (a DictConfig or the plain dict stored in a checkpoint)."""
    lo, hi = algo_cfg["log_std"]
    return CombinedActor(obs_dim, act_dim, algo_cfg["hidden"], [float(e) for e in eps_behavior],
                         algo_cfg["log_std_init"], lo, hi, algo_cfg.get("extrapolation", "linear"))
