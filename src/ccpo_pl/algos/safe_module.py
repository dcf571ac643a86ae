"""`SafeRLModule`: what every safe-RL algorithm module shares, below `LightningModule`.

- the data interface: `rollouts` (the trainer's `data.RolloutData`), the collection policy and thresholds;
- finite checks (`check_finite`: stop the run with a `NumericalFault` naming the quantity and the frame, or, with
  `on_nan="skip"`, skip the update and count it) and rank reduction (`reduce_mean`);
- the per-threshold logging entry point: `on_new_data(batch)`, first in every `training_step`, checks the env data
  (`faults`) and logs through `training_log` (a `training_log.TrainingLog`: `per_eps_metrics`, training episodes,
  losses, the spread of `policy_distribution`); `clock` (a `timing.WallClock`) times the run;
- checkpoint hooks: the training state is `checkpointing.save_training_state` / `restore_training_state`.
Evaluation is a callback beside the module (`evaluation.PeriodicEvaluation`). Subclasses implement
`configure_optimizers`, `training_step` (`training_log.record_update` after each update), `on_new_collect` and
`per_eps_metrics`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning as L
import torch
from tensordict import TensorDictBase
from torch import Tensor

from ccpo_pl import checkpointing, faults
from ccpo_pl.faults import ON_NAN, NumericalFault, finite_now, first_nonfinite
from ccpo_pl.metrics import threshold_bins
from ccpo_pl.nets import EpsPolicy
from ccpo_pl.timing import WallClock
from ccpo_pl.training_log import TrainingLog

if TYPE_CHECKING:
    from ccpo_pl.data import RolloutData


class SafeRLModule(L.LightningModule):
    """Shared base of the safe-RL modules (see the module docstring)."""

    #: whether some `manual_backward` of an update leaves trained parameters without a gradient (one optimizer per
    #: disjoint parameter set, stepped one after the other): DDP must then search each backward's graph for them
    #: (`find_unused_parameters=True`), which costs a graph traversal per backward and warns when nothing is unused
    ddp_unused_parameters: bool = True

    def __init__(
        self,
        *,
        eps_behavior: Sequence[float],
        eps_range: Sequence[float],
        eps_bin: float,
        eps_eval: Sequence[float] = (),
        horizon: int,
        seed: int = 0,
        on_nan: str = "stop",
        total_frames: int | None = None,
    ):
        super().__init__()
        if on_nan not in ON_NAN:
            raise ValueError(f"faults.on_nan={on_nan!r} is not allowed; use {' or '.join(ON_NAN)}")
        self.automatic_optimization = False
        self.on_nan = on_nan
        self.eps_behavior_t = torch.tensor([float(e) for e in eps_behavior])
        self.eps_range = (float(eps_range[0]), float(eps_range[1]))
        self.eps_eval = [float(e) for e in eps_eval]  # the evaluation grid, kept with the hyperparameters
        self.eps_bins = threshold_bins(eps_behavior, eps_range, eps_bin)
        bins_t = torch.tensor(self.eps_bins)
        self.register_buffer("eps_bin_edges", (bins_t[1:] + bins_t[:-1]) / 2, persistent=False)  # midpoints
        self.eps_generator = torch.Generator().manual_seed(int(seed))  # identical on every rank
        self.seen_collects = 0
        self.faults = {"skipped_updates": 0, "dropped_transitions": 0}  # on_nan=skip: counted, kept in checkpoints
        self.clock = WallClock()
        self.training_log = TrainingLog(self.clock)

    # ---------------------------------------------------------------- data
    @property
    def rollouts(self) -> RolloutData | None:
        """The trainer's `RolloutData` (None without a trainer or datamodule, e.g. a module built for a test)."""
        return getattr(self._trainer, "datamodule", None)

    def collection_policy(self) -> EpsPolicy:
        """The policy the training envs are run with (the live actor, not a copy)."""
        return EpsPolicy(self.actor)

    def collection_eps(self) -> list[float]:
        """The thresholds the training envs draw episodes from: the behaviour thresholds."""
        return self.hparams.eps_behavior

    @property
    def global_frames(self) -> int:
        """Env frames collected by all ranks."""
        return 0 if self.rollouts is None else self.rollouts.frames

    def on_new_data(self, batch: TensorDictBase | None = None) -> None:
        """First in `training_step`: once per collection; the policy's spread is logged on `batch`'s states."""
        if self.rollouts.stream.collects != self.seen_collects:
            self.seen_collects = self.rollouts.stream.collects
            faults.check_env_data(self)
            self.on_new_collect()
            self.training_log.log(self, batch)
            faults.log_fault_counts(self)

    def on_new_collect(self) -> None:
        """Hook: a collection just finished (e.g. refresh the trust-region anchor)."""

    def on_training_episodes(self, episodes: Tensor) -> None:
        """Hook: the training episodes that ended in the last collection, `[n_beh, 3]` (count, reward sum, cost sum
        per behaviour threshold), averaged across ranks (`training_log.TrainingLog.log`)."""

    # ---------------------------------------------------------------- numerical faults
    def check_finite(self, tensors: dict[str, Tensor], can_skip: bool = True,
                     suspects: dict[str, Tensor] | None = None, finite: Tensor | None = None) -> bool:
        """True if every tensor is finite, the same answer on every rank. Else stop the run (`NumericalFault`
        naming the first bad quantity among `suspects`, inputs looked at only after a failure, and the tensors),
        or, with `on_nan="skip"` and `can_skip`, count a skipped update and return False. `finite`: this rank's
        answer, already computed (`faults.all_finite`, e.g. in a compiled graph)."""
        ok = finite_now(tensors) if finite is None else bool(finite)
        if self.trainer.world_size > 1:
            ok = self.trainer.strategy.reduce_boolean_decision(ok, all=True)
        if ok:
            return True
        if can_skip and self.on_nan == "skip":
            self.faults["skipped_updates"] += 1
            return False
        name = first_nonfinite({**(suspects or {}), **tensors}) or "a quantity on another rank"
        raise NumericalFault(f"non-finite {name} at frame {self.global_frames}; stopped, the last good checkpoint "
                             f"is kept (faults.on_nan=skip skips such updates instead)")

    def optimizer_step(self, opt, loss: Tensor) -> None:
        """zero_grad, manual_backward (DDP-averaged gradients), step."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    @functools.cached_property
    def parameter_tensors(self) -> dict[str, Tensor]:
        """Every parameter (networks, targets, anchors) by its name in fault messages; the same tensors all run."""
        return {f"parameter {k}": v for k, v in self.named_parameters()}

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters and floating-point buffers by name: what must be finite before a checkpoint is written."""
        named = dict(self.parameter_tensors)
        named |= {f"buffer {k}": v for k, v in self.named_buffers() if v.is_floating_point()}
        return named

    # ---------------------------------------------------------------- distributed
    def reduce_mean(self, t: Tensor) -> Tensor:
        """Average across ranks (identity on one process); every rank must call it in the same order."""
        if self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t.contiguous(), reduce_op="mean")

    def bin_index(self, eps: Tensor) -> Tensor:
        """Index of the nearest training-threshold bin for each eps."""
        return torch.bucketize(eps, self.eps_bin_edges)  # ties go to the lower bin

    # ---------------------------------------------------------------- logging
    def per_eps_metrics(self) -> dict[str, Tensor]:
        """Subclasses: name (`<group>/<name>`) -> `[n_bins]` tensor, logged as `<group>/<name>/eps_<eps>` for every
        threshold bin after each collection (`training_log`)."""
        return {}

    def on_metrics_logged(self) -> None:
        """Subclasses: reset what `per_eps_metrics` counts between two logs."""

    def policy_distribution(self, observation: Tensor, eps: Tensor) -> torch.distributions.Normal | None:
        """The Gaussian of the policy at these states (before any squash), for `train/policy_{std,entropy}`; None
        for a deterministic actor. Default: the actor's `(loc, scale)`, unchecked (a NaN state is left out later)."""
        with torch.no_grad():
            return torch.distributions.Normal(*self.actor(observation, eps), validate_args=False)

    @property
    def time_metrics(self) -> dict[str, float]:
        """After training: this process's `time/...` (`timing.WallClock`), for benchmarks."""
        return self.clock.metrics

    # ---------------------------------------------------------------- checkpoints and timing
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """On every rank (each rank's rollouts write their sidecar); the checkpoint is rank 0's."""
        self.check_finite(self.state_tensors(), can_skip=False)  # never overwrite a good checkpoint with NaNs
        checkpointing.save_training_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpointing.restore_training_state(self, checkpoint)
        self.fill_state_defaults(checkpoint.get("state_dict", {}))

    def fill_state_defaults(self, state_dict: dict) -> None:
        """Adds to a checkpoint's `state_dict`, in place, the buffers that checkpoints of earlier versions lack, at
        their initial values, so that those checkpoints load strictly (and pass `check_checkpoint`). None here."""

    def on_train_start(self) -> None:
        if self.rollouts is not None:
            self.rollouts.restore_rng()
        self.clock.start()

    def on_train_epoch_end(self) -> None:
        self.clock.mark_epoch(self.global_frames)  # after the evaluation callback of this epoch

    def on_train_end(self) -> None:
        self.clock.stop()
