"""Checkpoint plumbing: atomic writes, safe loads, per-rank sidecars and RNG states as plain data.

Lightning writes the checkpoint (rank 0); every rank writes its own sidecar (replay buffer + RNG states) next to
it, named by a token the checkpoint records, so a checkpoint and its sidecars always belong together. Files are
written to a temporary name in the same directory, fsynced and renamed, so a crash mid-save leaves the previous
file intact. Everything is loaded with `weights_only=True`: a checkpoint cannot run code. A failed write (full or
read-only disk) raises `StorageError`, a one-line message, and leaves the previous file as it was.

Kill safety of the pair: the sidecar is written before the checkpoint that names it, so a kill in between leaves a
newer, unreferenced sidecar (harmless; overwritten when the resumed run gets there), never a checkpoint without
its sidecar. Pruning never removes the sidecar of the last checkpoint written (or resumed from) before the new
checkpoint is in place.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ccpo_pl.faults import StorageError

#: format of the `ccpo` training state in a checkpoint; checkpoints without the key are format 1
CHECKPOINT_FORMAT = 1
READABLE_FORMATS = (1,)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)` into a temporary file beside `path`, fsync, then rename over `path`: a reader sees the old
    file or the whole new one, never a part; a failed write leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(..., weights_only=True)`: tensors and plain containers only, no code execution."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_or_stop(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """`atomic_torch_save`; an OSError (disk full, read-only, ...) becomes a one-line `StorageError`."""
    try:
        atomic_torch_save(obj, path)
    except OSError as err:
        raise StorageError(f"cannot write {what} {str(path)!r} ({err.strerror or err}); the previous one is kept; "
                           f"free space or fix permissions, then re-run the same command to resume") from None


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the `.<name>.tmp` files of atomic writes a killed process left in `directory` and its subfolders."""
    stale = [p for p in Path(directory).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and loads with `weights_only=True`."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        save_or_stop(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return safe_load(path, map_location=map_location or "cpu")


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and plain data (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class Sidecars:
    """Per-rank files next to the checkpoints: `<dir>/rank<r>/<token>.pt`, keeping the newest `keep` tokens.

    Tokens are fixed-width frame counts, so names sort by age. Pruning looks only at tokens up to the one being
    written (newer ones are left by a killed process and get overwritten) and spares `protect`.
    """

    def __init__(self, directory: str | os.PathLike, rank: int, keep: int = 2):
        self.directory = Path(directory) / f"rank{rank}"
        self.keep = int(keep)

    def path(self, token: str) -> Path:
        return self.directory / f"{token}.pt"

    def save(self, token: str, payload: dict, protect: str | None = None) -> None:
        save_or_stop(payload, self.path(token), "replay-buffer sidecar")
        tokens = sorted(p.stem for p in self.directory.glob("*.pt") if p.stem <= token)
        for old in tokens[: max(0, len(tokens) - self.keep)]:
            if old != protect:
                self.path(old).unlink(missing_ok=True)

    def load(self, token: str) -> dict | None:
        p = self.path(token)
        return safe_load(p) if p.exists() else None
