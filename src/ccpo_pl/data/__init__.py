"""Data flow: TorchRL Collector -> replay buffer -> the train iterable Lightning consumes, one per rank."""

from ccpo_pl.data.stream import OffPolicyStream

__all__ = ["OffPolicyStream"]
