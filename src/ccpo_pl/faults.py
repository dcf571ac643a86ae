"""Why a run stops on purpose, and the finiteness checks behind the numerical ones.

`python -m ccpo_pl.fit` prints a `RunStopped`'s message as one line and exits with its `exit_code`:
0 for a preemption (SIGTERM/SIGINT, after a checkpoint at a safe point), 3 for a numerical fault or a failed
checkpoint write (the last complete checkpoint is kept). Library callers of `fit()` get the exception.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

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
