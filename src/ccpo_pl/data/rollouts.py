"""`RolloutData`: the training data of a safe-RL run as a `LightningDataModule`.

It owns, per rank: the training envs (seeded from the run's seed, the rank and the collections so far, so that
ranks differ and a resumed run does not replay the envs' first episodes), the train iterable (`OffPolicyStream`:
collector + replay buffer; `OnPolicyStream` for on-policy algorithms), the finished-episode tallies, the
frame and collection counters, and the sidecar beside each checkpoint (this rank's replay buffer and RNG states,
`checkpointing.Sidecars`). Lightning seeds every rank alike (`seed_everything`); `setup` seeds each rank apart.

The module supplies the collection policy (`collection_policy()`) and the thresholds the training envs draw
(`collection_eps()`); it reads the counters, the episode tallies and
the collection's health through this object (`SafeRLModule.rollouts`). The frame and collection counters and the
sidecar token are part of the checkpoint's training state (`checkpoint["training_state"]`, `checkpoint_state`
and `restore`), which the module writes after checking its weights are finite.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
from torchrl.envs import EnvBase

from ccpo_pl.checkpointing import Sidecars, rng_state, set_rng_state
from ccpo_pl.data.stream import OffPolicyStream, OnPolicyStream


def env_seed(seed: int, rank: int, collects: int) -> int:
    """The training envs' seed of a rank after `collects` collections: distinct per rank and after a resume."""
    return int(np.random.SeedSequence([seed, rank, collects]).generate_state(1)[0]) % (2**31 - 1)


def sidecar_layout_ok(sidecar) -> bool:
    """The structure `checkpoint_state` writes: {"buffer": dict, "rng": {"torch", "numpy", "python"}}."""
    return (isinstance(sidecar, dict) and isinstance(sidecar.get("buffer"), dict)
            and isinstance(sidecar.get("rng"), dict) and {"torch", "numpy", "python"} <= sidecar["rng"].keys())


class RolloutData(L.LightningDataModule):
    """Training envs, collector, replay buffer and their checkpoint state, one per rank (see the module docstring).

    Args:
        make_train_env: `(seed=..., eps_values=...) -> EnvBase`, this rank's batched training env.
        stream: the stream's sizes (`frames_per_collect`, `updates_per_collect`, `collects_per_epoch`,
            `buffer_size`, `batch_size`).
        eps_behavior: the behaviour thresholds; finished episodes are tallied per threshold.
        seed: the run's seed.
        sidecar_dir: where each rank writes its sidecar beside the checkpoints (None: no sidecars).
        keep_buffers: sidecars kept per rank.
        on_policy: yield each collection whole, once (`OnPolicyStream`), instead of replay batches
            (`registry.AlgoSpec.on_policy` of the algorithm).
    """

    def __init__(self, make_train_env: Callable[..., EnvBase], *, stream: dict, eps_behavior: Sequence[float],
                 seed: int = 0, sidecar_dir: str | None = None, keep_buffers: int = 2, on_policy: bool = False):
        super().__init__()
        self.make_train_env, self.stream_sizes = make_train_env, dict(stream)
        self.eps_behavior = [float(e) for e in eps_behavior]
        self.seed, self.sidecar_dir, self.keep_buffers = int(seed), sidecar_dir, int(keep_buffers)
        self.on_policy = bool(on_policy)
        self.stream: OffPolicyStream | None = None
        self._resume: dict | None = None  # the stream counters of the checkpoint being resumed
        self._sidecar: dict | None = None
        self._sidecar_written: str | None = None
        self._resumed_token: str | None = None

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    # ---------------------------------------------------------------- the stream
    def setup(self, stage: str) -> None:
        L.seed_everything(self.seed + self.rank, verbose=False)

    def make_stream(self) -> OffPolicyStream:
        """The train iterable (built once, inside the rank), with the module's collection policy."""
        module = self.trainer.lightning_module
        cls = OnPolicyStream if self.on_policy else OffPolicyStream
        return cls(self._seeded_train_env, module.collection_policy(), device=module.device,
                   eps_behavior=self.eps_behavior, **self.stream_sizes)

    def train_dataloader(self) -> OffPolicyStream:
        if self.stream is None:
            self.stream = self.make_stream()
            if self._resume is not None:
                self.stream.load_state_dict(self._resume)
            if self._sidecar is not None:
                try:
                    self.stream.load_buffer_state(self._sidecar.pop("buffer"))  # not kept twice in memory
                    set_rng_state(self._sidecar["rng"])  # tried here; set for good at `restore_rng`
                except Exception as err:  # noqa: BLE001 - another run's buffer (other sizes), damaged states
                    self._sidecar = None
                    self.stream.close()
                    self.stream = self.make_stream()
                    self.stream.load_state_dict(self._resume)
                    self._warn_sidecar(f"a replay-buffer sidecar that does not fit this run ({type(err).__name__})")
        return self.stream

    def _seeded_train_env(self) -> EnvBase:
        """This rank's envs, seeded from (seed, rank, collections so far)."""
        collects = self.stream.collects if self.stream is not None else 0
        return self.make_train_env(seed=env_seed(self.seed, self.rank, collects),
                                   eps_values=list(self.trainer.lightning_module.collection_eps()))

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.close()

    # ---------------------------------------------------------------- what the module reads
    @property
    def frames(self) -> int:
        """Env frames collected by all ranks."""
        return 0 if self.stream is None else self.stream.frames * self.world_size

    @property
    def collects(self) -> int:
        return 0 if self.stream is None else self.stream.collects

    # ---------------------------------------------------------------- checkpoints
    def _sidecars(self, directory: str | None = None) -> Sidecars:
        return Sidecars(directory or self.sidecar_dir, self.rank, self.keep_buffers)

    def checkpoint_state(self) -> dict:
        """Write this rank's sidecar (once per frame count) and return the checkpoint's `stream` and `sidecar`
        entries. Runs on every rank; call it only once the state being saved is known to be finite."""
        token = f"{self.frames:013d}"
        # last.ckpt and a periodic checkpoint of the same epoch share one sidecar: write it once
        if self.stream is not None and self.sidecar_dir and token != self._sidecar_written:
            # the previous checkpoint (written, or resumed from) keeps its sidecar until this one is in place
            protect = self._sidecar_written or self._resumed_token
            self._sidecars().save(token, {"buffer": self.stream.buffer_state(), "rng": rng_state()}, protect=protect)
            self._sidecar_written = token
        counters = self.stream.state_dict() if self.stream is not None else {"frames": 0, "collects": 0}
        return {"stream": counters, "sidecar": token}

    def restore(self, state: dict, ckpt_path: str | None) -> None:
        """Take the counters and sidecar token of a checkpoint's training state; the sidecars are read from beside
        `ckpt_path` (which may belong to another run), else from this run's `sidecar_dir`. A missing, unreadable or
        foreign sidecar warns: the run resumes with an empty buffer and fresh RNG states."""
        self._resume = dict(state["stream"])
        self._resumed_token = state["sidecar"]
        directory = str(Path(ckpt_path).parent / "sidecars") if ckpt_path else self.sidecar_dir
        try:
            self._sidecar = self._sidecars(directory).load(state["sidecar"]) if directory else None
            problem = "no replay-buffer sidecar"
        except Exception as err:  # noqa: BLE001 - corrupt or foreign: never fatal, never executed (weights_only)
            self._sidecar, problem = None, f"an unreadable replay-buffer sidecar ({type(err).__name__})"
        if self._sidecar is not None and not sidecar_layout_ok(self._sidecar):
            self._sidecar, problem = None, "a replay-buffer sidecar of another structure"
        if self._sidecar is None:
            self._warn_sidecar(f"{problem} for checkpoint token {state['sidecar']}")

    def restore_rng(self) -> None:
        """When training starts: the RNG states of the resumed sidecar, if there is one."""
        if self._sidecar is not None:
            set_rng_state(self._sidecar["rng"])
            self._sidecar = None

    def _warn_sidecar(self, problem: str) -> None:
        warnings.warn(f"{problem} on rank {self.rank}: resuming with an empty buffer and fresh RNG states",
                      stacklevel=3)


__all__ = ["RolloutData", "env_seed", "sidecar_layout_ok"]
