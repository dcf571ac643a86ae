"""Lagrange multipliers of the constrained objective max_pi J_r - lam (J_c - d), shared by every Lagrangian algorithm.

Two update rules, as pure functions over a batch of constraints (one multiplier per threshold):
- `gradient_step`: projected gradient ascent on the dual (CPO paper eq. 16, the primal-dual baseline "PDO";
  the SAC-Lag / PPO-Lag multipliers of FSRL and OmniSafe);
- `pid_step`: the PID Lagrangian of Stooke, Achiam & Abbeel (ICML 2020, Algorithm 2), which damps the oscillation
  of the pure integral (gradient) rule.
`multiplier_step` applies the configured rule to multipliers and PID state held anywhere; `LagrangeMultipliers` keeps
them as module buffers (checkpointed, moved with the module); every rank must feed them the same (rank-averaged)
costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

METHODS = ("gradient", "pid")
#: The PID gains where a configuration gives none.
PID_GAINS = {"kp": 0.1, "ki": 0.01, "kd": 0.01}


def gradient_step(lam: Tensor, cost: Tensor, limit: Tensor | float, lr: float,
                  lam_max: float = math.inf) -> Tensor:
    """CPO paper eq. 16 (primal-dual): lam <- clamp(lam + lr (J_c - d), 0, lam_max), elementwise.

    Args:
        lam: [E] current multipliers.
        cost: [E] cost estimates J_c (episodic cost, or Q_c where the algorithm constrains Q).
        limit: [E] or scalar: the thresholds d in the same units as `cost`.
        lr: dual step size.
        lam_max: cap (inf: none).

    Returns:
        [E] new multipliers, detached.
    """
    return (lam + lr * (cost - limit)).clamp(0.0, lam_max).detach()


def pid_step(cost: Tensor, limit: Tensor | float, integral: Tensor, prev_cost: Tensor, kp: float, ki: float,
             kd: float, lam_max: float = math.inf) -> tuple[Tensor, Tensor, Tensor]:
    """Stooke et al. 2020, Algorithm 2 (PID Lagrangian), elementwise over [E] constraints:

        delta = J_c - d;  I <- max(0, I + delta);  lam = clamp(Kp delta + Ki I + Kd max(0, J_c - J_c_prev), 0, lam_max)

    Args:
        cost: [E] cost estimates J_c.
        limit: [E] or scalar thresholds d.
        integral: [E] the integral term I before this step.
        prev_cost: [E] J_c of the previous step (the derivative term uses only increases of the cost).
        kp, ki, kd: the gains; kp = kd = 0 is the gradient rule `gradient_step` with lr = ki (below lam_max).
        lam_max: cap of the multiplier.

    Returns:
        (lam, integral, prev_cost): the new multipliers and PID state, detached.
    """
    delta = cost - limit
    integral = (integral + delta).clamp_min(0.0)
    derivative = (cost - prev_cost).clamp_min(0.0)
    lam = (kp * delta + ki * integral + kd * derivative).clamp(0.0, lam_max)
    return lam.detach(), integral.detach(), cost.detach().clone()


def multiplier_step(method: str, lam: Tensor, cost: Tensor, limit: Tensor | float, integral: Tensor | None,
                    prev_cost: Tensor | None, started: Tensor | None, *, lr: float, lam_max: float,
                    pid: Mapping[str, float]) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One step of the rule `method` ("gradient": `gradient_step` with `lr`; "pid": `pid_step` with the gains `pid`)
    for multipliers `lam [E]` on costs `cost [E]` against `limit`. PID state: the integral, the previous cost and
    `started` (False where no step was taken yet: that first step has no derivative kick, its previous cost is
    taken as the current one); unused (may be None) by the gradient rule, which returns it unchanged.

    Returns:
        (lam, integral, prev_cost), detached.
    """
    if method == "gradient":
        return gradient_step(lam, cost, limit, lr, lam_max), integral, prev_cost
    prev = torch.where(started, prev_cost, cost)
    return pid_step(cost, limit, integral, prev, lam_max=lam_max, **pid)


class LagrangeMultipliers(nn.Module):
    """One multiplier per constraint (e.g. per behaviour threshold), updated by `gradient_step` or `pid_step`.

    Args:
        n: number of multipliers.
        method: "gradient" or "pid".
        lam_init: initial multiplier value.
        lr: step size of the gradient rule.
        pid: gains {"kp", "ki", "kd"} of the PID rule.
        lam_max: cap of the multipliers.
    """

    def __init__(self, n: int, method: str = "gradient", lam_init: float = 0.0, lr: float = 0.01,
                 pid: Mapping[str, float] | None = None, lam_max: float = 100.0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"lagrange method {method!r} is not allowed; use {' or '.join(METHODS)}")
        self.method, self.lr, self.lam_max = method, float(lr), float(lam_max)
        self.pid = {**PID_GAINS, **(pid or {})}
        self.register_buffer("lam", torch.full((n,), float(lam_init)))
        # PID state: the integral starts where the initial multiplier would come from the integral term alone
        ki = self.pid["ki"]
        self.register_buffer("integral", torch.full((n,), float(lam_init) / ki if ki > 0 else 0.0))
        self.register_buffer("prev_cost", torch.zeros(n))
        self.register_buffer("started", torch.zeros(n, dtype=torch.bool))

    def update(self, cost: Tensor, limit: Tensor | float, index: Tensor | Sequence[int] | None = None) -> Tensor:
        """Step the multipliers `index` (all if None) with costs `cost` against `limit`; returns the new ones."""
        idx = slice(None) if index is None else torch.as_tensor(index, device=self.lam.device)
        cost = cost.to(self.lam)
        limit = torch.as_tensor(limit, dtype=self.lam.dtype, device=self.lam.device)
        lam, integral, prev = multiplier_step(self.method, self.lam[idx], cost, limit, self.integral[idx],
                                              self.prev_cost[idx], self.started[idx], lr=self.lr,
                                              lam_max=self.lam_max, pid=self.pid)
        self.lam[idx] = lam
        if self.method == "pid":
            self.integral[idx], self.prev_cost[idx] = integral, prev
            self.started[idx] = True
        return self.lam[idx]

    def forward(self) -> Tensor:
        return self.lam
