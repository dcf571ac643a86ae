"""Critics Q_f(s, a | eps) for f in {reward, cost}.

`VVECritic` is CCPO's versatile value estimation (slides eq. 3): Q_f(s, a|eps) = psi_f(s, a)^T z_f(eps), where
psi_f is an MLP of the state-action pair and z_f is a polynomial feature of the normalised threshold (slides
Assumption 2) or a small learned encoder. Because psi does not depend on eps, one forward pass of psi serves every
threshold: that is what lets one transition supervise many thresholds cheaply.

`PlainCritic` is the `vve=false` ablation: eps is appended to the critic input.

Both take `obs [..., obs_dim]`, `act [..., act_dim]` and `eps [..., 1]` whose leading dims broadcast, and return
`(q_r, q_c)` with the broadcast leading shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrl.modules import MLP


def normalise_eps(eps: Tensor, eps_range: Sequence[float]) -> Tensor:
    """Map a raw threshold to [-1, 1] over `eps_range` (ours: keeps polynomial features well conditioned)."""
    lo, hi = float(eps_range[0]), float(eps_range[1])
    return (eps - lo) * (2.0 / (hi - lo)) - 1.0


def nearest_threshold(eps: Tensor, thresholds: Tensor) -> Tensor:
    """Index of the threshold in `thresholds [n]` nearest to each eps (any shape, flattened): `[N]` long; ties go to
    the lower index. Exact for data collected under one of them."""
    return (eps.reshape(-1, 1) - thresholds.to(eps).view(1, -1)).abs().argmin(-1)


def eps_features(e: Tensor, degree: int) -> Tensor:
    """CCPO slides Assumption 2: z(eps) = Poly(eps, p) = [1, e, e^2, ..., e^p] of the normalised threshold e."""
    return torch.cat([e**k for k in range(degree + 1)], dim=-1)


def cat_broadcast(*tensors: Tensor) -> Tensor:
    """Concatenate on the last dim after broadcasting the leading dims."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], -1)


class VVECritic(nn.Module):
    """CCPO slides eq. (3): Q_f(s, a|eps) = psi_f(s, a)^T z_f(eps), f in {r, c}.

    Args:
        obs_dim, act_dim: sizes from the env specs.
        hidden: hidden widths of the psi MLP(s).
        eps_range: (lo, hi) used to normalise eps to [-1, 1].
        z_kind: "poly" (fixed polynomial features, degree `degree`) or "mlp" (a learned encoder of e).
        degree: polynomial degree p; also sets the feature size d = p + 1 for "poly".
        feature_dim: d for z_kind="mlp".
        shared_trunk: psi_r and psi_c are two linear heads on one hidden trunk (one MLP with 2d outputs, half
            the compute) instead of two separate MLPs (FSRL's separate critics).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        eps_range: Sequence[float],
        z_kind: str = "poly",
        degree: int = 2,
        feature_dim: int = 8,
        shared_trunk: bool = True,
    ):
        super().__init__()
        if z_kind not in ("poly", "mlp"):
            raise ValueError(f"critic z kind {z_kind!r} is not allowed; use 'poly' or 'mlp'")
        self.eps_range = tuple(float(x) for x in eps_range)
        self.z_kind, self.degree = z_kind, int(degree)
        self.d = d = self.degree + 1 if z_kind == "poly" else int(feature_dim)
        self.psi = _TwoHeads(obs_dim + act_dim, d, hidden, shared_trunk)
        if z_kind == "mlp":
            self.z = nn.ModuleDict({f: MLP(1, d, num_cells=[64, 64], activation_class=nn.ReLU) for f in ("r", "c")})

    def features(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z_r(eps), z_c(eps): `[..., d]` each."""
        e = normalise_eps(eps, self.eps_range)
        if self.z_kind == "poly":
            z = eps_features(e, self.degree)
            return z, z
        return self.z["r"](e), self.z["c"](e)

    def forward(self, obs: Tensor, act: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        psi_r, psi_c = self.psi(cat_broadcast(obs, act))
        z_r, z_c = self.features(eps)
        return (psi_r * z_r).sum(-1), (psi_c * z_c).sum(-1)


class PlainCritic(nn.Module):
    """`vve=false` ablation (CCPO paper Table 3): Q_f(s, a, eps) = MLP_f([s, a, e]), eps appended to the input."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], eps_range: Sequence[float],
                 shared_trunk: bool = True):
        super().__init__()
        self.eps_range = tuple(float(x) for x in eps_range)
        self.q = _TwoHeads(obs_dim + act_dim + 1, 1, hidden, shared_trunk)

    def forward(self, obs: Tensor, act: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        q_r, q_c = self.q(cat_broadcast(obs, act, normalise_eps(eps, self.eps_range)))
        return q_r.squeeze(-1), q_c.squeeze(-1)


class ValueCritic(nn.Module):
    """On-policy state values V_r(s, eps), V_c(s, eps): two separate MLPs of [s, e] (e the normalised threshold)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], eps_range: Sequence[float]):
        super().__init__()
        self.eps_range = tuple(float(x) for x in eps_range)
        self.v = _TwoHeads(obs_dim + 1, 1, hidden, shared=False)

    def forward(self, obs: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """`obs [..., obs_dim]`, `eps [..., 1]` -> (v_r, v_c), each `[...]`."""
        v_r, v_c = self.v(cat_broadcast(obs, normalise_eps(eps, self.eps_range)))
        return v_r.squeeze(-1), v_c.squeeze(-1)


class _TwoHeads(nn.Module):
    """(reward, cost) outputs of size `out` each, from one shared MLP or from two separate MLPs."""

    def __init__(self, in_dim: int, out: int, hidden: Sequence[int], shared: bool):
        super().__init__()
        self.shared, self.out = bool(shared), int(out)
        if self.shared:
            self.net = MLP(in_dim, 2 * out, num_cells=list(hidden), activation_class=nn.ReLU)
        else:
            self.net = nn.ModuleList(MLP(in_dim, out, num_cells=list(hidden), activation_class=nn.ReLU)
                                     for _ in range(2))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.shared:
            return self.net(x).split(self.out, -1)
        return self.net[0](x), self.net[1](x)


def make_critic(algo_cfg, obs_dim: int, act_dim: int, eps_range: Sequence[float]) -> nn.Module:
    """Build the critic chosen by `algo.vve` (True: VVE psi^T z; False: eps appended to the input)."""
    shared = algo_cfg.critic_trunk == "shared"
    if algo_cfg.critic_trunk not in ("shared", "separate"):
        raise ValueError(f"algo.critic_trunk={algo_cfg.critic_trunk!r} is not allowed; use 'shared' or 'separate'")
    if algo_cfg.vve:
        return VVECritic(obs_dim, act_dim, algo_cfg.hidden, eps_range, algo_cfg.z.kind, algo_cfg.z.degree,
                         algo_cfg.z.feature_dim, shared)
    return PlainCritic(obs_dim, act_dim, algo_cfg.hidden, eps_range, shared)
