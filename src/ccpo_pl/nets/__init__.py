"""Networks conditioned on the cost threshold eps: actor pi(a|s, eps) and the critics."""

from ccpo_pl.nets.actor import EpsActor, EpsPolicy, make_actor, make_policy, make_run_actor
from ccpo_pl.nets.critics import (
    PlainCritic,
    ValueCritic,
    VVECritic,
    cat_broadcast,
    eps_features,
    make_critic,
    nearest_threshold,
    normalise_eps,
)

__all__ = [
    "EpsActor", "EpsPolicy", "PlainCritic", "ValueCritic", "VVECritic", "cat_broadcast",
    "eps_features", "make_actor", "make_critic", "make_policy", "make_run_actor", "nearest_threshold",
    "normalise_eps",
]
