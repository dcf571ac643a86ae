"""`OnPolicyModule`: the shared base of the on-policy algorithms (CPO, PDO, TRPO, FPO, C-PPO-Lag, C-TRPO-Lag).

One `training_step` per collection (`data.OnPolicyStream`):
1. `prepare`: state values V_r(s, eps), V_c(s, eps) of the collection, GAE advantages and lambda-returns for the
   reward and for the cost signal (`cost_signal`, the env cost unless a subclass shapes it) by TorchRL's
   `vec_generalized_advantage_estimate` (Schulman et al. 2016), and the collecting policy's loc, scale and
   log-probability of each action (pi_old: the policy has not changed since it collected the batch);
2. `episode_costs`: J_c per behaviour threshold, the undiscounted episode cost the thresholds eps bound: the mean
   over episodes that ended in this collection, else (no episode ended) the mean cost per step times the episode
   length; plus, where a subclass shapes the cost, the shaping's mean per step times the episode length; a
   threshold with no data at all keeps its last estimate;
3. `fit_value`: regression of both critics on their lambda-returns, `value_epochs` passes of minibatches;
4. `policy_update(data, j_c)`: the subclass's policy step.

Distributed (DDP): every gradient is taken with `torch.autograd.grad` and averaged across ranks by `mean_grads`
(one collective per step; DDP's own hooks do not see `autograd.grad` or direct parameter writes), so the ranks'
parameters stay identical. Subclasses must average their own statistics (`reduce_mean`) the same way.
Numerical faults: a collection with NaN/inf env data stops the run or skips the update (`faults.on_nan`), and
every parameter is checked after the update.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

from ccpo_pl.algos.safe_module import SafeRLModule, eps_tag


def diag_normal_log_prob(action: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log pi(a|s) of a diagonal Gaussian policy, summed over the action dims."""
    return torch.distributions.Normal(loc, scale).log_prob(action).sum(-1)


def diag_normal_kl(loc_old: Tensor, scale_old: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """KL(pi_old || pi) of diagonal Gaussians, summed over the action dims (the trust-region distance)."""
    old = torch.distributions.Normal(loc_old, scale_old)
    return torch.distributions.kl_divergence(old, torch.distributions.Normal(loc, scale)).sum(-1)


class OnPolicyModule(SafeRLModule):
    """Shared base of the on-policy algorithms (see the module docstring).

    Args:
        actor: the policy, `forward(observation, eps) -> (loc, scale)`.
        value: the critics, `forward(observation, eps) -> (v_r, v_c)` (`nets.ValueCritic`).
        gamma: discount of reward and cost.
        gae_lambda: GAE lambda.
        lr_value: Adam step size of the critics.
        value_epochs: passes over the collection per critic fit.
        minibatch_size: transitions per critic minibatch (and the subclasses' default).
    Subclasses implement `policy_update` and may override `policy_optimizers`, `cost_signal`, `on_new_collect`.
    """

    def __init__(
        self,
        actor: nn.Module,
        value: nn.Module,
        *,
        eps_behavior: Sequence[float],
        eps_range: Sequence[float],
        eps_bin: float,
        horizon: int,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        lr_value: float = 1e-3,
        value_epochs: int = 10,
        minibatch_size: int = 512,
        **base_kwargs,
    ):
        super().__init__(eps_behavior=eps_behavior, eps_range=eps_range, eps_bin=eps_bin, horizon=horizon,
                         **base_kwargs)
        # the init arguments of this class and of the subclass that called it (nets and env factories excluded)
        self.save_hyperparameters(ignore=["actor", "value", "make_train_env", "make_eval_env"])
        self.actor, self.value = actor, value
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.lr_value, self.value_epochs, self.minibatch_size = float(lr_value), int(value_epochs), int(minibatch_size)
        # J_c per behaviour threshold: starts at the thresholds (no pressure before any data)
        self.register_buffer("j_c", torch.tensor([float(e) for e in eps_behavior]))

    #: the rollouts yield each collection whole, once (`data.OnPolicyStream`)
    on_policy = True

    def cost_signal(self, batch: TensorDictBase) -> Tensor:
        """The per-step cost the constraint is on, `[envs, steps, 1]`: the env's cost (cost shaping overrides)."""
        return batch["next", "cost"]

    # ---------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        return [torch.optim.Adam(self.value.parameters(), lr=self.lr_value), *self.policy_optimizers()]

    def policy_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of the policy (none for trust-region steps that write the parameters directly)."""
        return []

    # ---------------------------------------------------------------- the update
    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        self.on_new_data()
        if not self.rollouts.stream.clean:  # on_nan=skip (stop raised in on_new_data): no update from corrupt data
            self.faults["skipped_updates"] += 1
            return
        j_c = self.episode_costs(batch)
        data = self.prepare(batch)
        loss_value = self.fit_value(data)
        loss_policy = self.policy_update(data, j_c)
        self.check_finite(self.parameter_tensors, can_skip=False)
        if loss_value is not None and loss_policy is not None:
            self.record_update(loss_value, loss_policy, time.perf_counter() - start)

    def policy_update(self, data: TensorDictBase, j_c: Tensor) -> Tensor | None:
        """Subclass: one policy update from `prepare`'s flat `data` and the J_c estimates `[n_behavior]`; returns
        the policy loss (for logging), or None if the update was skipped."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare(self, batch: TensorDictBase) -> TensorDictBase:
        """GAE advantages and lambda-returns of reward and cost, and pi_old, for a `[envs, steps]` collection;
        returns them flat, `[envs * steps]`: observation, eps, action, adv_r, adv_c, ret_r, ret_c, loc_old,
        scale_old, log_prob_old."""
        obs, eps, nxt = batch["observation"], batch["eps"], batch["next"]
        v_r, v_c = self.value(obs, eps)
        nv_r, nv_c = self.value(nxt["observation"], eps)  # eps is constant within an episode
        done, terminated = nxt["done"], nxt["terminated"]
        adv_r, ret_r = vec_generalized_advantage_estimate(self.gamma, self.gae_lambda, v_r.unsqueeze(-1),
                                                          nv_r.unsqueeze(-1), nxt["reward"], done, terminated)
        adv_c, ret_c = vec_generalized_advantage_estimate(self.gamma, self.gae_lambda, v_c.unsqueeze(-1),
                                                          nv_c.unsqueeze(-1), self.cost_signal(batch), done,
                                                          terminated)
        loc, scale = self.actor(obs, eps)
        data = TensorDict({
            "observation": obs, "eps": eps, "action": batch["action"],
            "adv_r": adv_r.squeeze(-1), "adv_c": adv_c.squeeze(-1), "ret_r": ret_r.squeeze(-1),
            "ret_c": ret_c.squeeze(-1), "loc_old": loc, "scale_old": scale,
            "log_prob_old": diag_normal_log_prob(batch["action"], loc, scale),
        }, batch_size=batch.batch_size)
        return data.reshape(-1)

    @torch.no_grad()
    def episode_costs(self, batch: TensorDictBase) -> Tensor:
        """J_c per behaviour threshold `[n_behavior]`, averaged over ranks (see the module docstring, step 2)."""
        nxt = batch["next"]
        eps = batch["eps"].reshape(-1).float().cpu()
        done = nxt["done"].reshape(-1).bool().cpu()
        ep_cost = nxt["episode_cost"].reshape(-1).double().cpu()
        cost = nxt["cost"].reshape(-1).double().cpu()
        extra = (self.cost_signal(batch).reshape(-1).double().cpu() - cost)  # > 0 where the cost is shaped
        which = (eps[:, None] - self.eps_behavior_t[None]).abs().argmin(-1)
        n = len(self.eps_behavior_t)
        sums = torch.zeros(5, n, dtype=torch.float64)  # ended episodes: n, sum cost; steps: n, sum cost, sum extra
        sums[0].index_add_(0, which, done.double())
        sums[1].index_add_(0, which, torch.where(done, ep_cost, 0.0))
        sums[2].index_add_(0, which, torch.ones_like(cost))
        sums[3].index_add_(0, which, cost)
        sums[4].index_add_(0, which, extra)
        sums = self.reduce_mean(sums.to(self.device)).cpu()  # a mean of sums: the ratios below are unchanged
        horizon, steps = self.hparams.horizon, sums[2].clamp_min(1e-12)
        per_episode = sums[1] / sums[0].clamp_min(1e-12)
        per_step = sums[3] / steps * horizon
        estimate = torch.where(sums[0] > 0, per_episode, per_step) + sums[4] / steps * horizon
        estimate = torch.where(sums[2] > 0, estimate, self.j_c.cpu().double())
        self.j_c.copy_(estimate.to(self.j_c))
        return self.j_c.clone()

    def fit_value(self, data: TensorDictBase) -> Tensor | None:
        """Critic regression on the lambda-returns of reward and cost; the mean loss, or None if skipped."""
        opt = self.optimizer(0)
        params = list(self.value.parameters())
        total, n = torch.zeros((), device=self.device), 0
        for _ in range(self.value_epochs):
            for idx in self.minibatches(data.shape[0], self.minibatch_size):
                mb = data[idx]
                v_r, v_c = self.value(mb["observation"], mb["eps"])
                loss = F.mse_loss(v_r, mb["ret_r"]) + F.mse_loss(v_c, mb["ret_c"])
                if not self.check_finite({"value loss": loss}):
                    return None
                self.apply_grads(opt, params, self.mean_grads(loss, params))
                total, n = total + loss.detach(), n + 1
        return total / max(n, 1)

    # ---------------------------------------------------------------- helpers for subclasses
    def optimizer(self, i: int):
        """The i-th optimizer of `configure_optimizers` (0: the critics; then `policy_optimizers`)."""
        opts = self.optimizers()
        return opts[i] if isinstance(opts, list) else opts

    def minibatches(self, n: int, size: int) -> Iterator[Tensor]:
        """A random permutation of `range(n)` cut into minibatches of `size` (the last one may be shorter; one
        minibatch of everything if `size >= n`). Same count on every rank when the ranks' collections match."""
        perm = torch.randperm(n, device=self.device)
        yield from perm.split(max(1, int(size)))

    def mean_grads(self, loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
        """d loss / d params by `torch.autograd.grad`, averaged across ranks in one collective (zeros where a
        parameter does not reach the loss)."""
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if self.trainer.world_size == 1:
            return grads
        flat = self.reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
        return [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)]

    @staticmethod
    def apply_grads(opt, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        """Set `.grad` and take one optimizer step."""
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p in params:
            p.grad = None

    def log_update(self, diagnostics: dict[str, float | Tensor], per_behavior: dict[str, Tensor] | None = None) -> None:
        """Log update diagnostics (averaged over ranks, one collective) at the current frame count: scalars as
        `update/<name>`, and `[n_behavior]` tensors as `<eps tag>/<name>` per behaviour threshold."""
        names = [f"update/{k}" for k in diagnostics]
        values = [torch.as_tensor(v, dtype=torch.float64).reshape(1).cpu() for v in diagnostics.values()]
        for name, col in (per_behavior or {}).items():
            names += [f"{eps_tag(e)}/{name}" for e in self.hparams.eps_behavior]
            values.append(col.detach().double().reshape(-1).cpu())
        if not names:
            return
        flat = self.reduce_mean(torch.cat(values).to(self.device)).cpu().tolist()
        if self.logger is not None:
            self.logger.log_metrics(dict(zip(names, flat)), step=self.global_frames)
