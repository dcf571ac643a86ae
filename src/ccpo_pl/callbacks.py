"""Lightning callbacks: a progress bar with env frames and evaluation cost per threshold; a DDP sync check."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar


class FramesProgressBar(RichProgressBar):
    """Rich progress bar showing env frames, and J_c(eps) of the last evaluation for each evaluation threshold."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items["frames"] = f"{getattr(pl_module, 'global_frames', 0):,}"
        latest = getattr(pl_module, "latest_eval", {})
        if latest:
            items["eval cost"] = " ".join(f"{e:g}:{c:.1f}" for e, c in latest.items())
        return items


class DDPSyncCheck(Callback):
    """After every training batch, all-gather the module's parameters and buffers and check the ranks agree.

    Enabled with `check_sync=true`. A mismatch above `tol` raises (custom updates that bypass DDP's gradient
    all-reduce, such as dual solves or direct parameter writes, are where ranks drift apart silently).
    """

    def __init__(self, tol: float = 0.0):
        self.tol, self.checks, self.max_diff = float(tol), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flat = torch.cat([t.detach().reshape(-1).float() for t in (*pl_module.parameters(), *pl_module.buffers())])
        gathered = trainer.strategy.all_gather(flat)
        if gathered.dim() == 1:
            gathered = gathered.unsqueeze(0)
        diff = float((gathered - gathered[:1]).abs().max())
        self.checks += 1
        self.max_diff = max(self.max_diff, diff)
        if diff > self.tol:
            raise RuntimeError(f"ranks' parameters differ by {diff:.3g} after batch {batch_idx}")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"ddp_sync_checks={self.checks} max_param_diff={self.max_diff:.3g} ranks={trainer.world_size}")
