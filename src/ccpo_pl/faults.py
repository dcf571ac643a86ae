"""Why a run stops on purpose, and the finiteness checks behind the numerical ones.

`python -m ccpo_pl.fit` prints a `RunStopped`'s message as one line and exits with its `exit_code`:
0 for a preemption (SIGTERM/SIGINT, after a checkpoint at a safe point), 3 for a numerical fault or a failed
checkpoint write (the last complete checkpoint is kept). Library callers of `fit()` get the exception.

A training module's faults (`SafeRLModule`: its `on_nan` policy and its `faults` counts, kept in checkpoints):
`check_env_data` after each collection, `batch_suspects` to name a replay batch's entries in a message, and
`log_fault_counts` (`faults/skipped_updates`, `faults/dropped_transitions`, with `on_nan="skip"`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # the commands import this module before their config is checked, without tensordict
    from tensordict import TensorDictBase

ON_NAN = ("stop", "skip")
#: exit status after a second Ctrl-C (128 + SIGINT, as shells report a process ended by it)
INTERRUPTED_EXIT = 130


class RunStopped(RuntimeError):
    """The run stopped on purpose; the message is one line and says what to do next."""

    exit_code = 3


class NumericalFault(RunStopped):
    """A NaN or inf in a watched quantity: env data, a replay batch, a loss, a dual, a multiplier, a parameter."""


class StorageError(RunStopped):
    """A checkpoint or sidecar could not be written (unwritable or full disk); the previous one is intact."""


class Preempted(RunStopped):
    """A signal stopped the run at a safe point, after a checkpoint; re-running the same command resumes it."""

    exit_code = 0


def _flat(tensors: Mapping[str, Tensor]) -> Tensor:
    """All elements of all tensors, detached, as one float vector."""
    return torch.cat([t.detach().reshape(-1).float() for t in tensors.values()])


def all_finite(tensors: Mapping[str, Tensor]) -> Tensor:
    """One boolean tensor: every element of every tensor is finite (three kernels however many tensors; no host
    sync until it is read)."""
    return torch.isfinite(_flat(tensors)).all()


def finite_now(tensors: Mapping[str, Tensor]) -> bool:
    """`all_finite`, read at once: one sum over all elements in the common case (a NaN or inf makes the sum
    non-finite); only a sum that overflows float32 is checked element by element (4x cheaper for the
    parameters after every update)."""
    flat = _flat(tensors)
    return bool(torch.isfinite(flat.sum())) or bool(torch.isfinite(flat).all())


def first_nonfinite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or inf, or None."""
    return next((name for name, t in tensors.items() if not bool(torch.isfinite(t).all())), None)


def batch_suspects(batch: TensorDictBase) -> dict[str, Tensor]:
    """The replay-batch entries a NaN in a critic loss can come from, for `check_finite`'s message."""
    nxt = batch["next"]
    return {"batch observation": batch["observation"], "batch action": batch["action"],
            "batch next observation": nxt["observation"], "batch reward": nxt["reward"],
            "batch cost": nxt["cost"]}


def check_env_data(module) -> None:
    """After each collection of a `SafeRLModule`'s data: NaN/inf from the env (never stored) stops the run, or is
    counted (`skip`)."""
    stream, world = module.rollouts.stream, module.trainer.world_size
    bad = stream.nonfinite
    any_bad = bool(bad)
    if world > 1:
        any_bad = module.trainer.strategy.reduce_boolean_decision(any_bad, all=False)
    if not any_bad or module.on_nan == "skip":
        return
    what = " and ".join(f"{name} ({n} transitions)" for name, n in bad.items()) or "data on another rank"
    first = f" at frame {stream.nonfinite_frame * world}" if bad else ""
    raise NumericalFault(f"non-finite env {what}{first}, in the collection ending at frame {module.global_frames}; "
                         f"stopped, the last good checkpoint is kept (faults.on_nan=skip drops them instead)")


def log_fault_counts(module) -> None:
    """A `SafeRLModule`'s counts, with `on_nan="skip"`: `faults/skipped_updates` and `faults/dropped_transitions`
    (all ranks), once > 0."""
    if module.on_nan != "skip":
        return
    stream, world = module.rollouts.stream, module.trainer.world_size
    module.faults["dropped_transitions"] += stream.dropped
    stream.dropped = 0
    counts = torch.tensor([module.faults["skipped_updates"], module.faults["dropped_transitions"]],
                          dtype=torch.float64)
    if world > 1:  # skipped updates are identical on every rank, dropped transitions summed
        counts = module.trainer.strategy.reduce(counts.to(module.device), reduce_op="sum").cpu()
        counts[0] /= world
    if counts.sum() > 0 and module.logger is not None:
        module.logger.log_metrics({"faults/skipped_updates": float(counts[0]),
                                   "faults/dropped_transitions": float(counts[1])}, step=module.global_frames)
