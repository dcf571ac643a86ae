"""Small pieces shared by the off-policy algorithm modules (CCPO, CVPO, V-SAC-Lag, V-DDPG-Lag)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy without gradients: a target network or a trust-region anchor."""
    copy_ = copy.deepcopy(module)
    copy_.requires_grad_(False)
    return copy_


@torch.no_grad()
def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta (Polyak averaging of a target network)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
