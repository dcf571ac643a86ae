"""Equations of the off-policy Lagrangian baselines (V-SAC-Lag, V-DDPG-Lag): pure tensor functions.

Order follows one update: the squashed-Gaussian policy sample (SAC), the critics' Bellman targets, the Lagrangian
actor loss, the SAC temperature loss. The Lagrange multiplier updates themselves (gradient and PID) are shared
with every Lagrangian algorithm in `ccpo_pl.algos.lagrange`. Shapes: B transitions, A action dims.
Sources: SAC = Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (arXiv:1812.05905); DDPG =
Lillicrap et al. (arXiv:1509.02971); TD3 = Fujimoto et al. (arXiv:1802.09477); the Lagrangian rescaling is
Stooke et al. (ICML 2020) as used by FSRL and OmniSafe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ccpo_pl.algos.ccpo.equations import lagrangian_actor_loss as _lagrangian_actor_loss


def squashed_gaussian_rsample(mu: Tensor, scale: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """SAC paper App. C eq. (21): a = tanh(u), u = mu + scale * noise; log pi(a|s) = log N(u) - sum log(1 - tanh(u)^2).

    log(1 - tanh(u)^2) is computed as 2 (log 2 - u - softplus(-2u)), exact and finite for any u.

    Args:
        mu: [..., A] pre-squash mean.
        scale: [..., A] pre-squash standard deviation (> 0).
        noise: [..., A] standard normal draws (the caller owns the randomness).

    Returns:
        (action [..., A] in (-1, 1), log_prob [...]); both differentiable in mu and scale (reparameterised).
    """
    u = mu + scale * noise
    log_normal = (-0.5 * noise**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), log_normal - log_det


def soft_state_value(q_next: Tensor, log_prob_next: Tensor, alpha: Tensor | float) -> Tensor:
    """SAC paper eq. (3): soft value V(s') = Q(s', a') - alpha log pi(a'|s'), a' ~ pi(.|s') (one sample).

    Args:
        q_next: [B] target-critic Q of the sampled next action (the clipped double-Q minimum for SAC).
        log_prob_next: [B] its log-probability.
        alpha: entropy temperature.

    Returns:
        [B] soft state value.
    """
    return q_next - alpha * log_prob_next


def td_target(reward: Tensor, terminated: Tensor, gamma: float, value_next: Tensor) -> Tensor:
    """DDPG paper eq. (5) / SAC paper eq. (2): one-step Bellman target y = r + gamma (1 - terminated) V(s').

    Time-limit truncation is not termination: a truncated transition bootstraps from V(s').

    Args:
        reward: [B] per-step reward (or cost, for the cost critic).
        terminated: [B] bool or {0, 1}: the episode ended in s' (not by the time limit).
        gamma: discount factor.
        value_next: [B] value of s' (for the cost critic: Q_c of the next action, no entropy term).

    Returns:
        [B] target, no gradient through `value_next` is expected (compute it under no_grad).
    """
    return reward + gamma * (1.0 - terminated.to(reward.dtype)) * value_next


def lagrangian_actor_loss(q_r: Tensor, q_c: Tensor, lam: Tensor, log_prob: Tensor | None = None,
                          alpha: Tensor | float = 0.0) -> Tensor:
    """SAC-Lag / DDPG-Lag actor loss per transition, Stooke et al.'s 1 / (1 + lam) rescaling:

        loss_b = (alpha log pi(a_b|s_b) - Q_r(s_b, a_b) + lam_b Q_c(s_b, a_b)) / (1 + lam_b),

    a_b reparameterised (SAC) or the deterministic action (DDPG, log_prob None, alpha 0). lam_b is the multiplier
    of transition b's threshold. The same function as CCPO's `cvi=false` ablation
    (`ccpo.equations.lagrangian_actor_loss`), with each transition its own group of one state.

    Args:
        q_r, q_c: [B] reward and cost Q of the policy's action (gradients flow through the action).
        lam: [B] Lagrange multiplier of each transition's threshold (used detached).
        log_prob: [B] log pi of the action (SAC) or None (DDPG).
        alpha: entropy temperature (SAC), used detached.

    Returns:
        [B] loss per transition; the caller averages it.
    """
    log_prob = torch.zeros_like(q_r) if log_prob is None else log_prob
    alpha = alpha.detach() if isinstance(alpha, Tensor) else alpha
    return _lagrangian_actor_loss(q_r[:, None], q_c[:, None], lam, log_prob[:, None], alpha)


def temperature_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """SAC paper eq. (18): J(alpha) = E_a~pi[-alpha (log pi(a|s) + H_target)], minimised over the temperature.

    Differs from the paper: log alpha stands in for alpha (the SAC authors' code does the same): the gradient
    has the same sign, alpha rises while the policy entropy -log pi is below H_target, and alpha stays > 0.

    Args:
        log_alpha: scalar parameter.
        log_prob: [B] log pi of actions sampled from the current policy (used detached).
        target_entropy: H_target, SAC's -A by default.

    Returns:
        scalar loss.
    """
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()
