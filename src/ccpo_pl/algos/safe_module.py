"""`SafeRLModule`: what every safe-RL algorithm module shares, below `LightningModule`.

- the training data through `rollouts` (the trainer's `data.RolloutData`): the frame and collection counters, the
  episode tallies, the health of the latest collection; the module gives it its collection policy
  (`collection_policy`) and the thresholds the training envs draw (`collection_eps`);
- numerical faults: NaN/inf in env data, replay batches, losses, duals, multipliers or parameters stops the run
  (`NumericalFault`, naming the quantity and the frame) or, with `on_nan="skip"`, skips the update and counts it;
  a checkpoint is never written from non-finite state;
- logging against environment frames: per-threshold-bin tags `eps_<eps>/...`, per behaviour threshold
  `train/eps_<eps>/episode_{reward,cost}`, losses and timings, all reduced across ranks in one collective;
- the checkpoint's training state `checkpoint["ccpo"]`: fault counts, unlogged update metrics, the threshold
  generator, rank count and wall-clock, with the data's counters and sidecar token (`RolloutData.checkpoint_state`).
Evaluation is a callback beside the module (`evaluation.PeriodicEvaluation`).
Subclasses implement `configure_optimizers`, `training_step`, `on_new_collect` and `per_eps_metrics`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ccpo_pl.checkpointing import CHECKPOINT_FORMAT
from ccpo_pl.faults import ON_NAN, NumericalFault, finite_now, first_nonfinite
from ccpo_pl.metrics import eps_tag  # the modules' tags: imported from here
from ccpo_pl.nets import EpsPolicy

if TYPE_CHECKING:
    from ccpo_pl.data import RolloutData


def threshold_bins(eps_behavior: Sequence[float], eps_range: Sequence[float], step: float) -> list[float]:
    """The training-threshold grid: `eps_range` every `step`, plus the behaviour thresholds."""
    lo, hi = float(eps_range[0]), float(eps_range[1])
    grid = np.arange(lo, hi + 1e-9, float(step)).tolist()
    return sorted({round(x, 6) for x in grid} | {float(e) for e in eps_behavior})


class SafeRLModule(L.LightningModule):
    """Shared base of the safe-RL modules (see the module docstring)."""

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
        self._seen_collects = 0
        self._acc = torch.zeros(3, dtype=torch.float64)  # critic loss, actor loss, update seconds
        self._n_updates = 0
        self.faults = {"skipped_updates": 0, "dropped_transitions": 0}  # on_nan=skip: counted, kept in checkpoints
        self._elapsed_before = 0.0
        self.time_metrics: dict[str, float] = {}  # after training: `time/...` of this process, for benchmarks
        self.timing = {"loop_s": 0.0, "eval_s": 0.0, "update_s": 0.0, "updates": 0}

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

    def on_new_data(self) -> None:
        """Call first in `training_step`: reacts once to each new collection."""
        if self.rollouts.stream.collects != self._seen_collects:
            self._seen_collects = self.rollouts.stream.collects
            self.check_env_data()
            self.on_new_collect()
            self.log_training_metrics()
            self.log_fault_counts()

    def on_new_collect(self) -> None:
        """Hook: a collection just finished (e.g. refresh the trust-region anchor)."""

    # ---------------------------------------------------------------- numerical faults
    def check_finite(self, tensors: dict[str, Tensor], can_skip: bool = True,
                     suspects: dict[str, Tensor] | None = None, finite: Tensor | None = None) -> bool:
        """True if every tensor is finite, the same answer on every rank. Else stop the run (`NumericalFault`
        naming the first bad quantity among `suspects` (inputs the tensors were computed from, only looked at
        after a failure) and the tensors, and the frame), or, with `on_nan="skip"` and `can_skip`, count a skipped
        update and return False. `finite`: that answer for this rank, already computed (`faults.all_finite` of the
        tensors, e.g. inside a compiled graph); the tensors are then only looked at after a failure."""
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

    @staticmethod
    def batch_suspects(batch) -> dict[str, Tensor]:
        """The replay-batch entries a NaN in a critic loss can come from, for `check_finite`'s message."""
        nxt = batch["next"]
        return {"batch observation": batch["observation"], "batch action": batch["action"],
                "batch next observation": nxt["observation"], "batch reward": nxt["reward"],
                "batch cost": nxt["cost"]}

    def optimizer_step(self, opt, loss: Tensor) -> None:
        """zero_grad, manual_backward (DDP-averaged gradients), step."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    def check_env_data(self) -> None:
        """After each collection: NaN/inf from the env (never stored) stops the run, or is counted (`skip`)."""
        bad = self.rollouts.stream.nonfinite
        any_bad = bool(bad)
        if self.trainer.world_size > 1:
            any_bad = self.trainer.strategy.reduce_boolean_decision(any_bad, all=False)
        if not any_bad or self.on_nan == "skip":
            return
        what = " and ".join(f"{name} ({n} transitions)" for name, n in bad.items()) or "data on another rank"
        first = f" at frame {self.rollouts.stream.nonfinite_frame * self.trainer.world_size}" if bad else ""
        raise NumericalFault(f"non-finite env {what}{first}, in the collection ending at frame {self.global_frames}; "
                             f"stopped, the last good checkpoint is kept (faults.on_nan=skip drops them instead)")

    def log_fault_counts(self) -> None:
        """With `on_nan="skip"`: `faults/skipped_updates` and `faults/dropped_transitions` (all ranks), once > 0."""
        if self.on_nan != "skip":
            return
        self.faults["dropped_transitions"] += self.rollouts.stream.dropped
        self.rollouts.stream.dropped = 0
        counts = torch.tensor([self.faults["skipped_updates"], self.faults["dropped_transitions"]], dtype=torch.float64)
        if self.trainer.world_size > 1:  # skipped updates are identical on every rank, dropped transitions summed
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
            counts[0] /= self.trainer.world_size
        if counts.sum() > 0 and self.logger is not None:
            self.logger.log_metrics({"faults/skipped_updates": float(counts[0]),
                                     "faults/dropped_transitions": float(counts[1])}, step=self.global_frames)

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
    def record_update(self, loss_critic: Tensor, loss_actor: Tensor, seconds: float) -> None:
        self._acc += torch.tensor([float(loss_critic), float(loss_actor), seconds], dtype=torch.float64)
        self._n_updates += 1
        self.timing["update_s"] += seconds
        self.timing["updates"] += 1

    def per_eps_metrics(self) -> dict[str, Tensor]:
        """Subclasses: name -> `[n_bins]` tensor, logged as `eps_<eps>/<name>` for every bin, or as the name with
        `{eps}` replaced by `eps_<eps>` where it holds that placeholder."""
        return {}

    def on_metrics_logged(self) -> None:
        """Subclasses: reset what `per_eps_metrics` counts between two logs."""

    @staticmethod
    def per_eps_tag(name: str, eps: float) -> str:
        """The tag of metric `name` of `per_eps_metrics` at threshold bin `eps`."""
        return name.format(eps=eps_tag(eps)) if "{eps}" in name else f"{eps_tag(eps)}/{name}"

    def log_training_metrics(self) -> None:
        """Reduce a fixed set of metrics across ranks in one collective and log them at the global frame count."""
        names, values = [], []
        for name, col in self.per_eps_metrics().items():
            names += [self.per_eps_tag(name, e) for e in self.eps_bins]
            values.append(col.detach().double().cpu())
        episodes = self.rollouts.stream.pop_episode_stats()  # [n_beh, 3] n, sum R, sum C
        n_upd = max(self._n_updates, 1)
        scalars = torch.tensor([self._acc[0] / n_upd, self._acc[1] / n_upd, 1e3 * self._acc[2] / n_upd,
                                self.rollouts.stream.collect_seconds, self._acc[2], float(self._n_updates)],
                               dtype=torch.float64)
        flat = torch.cat(values + [episodes.flatten(), scalars]).to(self.device)
        if self.trainer.world_size > 1:
            flat = self.trainer.strategy.reduce(flat.float(), reduce_op="sum").double() / self.trainer.world_size
        flat = flat.cpu()
        n_named = len(names)
        metrics = dict(zip(names, flat[:n_named].tolist()))
        ep = flat[n_named:n_named + episodes.numel()].view(-1, 3)
        for e, (n, r, c) in zip(self.hparams.eps_behavior, ep.tolist()):
            if n > 0:
                metrics[f"train/{eps_tag(e)}/episode_reward"] = r / n
                metrics[f"train/{eps_tag(e)}/episode_cost"] = c / n
        loss_c, loss_a, ms, collect_s, update_s, n = flat[n_named + episodes.numel():].tolist()
        if n > 0:  # a cycle with updates (the first collection after a start has none)
            frames = self.rollouts.stream.frames_per_collect * self.trainer.world_size
            metrics.update({"loss/critic": loss_c, "loss/actor": loss_a, "time/update_ms": ms,
                            "time/env_steps_per_s": frames / (collect_s + update_s)})
        metrics["train/frames"] = float(self.global_frames)
        self.rollouts.stream.collect_seconds = 0.0
        self._acc.zero_()
        self._n_updates = 0
        self.on_metrics_logged()
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_frames)

    # ---------------------------------------------------------------- checkpoints and timing
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Runs on every rank: each rank's rollouts write their sidecar; the checkpoint (rank 0's) records the
        training state and the shared sidecar token."""
        self.check_finite(self.state_tensors(), can_skip=False)  # never overwrite a good checkpoint with NaNs
        data = self.rollouts.checkpoint_state() if self.rollouts is not None else {
            "stream": {"frames": 0, "collects": 0}, "sidecar": f"{0:013d}"}
        checkpoint["ccpo"] = {
            "format_version": CHECKPOINT_FORMAT,
            "faults": dict(self.faults),
            # update metrics not logged yet (they are logged after the next collection): a resumed run logs them
            "pending_log": {"acc": self._acc.clone(), "n_updates": self._n_updates},
            "stream": data["stream"],
            "eps_generator": self.eps_generator.get_state(),
            "sidecar": data["sidecar"],
            "world_size": self.trainer.world_size,
            "elapsed_s": self._elapsed_s(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("ccpo")
        if state is None:
            raise ValueError("checkpoint has no 'ccpo' training state; it was not written by ccpo_pl.fit")
        if state["world_size"] != self.trainer.world_size:
            raise ValueError(f"checkpoint was written with {state['world_size']} ranks, this run has "
                             f"{self.trainer.world_size}; resume with the same trainer.devices x trainer.num_nodes")
        self._seen_collects = int(state["stream"]["collects"])
        self.faults.update(state.get("faults", {}))
        if "pending_log" in state:
            self._acc, self._n_updates = state["pending_log"]["acc"].clone(), int(state["pending_log"]["n_updates"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self.eps_generator.set_state(state["eps_generator"])
        if self.rollouts is not None:
            # the sidecars live next to the checkpoint being loaded (which may belong to another run: ckpt_path=...)
            self.rollouts.restore(state, getattr(self.trainer, "ckpt_path", None))

    def on_train_start(self) -> None:
        if self.rollouts is not None:
            self.rollouts.restore_rng()
        self._loop_start = time.perf_counter()
        self._epoch_marks: list[tuple[float, ...]] = []

    def on_train_epoch_end(self) -> None:
        t = self.timing  # after the evaluation callback of this epoch
        self._epoch_marks.append((self.global_frames, time.perf_counter() - self._loop_start, t["eval_s"],
                                  t["update_s"], t["updates"]))

    def _elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, over every process that worked on this run (resumes add up)."""
        start = getattr(self, "_loop_start", None)
        return self._elapsed_before + (0.0 if start is None else time.perf_counter() - start)

    def on_train_end(self) -> None:
        """Wall-clock of this process's training loop (collection + updates + evaluation), for benchmarks."""
        self.timing["loop_s"] = time.perf_counter() - self._loop_start
        self.time_metrics = {f"time/{k}": float(v) for k, v in self.timing.items()}
        if len(self._epoch_marks) >= 2:  # steady state: after the first epoch (one-off compilation, warm-up)
            (f0, t0, e0, u0, n0), (f1, t1, e1, u1, n1) = self._epoch_marks[0], self._epoch_marks[-1]
            self.time_metrics["time/steady_env_steps_per_s"] = (f1 - f0) / ((t1 - t0) - (e1 - e0))
            self.time_metrics["time/steady_update_ms"] = 1e3 * (u1 - u0) / max(n1 - n0, 1)
