"""`SafeRLModule`: what every safe-RL algorithm module shares, below `LightningModule`.

- the train iterable (`data.OffPolicyStream`) built inside each rank, envs seeded per rank and per resume;
- per-rank seeding once the process group is up (Lightning's `seed_everything` gives every rank the same stream);
- checkpoint extras: frame counters, the threshold generator, and per-rank sidecars (replay buffer + RNG states);
- numerical faults: NaN/inf in env data, replay batches, losses, duals, multipliers or parameters stops the run
  (`NumericalFault`, naming the quantity and the frame) or, with `on_nan="skip"`, skips the update and counts it;
  a checkpoint is never written from non-finite state;
- logging against environment frames: per-threshold-bin tags `eps_<eps>/...`, per behaviour threshold
  `train/eps_<eps>/episode_{reward,cost}`, losses and timings, all reduced across ranks in one collective;
- periodic deterministic evaluation on the evaluation grid: `eval/eps_<eps>/{reward,cost,cv}`, the paper's
  averages `eval/avg_{reward,cv}` and over unseen thresholds `eval/avg_{reward,cv}_unseen`, the J(eps) plot as the
  image `eval/curves`, and a custom-scalar layout that puts all thresholds' curves of a quantity on one chart;
Subclasses implement `configure_optimizers`, `training_step`, `on_new_collect` and `per_eps_metrics`; on-policy
ones (`algos.onpolicy.OnPolicyModule`) replace the stream through `make_stream`.
"""

from __future__ import annotations

import functools
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchrl.envs import EnvBase

from ccpo_pl.checkpointing import CHECKPOINT_FORMAT, Sidecars, rng_state, set_rng_state
from ccpo_pl.data import OffPolicyStream
from ccpo_pl.evaluation import plot_curves, rollout_episodes
from ccpo_pl.faults import ON_NAN, NumericalFault, finite_now, first_nonfinite
from ccpo_pl.metrics import cost_violation, cost_violation_per_episode, seen_mask, summarize
from ccpo_pl.nets import EpsPolicy


def eps_tag(eps: float) -> str:
    """`eps_20`, `eps_12.5`: the TensorBoard group of a threshold."""
    return f"eps_{float(eps):g}"


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
        eps_eval: Sequence[float],
        horizon: int,
        make_train_env: Callable[[int], EnvBase] | None = None,
        make_eval_env: Callable[[int], EnvBase] | None = None,
        stream: dict | None = None,
        seed: int = 0,
        eval_every: int = 1,
        eval_episodes: int = 1,
        max_epochs: int = 1,
        sidecar_dir: str | None = None,
        keep_buffers: int = 2,
        run_config: dict | None = None,
        on_nan: str = "stop",
        total_frames: int | None = None,
    ):
        super().__init__()
        if on_nan not in ON_NAN:
            raise ValueError(f"faults.on_nan={on_nan!r} is not allowed; use {' or '.join(ON_NAN)}")
        self.automatic_optimization = False
        self.on_nan = on_nan
        self.make_train_env, self.make_eval_env = make_train_env, make_eval_env
        self.eps_behavior_t = torch.tensor([float(e) for e in eps_behavior])
        self.eps_range = (float(eps_range[0]), float(eps_range[1]))
        self.eps_eval = [float(e) for e in eps_eval]
        self.eps_bins = threshold_bins(eps_behavior, eps_range, eps_bin)
        bins_t = torch.tensor(self.eps_bins)
        self.register_buffer("eps_bin_edges", (bins_t[1:] + bins_t[:-1]) / 2, persistent=False)  # midpoints
        self.eps_generator = torch.Generator().manual_seed(int(seed))  # identical on every rank
        self.stream: OffPolicyStream | None = None
        self._envs: dict[str, EnvBase] = {}  # a plain dict: envs are nn.Modules and must stay out of state_dict
        self._seen_collects = 0
        self._acc = torch.zeros(3, dtype=torch.float64)  # critic loss, actor loss, update seconds
        self._n_updates = 0
        self._resume: dict | None = None
        self._sidecar: dict | None = None
        self._sidecar_written: str | None = None
        self._resumed_token: str | None = None
        self.faults = {"skipped_updates": 0, "dropped_transitions": 0}  # on_nan=skip: counted, kept in checkpoints
        self._elapsed_before = 0.0
        self.latest_eval: dict[float, float] = {}
        self.final_metrics: dict[str, float] = {}
        self.timing = {"loop_s": 0.0, "eval_s": 0.0, "update_s": 0.0, "updates": 0}

    # ---------------------------------------------------------------- data
    def setup(self, stage: str) -> None:
        L.seed_everything(self.hparams.seed + self.global_rank, verbose=False)

    def make_stream(self) -> OffPolicyStream:
        """The train iterable (built once, inside the rank): a replay stream here; on-policy modules override."""
        return OffPolicyStream(self._seeded_train_env, EpsPolicy(self.actor), device=self.device,
                               eps_behavior=self.hparams.eps_behavior, **self.hparams.stream)

    def train_dataloader(self) -> OffPolicyStream:
        if self.stream is None:
            self.stream = self.make_stream()
            if self._resume is not None:
                self.stream.load_state_dict(self._resume["stream"])
                self._seen_collects = self.stream.collects
            if self._sidecar is not None:
                try:
                    self.stream.load_buffer_state(self._sidecar.pop("buffer"))  # not kept twice in memory
                    set_rng_state(self._sidecar["rng"])  # tried here; set for good at on_train_start
                except Exception as err:  # noqa: BLE001 - another run's buffer (other sizes), damaged states
                    self._sidecar = None
                    self.stream.close()
                    self.stream = self.make_stream()
                    self.stream.load_state_dict(self._resume["stream"])
                    self._warn_sidecar(f"a replay-buffer sidecar that does not fit this run ({type(err).__name__})")
        return self.stream

    def _seeded_train_env(self) -> EnvBase:
        """This rank's envs, seeded from (seed, rank, collections so far): distinct per rank and after a resume."""
        collects = self.stream.collects if self.stream is not None else 0
        env_seed = int(np.random.SeedSequence([self.hparams.seed, self.global_rank, collects]).generate_state(1)[0])
        return self.make_train_env(seed=env_seed % (2**31 - 1))

    @property
    def global_frames(self) -> int:
        return 0 if self.stream is None else self.stream.frames * self.trainer.world_size

    def on_new_data(self) -> None:
        """Call first in `training_step`: reacts once to each new collection."""
        if self.stream.collects != self._seen_collects:
            self._seen_collects = self.stream.collects
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
        bad = self.stream.nonfinite
        any_bad = bool(bad)
        if self.trainer.world_size > 1:
            any_bad = self.trainer.strategy.reduce_boolean_decision(any_bad, all=False)
        if not any_bad or self.on_nan == "skip":
            return
        what = " and ".join(f"{name} ({n} transitions)" for name, n in bad.items()) or "data on another rank"
        first = f" at frame {self.stream.nonfinite_frame * self.trainer.world_size}" if bad else ""
        raise NumericalFault(f"non-finite env {what}{first}, in the collection ending at frame {self.global_frames}; "
                             f"stopped, the last good checkpoint is kept (faults.on_nan=skip drops them instead)")

    def log_fault_counts(self) -> None:
        """With `on_nan="skip"`: `faults/skipped_updates` and `faults/dropped_transitions` (all ranks), once > 0."""
        if self.on_nan != "skip":
            return
        self.faults["dropped_transitions"] += self.stream.dropped
        self.stream.dropped = 0
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
        episodes = self.stream.pop_episode_stats()  # [n_beh, 3] n, sum R, sum C
        n_upd = max(self._n_updates, 1)
        scalars = torch.tensor([self._acc[0] / n_upd, self._acc[1] / n_upd, 1e3 * self._acc[2] / n_upd,
                                self.stream.collect_seconds, self._acc[2], float(self._n_updates)],
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
            frames = self.stream.frames_per_collect * self.trainer.world_size
            metrics.update({"loss/critic": loss_c, "loss/actor": loss_a, "time/update_ms": ms,
                            "time/env_steps_per_s": frames / (collect_s + update_s)})
        metrics["train/frames"] = float(self.global_frames)
        self.stream.collect_seconds = 0.0
        self._acc.zero_()
        self._n_updates = 0
        self.on_metrics_logged()
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_frames)

    # ---------------------------------------------------------------- evaluation
    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if epoch % self.hparams.eval_every == 0 or epoch >= self.hparams.max_epochs:
            self.evaluate()
        t = self.timing
        self._epoch_marks.append((self.global_frames, time.perf_counter() - self._loop_start, t["eval_s"],
                                  t["update_s"], t["updates"]))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Deterministic episodes on the evaluation grid; logs the per-threshold metrics, the averages and the plot."""
        start = time.perf_counter()
        episodes = self.hparams.eval_episodes
        eval_seed = self.hparams.seed + 10_000 * (1 + self.global_rank)
        if "eval" not in self._envs:
            self._envs["eval"] = self.make_eval_env(seed=eval_seed)
        # Same start states at every evaluation; the training RNG streams (torch and numpy's global one, which
        # bullet-safety-gym draws from) continue afterwards as if no evaluation had happened.
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            self._envs["eval"].set_seed(eval_seed)
            ep_r, ep_c, _ = rollout_episodes(self._envs["eval"], EpsPolicy(self.actor), self.hparams.horizon)
        np.random.set_state(np_state)
        n_eps = len(self.eps_eval)
        eps = torch.tensor(self.eps_eval, dtype=torch.float64)
        ep_c = ep_c.view(n_eps, episodes).double()
        stats = torch.stack([ep_r.view(n_eps, episodes).double().mean(1), ep_c.mean(1),
                             cost_violation_per_episode(ep_c, eps)], 0)
        stats = self.reduce_mean(stats.to(self.device)).cpu().double()
        reward, cost = stats[0].tolist(), stats[1].tolist()
        cv = cost_violation(stats[1], eps).tolist()
        metrics = {}
        for i, e in enumerate(self.eps_eval):
            metrics |= {f"eval/{eps_tag(e)}/reward": reward[i], f"eval/{eps_tag(e)}/cost": cost[i],
                        f"eval/{eps_tag(e)}/cv": cv[i]}
        summary = summarize(reward, cv, seen_mask(self.eps_eval, self.hparams.eps_behavior), stats[2].tolist())
        metrics |= {f"eval/{k}": v for k, v in summary.items() if not math.isnan(v)}
        self.latest_eval = dict(zip(self.eps_eval, cost))
        self.final_metrics = metrics | {"train/frames": float(self.global_frames)}
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_frames)
            self._log_curves({"eps": self.eps_eval, "reward_mean": reward, "cost_mean": cost})
        self.timing["eval_s"] += time.perf_counter() - start
        return metrics

    def _log_curves(self, stats: dict) -> None:
        """The J(eps) plot of this evaluation as a TensorBoard image (`eval/curves`), rank 0 only."""
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(writer, "add_figure"):
            fig = plot_curves(stats, self.hparams.eps_behavior, f"{self.global_frames} frames")
            writer.add_figure("eval/curves", fig, global_step=self.global_frames, close=False)

    def _log_layout(self) -> None:
        """TensorBoard custom scalars: every threshold's curve of a quantity on one chart (rank 0 only)."""
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(writer, "add_custom_scalars"):
            return
        multi = lambda pattern: ["Multiline", [pattern]]  # noqa: E731 - a TensorBoard regex over tags
        layout = {
            "eval: all thresholds": {
                "J_c(eps): episode cost": multi(r"eval/eps_[^/]+/cost"),
                "J_r(eps): episode reward": multi(r"eval/eps_[^/]+/reward"),
                "CV(eps) = max(0, J_c - eps)": multi(r"eval/eps_[^/]+/cv"),
                "Avg. CV and Avg. CV-G": multi(r"eval/avg_cv.*"),
                "Avg. R and Avg. R-G": multi(r"eval/avg_reward.*"),
            },
            "train: behaviour thresholds": {
                "episode cost": multi(r"train/eps_[^/]+/episode_cost"),
                "episode reward": multi(r"train/eps_[^/]+/episode_reward"),
            },
            "per threshold bin": {name.replace("/{eps}", ""): multi(re.escape(self.per_eps_tag(name, 0.0)).replace(
                "eps_0", r"eps_[^/]+") + "$") for name in self.per_eps_metrics()},
        }
        writer.add_custom_scalars(layout)

    # ---------------------------------------------------------------- checkpoints
    def _sidecars(self, directory: str | None = None) -> Sidecars:
        return Sidecars(directory or self.hparams.sidecar_dir, self.global_rank, self.hparams.keep_buffers)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Runs on every rank: each writes its sidecar; the checkpoint (rank 0's) records the shared token."""
        self.check_finite(self.state_tensors(), can_skip=False)  # never overwrite a good checkpoint with NaNs
        token = f"{self.global_frames:013d}"
        # last.ckpt and a periodic checkpoint of the same epoch share one sidecar: write it once
        if self.stream is not None and self.hparams.sidecar_dir and token != self._sidecar_written:
            # the previous checkpoint (written, or resumed from) keeps its sidecar until this one is in place
            protect = self._sidecar_written or self._resumed_token
            self._sidecars().save(token, {"buffer": self.stream.buffer_state(), "rng": rng_state()}, protect=protect)
            self._sidecar_written = token
        checkpoint["ccpo"] = {
            "format_version": CHECKPOINT_FORMAT,
            "faults": dict(self.faults),
            # update metrics not logged yet (they are logged after the next collection): a resumed run logs them
            "pending_log": {"acc": self._acc.clone(), "n_updates": self._n_updates},
            "stream": self.stream.state_dict() if self.stream is not None else {"frames": 0, "collects": 0},
            "eps_generator": self.eps_generator.get_state(),
            "sidecar": token,
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
        self._resume = state
        self._resumed_token = state["sidecar"]
        self.faults.update(state.get("faults", {}))
        if "pending_log" in state:
            self._acc, self._n_updates = state["pending_log"]["acc"].clone(), int(state["pending_log"]["n_updates"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self.eps_generator.set_state(state["eps_generator"])
        # the sidecars live next to the checkpoint being loaded (which may belong to another run: ckpt_path=...)
        ckpt_path = getattr(self.trainer, "ckpt_path", None)
        directory = str(Path(ckpt_path).parent / "sidecars") if ckpt_path else self.hparams.sidecar_dir
        try:
            self._sidecar = self._sidecars(directory).load(state["sidecar"]) if directory else None
            problem = "no replay-buffer sidecar"
        except Exception as err:  # noqa: BLE001 - corrupt or foreign: never fatal, never executed (weights_only)
            self._sidecar, problem = None, f"an unreadable replay-buffer sidecar ({type(err).__name__})"
        if self._sidecar is not None and not _sidecar_layout_ok(self._sidecar):
            self._sidecar, problem = None, "a replay-buffer sidecar of another structure"
        if self._sidecar is None:
            self._warn_sidecar(f"{problem} for checkpoint token {state['sidecar']}")

    def _warn_sidecar(self, problem: str) -> None:
        warnings.warn(f"{problem} on rank {self.global_rank}: resuming with an empty buffer and fresh RNG states",
                      stacklevel=3)

    def on_train_start(self) -> None:
        if self._sidecar is not None:
            set_rng_state(self._sidecar["rng"])
            self._sidecar = None
        self._loop_start = time.perf_counter()
        self._epoch_marks: list[tuple[float, ...]] = []
        self._log_layout()

    def _elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, over every process that worked on this run (resumes add up)."""
        start = getattr(self, "_loop_start", None)
        return self._elapsed_before + (0.0 if start is None else time.perf_counter() - start)

    def on_train_end(self) -> None:
        """Wall-clock of this process's training loop (collection + updates + evaluation), for benchmarks."""
        self.timing["loop_s"] = time.perf_counter() - self._loop_start
        self.final_metrics.update({f"time/{k}": float(v) for k, v in self.timing.items()})
        if len(self._epoch_marks) >= 2:  # steady state: after the first epoch (one-off compilation, warm-up)
            (f0, t0, e0, u0, n0), (f1, t1, e1, u1, n1) = self._epoch_marks[0], self._epoch_marks[-1]
            self.final_metrics["time/steady_env_steps_per_s"] = (f1 - f0) / ((t1 - t0) - (e1 - e0))
            self.final_metrics["time/steady_update_ms"] = 1e3 * (u1 - u0) / max(n1 - n0, 1)

    def teardown(self, stage: str) -> None:
        if self.stream is not None:
            self.stream.close()
        for env in self._envs.values():
            env.close(raise_if_closed=False)
        self._envs.clear()


def _sidecar_layout_ok(sidecar) -> bool:
    """The structure `on_save_checkpoint` writes: {"buffer": dict, "rng": {"torch", "numpy", "python"}}."""
    return (isinstance(sidecar, dict) and isinstance(sidecar.get("buffer"), dict)
            and isinstance(sidecar.get("rng"), dict) and {"torch", "numpy", "python"} <= sidecar["rng"].keys())
