"""Checkpoint plumbing: atomic writes, safe loads, per-rank sidecars, RNG states as plain data, the training state.

Over 300 lines: everything a checkpoint is made of and checked by, in one place (writes, loads, sidecars, the
training state a module saves and restores, the checks before a checkpoint is used).

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ccpo_pl.errors import ConfigError
from ccpo_pl.faults import StorageError, first_nonfinite

#: the checkpoint key of ccpo_pl's training state (`save_training_state`); checkpoints written before it was named
#: so keep it under `LEGACY_TRAINING_STATE` and are read the same (`training_state`)
TRAINING_STATE = "training_state"
LEGACY_TRAINING_STATE = "ccpo"
#: format of the training state in a checkpoint; a state without `format_version` is format 1
CHECKPOINT_FORMAT = 1
READABLE_FORMATS = (1,)


def umask() -> int:
    """The process's file-mode creation mask (read from /proc where it is there: setting it to read it is not
    thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)` into a temporary file beside `path`, fsync, then rename over `path`: a reader sees the old
    file or the whole new one, never a part; a failed write leaves no temporary file. The file's mode follows the
    umask, as `open` would give it (`mkstemp` alone makes it 0600: colleagues could not read a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
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


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write `data` to `path` as `atomic_torch_save` does: a power loss leaves the old file or the new one."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """`atomic_write_bytes` of `text`, UTF-8."""
    atomic_write_bytes(text.encode(), path)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(..., weights_only=True)`: tensors and plain containers only, no code execution."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_or_stop(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """`atomic_torch_save`; a failed write (disk full, read-only, ...) becomes a one-line `StorageError`. torch's
    zip writer reports a failed write as a RuntimeError raised while handling the OSError: both count."""
    try:
        atomic_torch_save(obj, path)
    except (OSError, RuntimeError) as err:
        cause = storage_cause(err)
        if cause is None:
            raise
        raise StorageError(f"cannot write {what} {str(path)!r} ({cause}); the previous one is kept; free space or "
                           f"fix permissions, then re-run the same command to resume") from None


def storage_cause(err: BaseException, errnos: tuple[int, ...] | None = None) -> str | None:
    """The text of the OSError behind `err` (itself, or what it was raised from or while handling; only those with
    an errno in `errnos` if given), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and (errnos is None or err.errno in errnos):
            return err.strerror or str(err)
        err = err.__cause__ or err.__context__
    return None


def reserve_space(directory: str | os.PathLike, nbytes: int) -> None:
    """Allocate `nbytes` in a temporary file in `directory`, fsync and delete it: an OSError if the directory
    cannot hold that much (read-only, full, over quota). `posix_fallocate` reserves the blocks without writing
    them where the file system supports it."""
    fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=directory)
    try:
        os.write(fd, b"\0")
        os.posix_fallocate(fd, 0, max(1, int(nbytes)))
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


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


# ---------------------------------------------------------------- the training state
def training_state(ckpt: Mapping) -> dict | None:
    """The training state of a `ccpo_pl.fit` checkpoint (`TRAINING_STATE`, or `LEGACY_TRAINING_STATE` in older
    checkpoints), or None where it has none."""
    state = ckpt.get(TRAINING_STATE, ckpt.get(LEGACY_TRAINING_STATE)) if isinstance(ckpt, Mapping) else None
    return state if isinstance(state, dict) else None


def save_training_state(module, checkpoint: dict) -> dict:
    """Record a `SafeRLModule`'s training state in `checkpoint` (rank 0's is the one written): fault counts, update
    metrics not logged yet, the data's counters and sidecar token (`RolloutData.checkpoint_state`; each rank's
    rollouts write their sidecar in it), the threshold generator, the rank count and the run's wall-clock."""
    data = module.rollouts.checkpoint_state() if module.rollouts is not None else {
        "stream": {"frames": 0, "collects": 0}, "sidecar": f"{0:013d}"}
    checkpoint[TRAINING_STATE] = state = {
        "format_version": CHECKPOINT_FORMAT,
        "faults": dict(module.faults),
        # update metrics not logged yet (they are logged after the next collection): a resumed run logs them
        "pending_log": module.training_log.state_dict(),
        "stream": data["stream"],
        "eps_generator": module.eps_generator.get_state(),
        "sidecar": data["sidecar"],
        "world_size": module.trainer.world_size,
        "elapsed_s": module.clock.elapsed_s(),
    }
    return state


def restore_training_state(module, checkpoint: dict) -> dict:
    """Inverse of `save_training_state` (also for checkpoints without the pending log, faults or wall-clock);
    returns the state. The sidecars live next to the checkpoint being loaded (which may belong to another run)."""
    state = training_state(checkpoint)
    if state is None:
        raise ValueError(f"checkpoint has no {TRAINING_STATE!r} training state; it was not written by ccpo_pl.fit")
    if state["world_size"] != module.trainer.world_size:
        raise ValueError(f"checkpoint was written with {state['world_size']} ranks, this run has "
                         f"{module.trainer.world_size}; resume with the same trainer.devices x trainer.num_nodes")
    module.seen_collects = int(state["stream"]["collects"])
    module.faults.update(state.get("faults", {}))
    if "pending_log" in state:
        module.training_log.load_state_dict(state["pending_log"])
    module.clock.elapsed_before = float(state.get("elapsed_s", 0.0))
    module.eps_generator.set_state(state["eps_generator"])
    if module.rollouts is not None:
        module.rollouts.restore(state, getattr(module.trainer, "ckpt_path", None))
    return state


# ---------------------------------------------------------------- checking a checkpoint before use
def check_checkpoint(path: str | os.PathLike, *, name: str = "ckpt_path", expect: Mapping[str, Any] | None = None,
                     world_size: int | None = None, module: torch.nn.Module | None = None, prefix: str = "") -> dict:
    """Load a `ccpo_pl.fit` checkpoint safely and check it can be used; a one-line `ConfigError` otherwise.

    Checks, in order: the file exists and loads with `weights_only=True`; it was written by `ccpo_pl.fit` (training
    state and run config present) in a format this version reads; `expect` (dotted run-config key -> value, e.g.
    `{"algo.name": "ccpo", "env.id": ...}`; None values are not checked) matches; it was written by `world_size`
    ranks (if given); its weights are finite; and, with `module` (what it will be loaded into), its weights under
    `prefix` have exactly the names and shapes of `module.state_dict()`, once the module's `fill_state_defaults`
    (where it has one: `SafeRLModule`) added what an earlier version's checkpoint lacks. The finite weights: with
    `module`, its parameters and the optimizer states; without, every floating tensor under `prefix` (e.g.
    `prefix="actor."` for a policy: some training buffers hold NaN on purpose). `name` is how messages name the
    file (`ckpt_path`, `run`, ...). Returns the loaded checkpoint.
    """
    label = f"{name}={str(path)!r}"
    if Path(path).is_dir():
        raise ConfigError(f"{label} is a directory; give a checkpoint file, e.g. "
                          f"{name}=<run dir>/checkpoints/last.ckpt")
    if not Path(path).is_file():
        raise ConfigError(f"{label} does not exist")
    try:
        ckpt = safe_load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ConfigError(f"{label} is not a readable checkpoint ({type(err).__name__}); give a checkpoint written "
                          f"by ccpo_pl.fit (e.g. <run dir>/checkpoints/last.ckpt)") from None
    saved = (ckpt.get("hyper_parameters") or {}).get("run_config") if isinstance(ckpt, dict) else None
    state = training_state(ckpt)
    if not saved or state is None or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{label} was not written by ccpo_pl.fit")
    version = state.get("format_version", 1)
    if version not in READABLE_FORMATS:
        raise ConfigError(f"{label} has checkpoint format {version!r}; this ccpo_pl reads format "
                          f"{CHECKPOINT_FORMAT}; use the ccpo_pl version that wrote it")
    for key, now in (expect or {}).items():
        group, field = key.split(".")
        was = (saved.get(group) or {}).get(field)
        if now is not None and was != now:
            raise ConfigError(f"{label} is a {key}={was!r} checkpoint, this run has {key}={now!r}")
    ranks = state.get("world_size")
    if world_size is not None and ranks != world_size:
        raise ConfigError(f"{label} was written by {ranks} ranks, this run has {world_size}; resume it with "
                          f"trainer.devices x trainer.num_nodes = {ranks}")
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix) and torch.is_tensor(v)}
    if module is not None:
        if not prefix and hasattr(module, "fill_state_defaults"):
            module.fill_state_defaults(weights)
        _check_shapes(label, weights, module.state_dict(), prefix)
    bad = first_nonfinite(_weights_to_check(ckpt, weights, module, prefix))
    if bad is not None:
        raise ConfigError(f"{label} holds NaN or inf in {bad}; resume from an earlier checkpoint "
                          f"(checkpoints/epochNNNN.ckpt) with ckpt_path=<file>")
    return ckpt


def _weights_to_check(ckpt: dict, weights: dict, module: torch.nn.Module | None, prefix: str) -> dict:
    """The floating tensors that must be finite (see `check_checkpoint`)."""
    if module is None:
        return {k: v for k, v in weights.items() if v.is_floating_point()}
    named = {k: weights[f"{prefix}{k}"] for k, _ in module.named_parameters()}
    for i, opt in enumerate(ckpt.get("optimizer_states") or []):
        for p, slots in (opt.get("state") or {}).items():
            named |= {f"optimizer {i} state {p} {k}": v for k, v in slots.items()
                      if torch.is_tensor(v) and v.is_floating_point()}
    return named


def _check_shapes(label: str, saved: Mapping[str, Any], wanted: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The saved weights have the names and shapes of the module's (`prefix` + its keys)."""
    want = {f"{prefix}{k}": tuple(v.shape) for k, v in wanted.items()}
    have = {k: tuple(v.shape) for k, v in saved.items() if torch.is_tensor(v)}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    differ = [k for k in sorted(want.keys() & have.keys()) if want[k] != have[k]]
    if differ:
        k = differ[0]
        raise ConfigError(f"{label} has {k} of shape {list(have[k])}, this run's network needs {list(want[k])} "
                          f"(other network sizes: give the algo settings of the run that wrote it)")
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which this run's network does not"
        raise ConfigError(f"{label} {what} ({len(missing)} missing, {len(extra)} unexpected weights): another "
                          f"network variant; give the algo settings of the run that wrote it")
