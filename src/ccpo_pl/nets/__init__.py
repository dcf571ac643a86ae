"""Networks conditioned on the cost threshold eps: actor pi(a|s, eps) and the critics."""

from ccpo_pl.nets.actor import EpsActor, make_actor, make_policy
from ccpo_pl.nets.critics import PlainCritic, ValueCritic, VVECritic, eps_features, make_critic, normalise_eps

__all__ = ["EpsActor", "PlainCritic", "ValueCritic", "VVECritic", "eps_features", "make_actor", "make_critic", "make_policy", "normalise_eps"]
