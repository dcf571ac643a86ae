"""What the on-policy algorithms (CPO and its variants, C-PPO-Lag, C-TRPO-Lag) compute from one collection, as
functions of the collection and of the module that runs them.

Per collection (`data.OnPolicyStream`), in this order:
1. `episode_costs`: J_c per behaviour threshold, the undiscounted episode cost the thresholds eps bound: the mean
   over episodes that ended in this collection, else (no episode ended) the mean cost per step times the episode
   length; plus, where the cost is shaped, the shaping's mean per step times the episode length; a threshold with
   no data at all keeps its last estimate;
2. `advantages`: state values V_r(s, eps), V_c(s, eps) of the collection, GAE advantages and lambda-returns for the
   reward and for the cost signal by TorchRL's `vec_generalized_advantage_estimate` (Schulman et al. 2016), and the
   collecting policy's loc, scale and log-probability of each action (pi_old: the policy has not changed since it
   collected the batch);
3. `fit_value`: regression of both critics on their lambda-returns, `value_epochs` passes of minibatches;
then the algorithm's own policy step.

Distributed (DDP): every gradient is taken with `torch.autograd.grad` and averaged across ranks by `mean_grads`
(one collective per step; DDP's own hooks do not see `autograd.grad` or direct parameter writes), so the ranks'
parameters stay identical; statistics are averaged with the module's `reduce_mean` the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.algos.trust_region import diag_normal_kl, diag_normal_log_prob
from ccpo_pl.nets import nearest_threshold
from ccpo_pl.training_log import per_eps_tag

__all__ = ["advantages", "apply_grads", "attach", "diag_normal_kl", "diag_normal_log_prob", "end_update",
           "episode_costs", "fit_value", "log_update", "mean_grads", "minibatches", "new_collection",
           "optimizer"]


def attach(module: SafeRLModule, actor: nn.Module, value: nn.Module, eps_behavior: Sequence[float], *,
           gamma: float, gae_lambda: float, lr_value: float, value_epochs: int, minibatch_size: int) -> None:
    """The on-policy state of `module`: `actor`, the critics `value`, the GAE and critic-fit settings, and the
    buffer `j_c` of J_c per behaviour threshold (it starts at the thresholds: no pressure before any data)."""
    module.actor, module.value = actor, value
    module.gamma, module.gae_lambda = float(gamma), float(gae_lambda)
    module.lr_value, module.value_epochs = float(lr_value), int(value_epochs)
    module.minibatch_size = int(minibatch_size)
    module.register_buffer("j_c", torch.tensor([float(e) for e in eps_behavior]))


def new_collection(module: SafeRLModule, batch: TensorDictBase | None = None) -> bool:
    """Call first in `training_step`: `module.on_new_data(batch)` (the collection `batch`: the states the policy's
    spread is logged on; without it none is logged), then whether the collection may be learned from (False,
    counted as a skipped update, where `faults.on_nan=skip` dropped corrupt env data)."""
    module.on_new_data(batch)
    if not module.rollouts.stream.clean:  # on_nan=skip (stop raised in on_new_data): no update from corrupt data
        module.faults["skipped_updates"] += 1
        return False
    return True


def end_update(module: SafeRLModule, start: float, loss_value: Tensor | None, loss_policy: Tensor | None) -> None:
    """After the policy step: every parameter must be finite (else the run stops); the losses and the update's
    seconds since `start` are recorded unless a step was skipped."""
    module.check_finite(module.parameter_tensors, can_skip=False)
    if loss_value is not None and loss_policy is not None:
        module.training_log.record_update(loss_value, loss_policy, time.perf_counter() - start)


@torch.no_grad()
def advantages(batch: TensorDictBase, actor, value, cost: Tensor, gamma: float, gae_lambda: float) -> TensorDictBase:
    """GAE advantages and lambda-returns of reward and `cost` (`[envs, steps, 1]`, the constrained cost signal), and
    pi_old, for a `[envs, steps]` collection; returns them flat, `[envs * steps]`: observation, eps, action, adv_r,
    adv_c, ret_r, ret_c, loc_old, scale_old, log_prob_old."""
    obs, eps, nxt = batch["observation"], batch["eps"], batch["next"]
    v_r, v_c = value(obs, eps)
    nv_r, nv_c = value(nxt["observation"], eps)  # eps is constant within an episode
    done, terminated = nxt["done"], nxt["terminated"]
    adv_r, ret_r = vec_generalized_advantage_estimate(gamma, gae_lambda, v_r.unsqueeze(-1), nv_r.unsqueeze(-1),
                                                      nxt["reward"], done, terminated)
    adv_c, ret_c = vec_generalized_advantage_estimate(gamma, gae_lambda, v_c.unsqueeze(-1), nv_c.unsqueeze(-1), cost,
                                                      done, terminated)
    loc, scale = actor(obs, eps)
    data = TensorDict({
        "observation": obs, "eps": eps, "action": batch["action"],
        "adv_r": adv_r.squeeze(-1), "adv_c": adv_c.squeeze(-1), "ret_r": ret_r.squeeze(-1),
        "ret_c": ret_c.squeeze(-1), "loc_old": loc, "scale_old": scale,
        "log_prob_old": diag_normal_log_prob(batch["action"], loc, scale),
    }, batch_size=batch.batch_size)
    return data.reshape(-1)


@torch.no_grad()
def episode_costs(module: SafeRLModule, batch: TensorDictBase, cost: Tensor, j_c: Tensor) -> Tensor:
    """J_c per behaviour threshold `[n_behavior]` (module docstring, step 1) from a collection, its constrained cost
    signal `cost` and the last estimates `j_c` (updated in place), averaged over ranks."""
    nxt = batch["next"]
    eps = batch["eps"].reshape(-1).float().cpu()
    done = nxt["done"].reshape(-1).bool().cpu()
    ep_cost = nxt["episode_cost"].reshape(-1).double().cpu()
    env_cost = nxt["cost"].reshape(-1).double().cpu()
    extra = cost.reshape(-1).double().cpu() - env_cost  # > 0 where the cost is shaped
    which = nearest_threshold(eps, module.eps_behavior_t)
    n = len(module.eps_behavior_t)
    sums = torch.zeros(5, n, dtype=torch.float64)  # ended episodes: n, sum cost; steps: n, sum cost, sum extra
    sums[0].index_add_(0, which, done.double())
    sums[1].index_add_(0, which, torch.where(done, ep_cost, 0.0))
    sums[2].index_add_(0, which, torch.ones_like(env_cost))
    sums[3].index_add_(0, which, env_cost)
    sums[4].index_add_(0, which, extra)
    sums = module.reduce_mean(sums.to(module.device)).cpu()  # a mean of sums: the ratios below are unchanged
    horizon, steps = module.hparams.horizon, sums[2].clamp_min(1e-12)
    per_episode = sums[1] / sums[0].clamp_min(1e-12)
    per_step = sums[3] / steps * horizon
    estimate = torch.where(sums[0] > 0, per_episode, per_step) + sums[4] / steps * horizon
    estimate = torch.where(sums[2] > 0, estimate, j_c.cpu().double())
    j_c.copy_(estimate.to(j_c))
    return j_c.clone()


def fit_value(module: SafeRLModule, value, opt, data: TensorDictBase, epochs: int,
              minibatch_size: int) -> Tensor | None:
    """Critic regression on the lambda-returns of reward and cost; the mean loss, or None if skipped."""
    params = list(value.parameters())
    total, n = torch.zeros((), device=module.device), 0
    for _ in range(epochs):
        for idx in minibatches(data.shape[0], minibatch_size, module.device):
            mb = data[idx]
            v_r, v_c = value(mb["observation"], mb["eps"])
            loss = F.mse_loss(v_r, mb["ret_r"]) + F.mse_loss(v_c, mb["ret_c"])
            if not module.check_finite({"value loss": loss}):
                return None
            apply_grads(opt, params, mean_grads(module, loss, params))
            total, n = total + loss.detach(), n + 1
    return total / max(n, 1)


def optimizer(module: SafeRLModule, i: int):
    """The i-th optimizer of `configure_optimizers` (0: the critics; then the policy's)."""
    opts = module.optimizers()
    return opts[i] if isinstance(opts, list) else opts


def minibatches(n: int, size: int, device) -> Iterator[Tensor]:
    """A random permutation of `range(n)` cut into minibatches of `size` (the last one may be shorter; one
    minibatch of everything if `size >= n`). Same count on every rank when the ranks' collections match."""
    perm = torch.randperm(n, device=device)
    yield from perm.split(max(1, int(size)))


def mean_grads(module: SafeRLModule, loss: Tensor, params: Sequence[Tensor],
               retain_graph: bool = False) -> list[Tensor]:
    """d loss / d params by `torch.autograd.grad`, averaged across ranks in one collective (zeros where a
    parameter does not reach the loss)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    if module.trainer.world_size == 1:
        return grads
    flat = module.reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
    return [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)]


def apply_grads(opt, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Set `.grad` and take one optimizer step."""
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    for p in params:
        p.grad = None


def log_update(module: SafeRLModule, diagnostics: dict[str, float | Tensor],
               per_behavior: dict[str, Tensor] | None = None) -> None:
    """Log update diagnostics (averaged over ranks, one collective) at the current frame count: scalars as
    `update/<name>`, and `[n_behavior]` tensors as `update/<name>/eps_<eps>` per behaviour threshold."""
    names = [f"update/{k}" for k in diagnostics]
    values = [torch.as_tensor(v, dtype=torch.float64).reshape(1).cpu() for v in diagnostics.values()]
    for name, col in (per_behavior or {}).items():
        names += [per_eps_tag(f"update/{name}", e) for e in module.hparams.eps_behavior]
        values.append(col.detach().double().reshape(-1).cpu())
    if not names:
        return
    flat = module.reduce_mean(torch.cat(values).to(module.device)).cpu().tolist()
    if module.logger is not None:
        module.logger.log_metrics(dict(zip(names, flat)), step=module.global_frames)
