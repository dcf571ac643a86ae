"""The off-policy train iterable: collect with a TorchRL `Collector`, store flat transitions, yield sampled batches.

Lightning gets this object from `train_dataloader()`. It is built lazily inside each rank's process (so every rank
owns its collector, envs and buffer, seeded per rank) and yields exactly `len(self)` batches per epoch on every rank,
which DDP needs. One epoch = `collects_per_epoch` collections of `frames_per_collect` frames, each followed by
`updates_per_collect` sampled batches. Runs are bounded by environment frames, not optimizer steps.
A checkpoint taken mid-epoch at a collection boundary (preemption) resumes with the epoch's remaining collections.
Transitions with a NaN or inf in observation, reward or cost are never stored; they are counted per collection
(`nonfinite`) for the module to stop the run or log them (`faults.on_nan`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase

from ccpo_pl.nets import nearest_threshold

#: env quantities checked for NaN/inf in every collection: name -> keys of a transition
CHECKED_KEYS = {"observation": ("observation", ("next", "observation")), "reward": (("next", "reward"),),
                "cost": (("next", "cost"),)}
#: What the update step reads from a transition; everything else the collector writes is dropped before storage.
TRANSITION_KEYS = (
    "observation",
    "eps",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "cost"),
    ("next", "terminated"),
)


class OffPolicyStream:
    """Collector + replay buffer as a stateful iterable of sampled batches.

    Args:
        make_env: builds this rank's (batched, seeded) training env; called once, inside the rank.
        policy: the collection policy (TensorDictModule reading `observation`, `eps`); the live module, not a copy.
        frames_per_collect: env frames per collection (across this rank's envs).
        updates_per_collect: sampled batches yielded after each collection.
        collects_per_epoch: collections per Lightning epoch.
        buffer_size: replay capacity in transitions (per rank).
        batch_size: transitions per sampled batch.
        eps_behavior: the behaviour thresholds; finished episodes are tallied per threshold for logging.
        device: where the buffer lives and batches are sampled (the training device).
    """

    def __init__(
        self,
        make_env: Callable[[], EnvBase],
        policy: Callable,
        *,
        frames_per_collect: int,
        updates_per_collect: int,
        collects_per_epoch: int,
        buffer_size: int,
        batch_size: int,
        eps_behavior: Sequence[float],
        device: torch.device | str = "cpu",
    ):
        self.make_env, self.policy = make_env, policy
        self.frames_per_collect = int(frames_per_collect)
        self.updates_per_collect = int(updates_per_collect)
        self.collects_per_epoch = int(collects_per_epoch)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.eps_behavior = torch.as_tensor(list(eps_behavior), dtype=torch.float32)
        # no fixed batch size: each collection draws all of its batches at once (see __iter__)
        self.buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(int(buffer_size), device=self.device))
        self.frames = 0  # env frames collected by this rank
        self.collects = 0
        self.collect_seconds = 0.0
        self.nonfinite: dict[str, int] = {}  # env quantity -> transitions with a NaN/inf in the latest collection
        self.nonfinite_frame = 0  # this rank's frame count at the first of them
        self.dropped = 0  # transitions not stored because of a NaN/inf, since the start of this process
        # per behaviour threshold: [episodes, sum of episode reward, sum of episode cost] since the last pop
        self._episodes = torch.zeros(len(self.eps_behavior), 3, dtype=torch.float64)
        self._collector: Collector | None = None
        self._iterator: Iterator | None = None

    def __len__(self) -> int:
        return self.updates_per_collect * self.collects_per_epoch

    def _build(self) -> None:
        self._collector = Collector(
            self.make_env(),
            self.policy,
            frames_per_batch=self.frames_per_collect,
            total_frames=-1,
            policy_device=self.device,
            env_device="cpu",
            storing_device=self.device,
            trust_policy=True,
            auto_register_policy_transforms=False,  # the policy is not recurrent: it needs no InitTracker
        )
        self._iterator = iter(self._collector)

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self._collector is None:
            self._build()
        # after a mid-epoch checkpoint (taken at a collection boundary) only the epoch's remaining collections
        for _ in range(self.collects_per_epoch - self.collects % self.collects_per_epoch):
            self.collect()
            # all of this collection's batches in one draw (uniform with replacement, as batch-by-batch draws
            # would be): one sampler call instead of `updates_per_collect` of them (a call's cost: docs/performance.md)
            batches = self.buffer.sample(self.batch_size * self.updates_per_collect)
            yield from batches.split(self.batch_size)  # views, split at once (half the cost of slicing each)

    def collect(self) -> None:
        """Run one collection with the current policy and store its transitions."""
        start = time.perf_counter()
        batch = next(self._iterator)
        self.collect_seconds += time.perf_counter() - start
        finite = self._check_finite(batch)
        self.frames += batch.numel()
        self.collects += 1
        flat = batch.reshape(-1)
        if finite is not None:
            flat = flat[finite.reshape(-1)]
        self._tally_episodes(flat)
        self.buffer.extend(flat.select(*TRANSITION_KEYS))

    def _check_finite(self, batch: TensorDictBase) -> torch.Tensor | None:
        """Record in `nonfinite` which env quantities had a NaN/inf (and the frame of the first); the mask of clean
        transitions (`batch`'s shape, `[envs, steps]`), None if all are clean."""
        shape = batch.shape
        bad = {name: torch.stack([~torch.isfinite(batch[k]).reshape(*shape, -1).all(-1) for k in keys]).any(0)
               for name, keys in CHECKED_KEYS.items()}
        self.nonfinite = {name: int(b.sum()) for name, b in bad.items() if bool(b.any())}
        if not self.nonfinite:
            return None
        dirty = torch.stack(list(bad.values())).any(0)
        step = int(dirty.reshape(-1, shape[-1]).any(0).nonzero()[0]) if len(shape) > 1 else 0
        self.nonfinite_frame = self.frames + (step + 1) * (batch.numel() // shape[-1] if len(shape) > 1 else 1)
        self.dropped += int(dirty.sum())
        return ~dirty

    def _tally_episodes(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        done = done & torch.isfinite(batch["next", "episode_reward"].reshape(-1)) & torch.isfinite(
            batch["next", "episode_cost"].reshape(-1))
        if not done.any():
            return
        eps = batch["eps"].reshape(-1)[done].cpu().float()
        ep_r = batch["next", "episode_reward"].reshape(-1)[done].cpu().double()
        ep_c = batch["next", "episode_cost"].reshape(-1)[done].cpu().double()
        which = nearest_threshold(eps, self.eps_behavior)
        stats = torch.stack([torch.ones_like(ep_r), ep_r, ep_c], -1)
        self._episodes.index_add_(0, which, stats)

    def peek_episode_stats(self) -> torch.Tensor:
        """The tallies `pop_episode_stats` will return, left in place (`[n_behavior, 3]`: n, sum R, sum C)."""
        return self._episodes.clone()

    def pop_episode_stats(self) -> torch.Tensor:
        """Finished-episode tallies per behaviour threshold since the last call: `[n_behavior, 3]` (n, sum R, sum C)."""
        out, self._episodes = self._episodes, torch.zeros_like(self._episodes)
        return out

    def state_dict(self) -> dict:
        """Counters (identical on every rank)."""
        return {"frames": self.frames, "collects": self.collects}

    def load_state_dict(self, state: dict) -> None:
        self.frames, self.collects = int(state["frames"]), int(state["collects"])

    def buffer_state(self) -> dict:
        """This rank's replay buffer (data included), for the per-rank sidecar next to a checkpoint."""
        return self.buffer.state_dict()

    def load_buffer_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state)

    def close(self) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = self._iterator = None


#: What an on-policy update reads from a collection (kept in time order, `[envs, steps]`).
ROLLOUT_KEYS = TRANSITION_KEYS + (("next", "done"), ("next", "episode_cost"))


class OnPolicyStream(OffPolicyStream):
    """Collector without replay: yields each collection whole, `[envs, steps]` in time order, once.

    One Lagrange/trust-region update per collection, so an epoch is `collects_per_epoch` items. The collection of
    the current policy is used once and dropped (nothing to save beside a checkpoint but the RNG states).
    A collection with a NaN/inf in env data is still yielded (GAE needs the whole time series) with
    `clean = False`; the module stops the run or skips that update (`faults.on_nan`).
    """

    def __init__(self, make_env: Callable[[], EnvBase], policy: Callable, *, frames_per_collect: int,
                 collects_per_epoch: int, eps_behavior: Sequence[float], device: torch.device | str = "cpu",
                 **_unused):
        super().__init__(make_env, policy, frames_per_collect=frames_per_collect, updates_per_collect=1,
                         collects_per_epoch=collects_per_epoch, buffer_size=1, batch_size=1,
                         eps_behavior=eps_behavior, device=device)
        self.clean = True
        self._latest: TensorDictBase | None = None

    def __len__(self) -> int:
        return self.collects_per_epoch

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self._collector is None:
            self._build()
        for _ in range(self.collects_per_epoch - self.collects % self.collects_per_epoch):
            self.collect()
            batch, self._latest = self._latest, None
            yield batch

    def collect(self) -> None:
        """Run one collection with the current policy and keep it for the next update."""
        start = time.perf_counter()
        batch = next(self._iterator)
        self.collect_seconds += time.perf_counter() - start
        finite = self._check_finite(batch)
        self.clean = finite is None
        self.frames += batch.numel()
        self.collects += 1
        self._tally_episodes(batch.reshape(-1) if finite is None else batch.reshape(-1)[finite.reshape(-1)])
        self._latest = batch.select(*ROLLOUT_KEYS)

    def buffer_state(self) -> dict:
        """Nothing is replayed: an on-policy run resumes with a fresh collection."""
        return {}

    def load_buffer_state(self, state: dict) -> None:
        """See `buffer_state`."""
