"""Data flow: TorchRL Collector -> replay buffer (off-policy) or the whole collection (on-policy) -> the train
iterable Lightning consumes, one per rank, owned by the run's `RolloutData` module."""

from ccpo_pl.data.rollouts import RolloutData
from ccpo_pl.data.stream import OffPolicyStream, OnPolicyStream

__all__ = ["OffPolicyStream", "OnPolicyStream", "RolloutData"]
