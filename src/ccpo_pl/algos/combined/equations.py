"""C-PPO-Lag / C-TRPO-Lag equations: pure tensor functions.

Order follows the algorithm: the paper's linear policy combination (used at every action), then the per-threshold
Lagrangian policy step: standardised advantages per behaviour threshold, the combined advantage, the per-threshold
mean of a per-transition loss, the importance-weighted surrogate and the Gaussian KL of the trust region.
Sources: CCPO slides ("Policy linear combination baselines"), Stooke et al. 2020 (rescaled Lagrangian),
Schulman et al. 2015/2017 (TRPO, PPO). Shapes: E behaviour thresholds, N transitions, A action dims.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccpo_pl.algos.trust_region import diag_normal_kl

#: KL(pi_old || pi) of diagonal Gaussians, summed over the action dims (`trust_region.diag_normal_kl`).
gaussian_kl = diag_normal_kl

_TINY = 1e-8  # standard-deviation floor of the advantage standardisation (a collection with constant cost)


#: how `combination_weights` treats eps outside the behaviour range
EXTRAPOLATIONS = ("linear", "nearest")


def combination_weights(eps: Tensor, eps_behavior: Tensor,
                        extrapolation: str = "linear") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CCPO slides, linear-combination baselines: pi(.|eps) = w1 pi(.|eps_1) + w2 pi(.|eps_2) with
    w1 = (eps_2 - eps) / (eps_2 - eps_1), w2 = (eps - eps_1) / (eps_2 - eps_1), eps_1 <= eps <= eps_2 neighbours.

    At a behaviour threshold eps = eps_i the weights are exactly (1, 0) with i1 = i (and (0, 1) with i2 = E-1 at
    the largest), so the combination returns policy i bit for bit.

    Args:
        eps: thresholds, any shape [...].
        eps_behavior: the behaviour thresholds [E], strictly increasing.
        extrapolation: outside [eps_behavior[0], eps_behavior[-1]]: "linear" = the printed formula on the two end
            thresholds (one weight negative, w1 + w2 = 1; the paper's rule), "nearest" = eps clamped to the range
            (the end policy alone, weights (1, 0) or (0, 1)).

    Returns:
        (i1, i2, w1, w2), each of the shape of `eps`: indices of the two neighbouring behaviour thresholds (long;
        the two end ones outside the range, for either extrapolation) and their weights (w1 + w2 = 1; in [0, 1]
        inside the range). With one behaviour threshold (E = 1) the single policy gets weight 1 everywhere.
    """
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"extrapolation={extrapolation!r}; allowed: {', '.join(EXTRAPOLATIONS)}")
    eps_b = eps_behavior.to(eps.dtype)
    n = eps_b.numel()
    if n == 1:
        zero = torch.zeros(eps.shape, dtype=torch.long, device=eps.device)
        return zero, zero, torch.ones_like(eps), torch.zeros_like(eps)
    clamped = eps.clamp(eps_b[0], eps_b[-1])
    # the number of behaviour thresholds <= eps (searchsorted(right=True) as comparisons: ONNX has no searchsorted)
    i1 = ((clamped.unsqueeze(-1) >= eps_b).sum(-1) - 1).clamp(0, n - 2)
    i2 = i1 + 1
    lo, hi = eps_b[i1], eps_b[i2]
    e = eps if extrapolation == "linear" else clamped
    return i1, i2, (hi - e) / (hi - lo), (e - lo) / (hi - lo)


def linear_combination(x1: Tensor, x2: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """CCPO slides: w1 x1 + w2 x2, applied to the Gaussian means and to the standard deviations of the two policies.

    `CombinedActor.forward` computes the same sum row by row (each policy only where its weight is > 0); this is
    the reference its tests hold it to.

    Args:
        x1, x2: a statistic of pi(.|eps_1) and pi(.|eps_2) [..., A].
        w1, w2: weights from `combination_weights` [..., 1] (broadcast over A).

    Returns:
        [..., A]; equal to x1 bit for bit where (w1, w2) = (1, 0) and x2 is finite.
    """
    return w1 * x1 + w2 * x2


def standardise_per_threshold(x: Tensor, index: Tensor, n: int, centre: bool = True) -> Tensor:
    """(x - mean_i) / std_i within each behaviour threshold i (FSRL and OmniSafe standardise advantages).

    Args:
        x: per-transition values [N].
        index: behaviour-threshold index of each transition [N] (long, in [0, n)).
        n: number of behaviour thresholds E.
        centre: subtract the group mean (False: only divide by the group's standard deviation about its mean).

    Returns:
        [N]. Groups with fewer than two transitions are only centred; the std is floored at 1e-8.
    """
    count = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, torch.ones_like(x))
    mean = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, x) / count.clamp_min(1)
    dev = x - mean[index]
    var = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, dev * dev) / (count - 1).clamp_min(1)
    std = torch.where(count > 1, var.sqrt().clamp_min(_TINY), torch.ones_like(var))
    return (dev if centre else x) / std[index]


def lagrangian_advantage(adv_r: Tensor, adv_c: Tensor, lam: Tensor) -> Tensor:
    """Rescaled Lagrangian advantage (Stooke et al. 2020; OmniSafe PPO-Lag): (A_r - lam A_c) / (1 + lam).

    The 1/(1 + lam) keeps the advantage on the scale of A_r as lam grows, so PPO's clip range, TRPO's KL bound and
    the learning rate keep their meaning; the reward share 1/(1 + lam) falls and the cost share lam/(1 + lam) rises.

    Args:
        adv_r: reward advantages [N].
        adv_c: cost advantages [N].
        lam: the multiplier of each transition's threshold [N] (>= 0).

    Returns:
        [N].
    """
    return (adv_r - lam * adv_c) / (1.0 + lam)


def mean_per_threshold(x: Tensor, index: Tensor, n: int) -> Tensor:
    """Mean of per-transition values within each behaviour threshold: [N] -> [E] (0 for a threshold without data).

    Summing these means gives each policy exactly the gradient of its own loss, as if trained alone.
    """
    total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, index, x)
    count = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, torch.ones_like(x.detach()))
    return total / count.clamp_min(1)


def clipped_surrogate(log_prob: Tensor, log_prob_old: Tensor, adv: Tensor, clip_epsilon: float) -> Tensor:
    """PPO paper eq. (7), per transition: min(r A, clip(r, 1 - clip_epsilon, 1 + clip_epsilon) A), r = pi/pi_old.

    The reference the tests hold `torchrl.objectives.ClipPPOLoss` (what `CPPOLag` runs) against.

    Args:
        log_prob, log_prob_old: log pi_theta(a|s) and log pi_old(a|s) [N].
        adv: advantages [N].
        clip_epsilon: the clip range.

    Returns:
        [N], to be maximised.
    """
    ratio = (log_prob - log_prob_old).exp()
    return torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon) * adv)


def importance_surrogate(log_prob: Tensor, log_prob_old: Tensor, adv: Tensor) -> Tensor:
    """TRPO paper eq. (14), per transition: r A with r = pi_theta(a|s) / pi_old(a|s) (unclipped).

    Args:
        log_prob: log pi_theta(a|s) [N], differentiable.
        log_prob_old: log pi_old(a|s) [N].
        adv: advantages [N].

    Returns:
        [N], to be maximised; its gradient at theta = theta_old is the policy gradient.
    """
    return (log_prob - log_prob_old).exp() * adv
