"""Networks conditioned on the cost threshold eps: actor pi(a|s, eps) and the critics."""

from ccpo_pl.nets.actor import EpsActor, EpsPolicy, make_actor, make_policy
from ccpo_pl.nets.critics import (
    CriticEnsemble,
    PlainCritic,
    ValueCritic,
    VVECritic,
    critic_members,
    eps_features,
    make_critic,
    normalise_eps,
)

__all__ = [
    "CriticEnsemble", "EpsActor", "EpsPolicy", "PlainCritic", "ValueCritic", "VVECritic", "critic_members",
    "eps_features", "make_actor", "make_critic", "make_policy", "normalise_eps",
]
