"""The on-policy functions (`algos.onpolicy`): J_c estimates, GAE inputs, rank-averaged gradients, and a tiny
policy-gradient module written with them, trained, checkpointed, resumed and evaluated through the real trainer."""

from __future__ import annotations

import math
import time

import pytest
import torch
from tensordict import TensorDict

from ccpo_pl.algos import onpolicy, registry
from ccpo_pl.algos.onpolicy import diag_normal_kl, diag_normal_log_prob
from ccpo_pl.algos.safe_module import SafeRLModule
from ccpo_pl.checkpointing import safe_load
from ccpo_pl.evaluation import evaluate_thresholds, load_policy
from ccpo_pl.fit import fit
from ccpo_pl.nets import EpsActor, ValueCritic, make_actor, make_policy


class PolicyGradient(SafeRLModule):
    """The simplest on-policy module: per collection J_c, GAE and the critic fit of `algos.onpolicy`, then one Adam
    step on -E[log pi * (A_r - A_c)]."""

    def __init__(self, actor, value, *, eps_behavior, value_epochs=10, minibatch_size=512, **kwargs):
        super().__init__(eps_behavior=eps_behavior, **kwargs)
        self.save_hyperparameters(ignore=["actor", "value", "make_train_env", "make_eval_env"])
        onpolicy.attach(self, actor, value, eps_behavior, gamma=0.99, gae_lambda=0.95, lr_value=1e-3,
                        value_epochs=value_epochs, minibatch_size=minibatch_size)

    def make_stream(self):
        return onpolicy.make_stream(self)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.value.parameters(), lr=self.lr_value),
                torch.optim.Adam(self.actor.parameters(), lr=1e-3)]

    def training_step(self, batch, batch_idx):
        start = time.perf_counter()
        if onpolicy.new_collection(self):
            j_c = onpolicy.episode_costs(self, batch, batch["next", "cost"], self.j_c)
            data = onpolicy.advantages(batch, self.actor, self.value, batch["next", "cost"], 0.99, 0.95)
            critic_opt, actor_opt = self.optimizers()
            loss_value = onpolicy.fit_value(self, self.value, critic_opt, data, self.value_epochs, self.minibatch_size)
            loc, scale = self.actor(data["observation"], data["eps"])
            loss = -(diag_normal_log_prob(data["action"], loc, scale) * (data["adv_r"] - data["adv_c"])).mean()
            params = list(self.actor.parameters())
            onpolicy.apply_grads(actor_opt, params, onpolicy.mean_grads(self, loss, params))
            onpolicy.log_update(self, {"loss": loss.detach()}, per_behavior={"j_c": j_c})
            onpolicy.end_update(self, start, loss_value, loss.detach())


def build_pg(cfg, obs_dim, act_dim, **kw):
    actor = make_actor(cfg.algo, obs_dim, act_dim, cfg.eps.range)
    return PolicyGradient(actor, ValueCritic(obs_dim, cfg.algo.hidden, cfg.eps.range), value_epochs=2,
                          minibatch_size=64, **kw)


@pytest.fixture
def pg_registered(monkeypatch):
    monkeypatch.setitem(registry.ALGOS, "test_pg", registry.AlgoSpec(build_pg, on_policy=True))


def module(eps_behavior=(20.0, 40.0), horizon=10):
    return PolicyGradient(EpsActor(3, 1, [8], (10, 70)), ValueCritic(3, [8], (10, 70)), eps_behavior=eps_behavior,
                          eps_range=(10, 70), eps_bin=5, eps_eval=[10], horizon=horizon, total_frames=100)


def rollout(eps, done, cost, ep_cost):
    """A [envs, steps] collection with the keys `episode_costs` reads."""
    shape = torch.Size(torch.as_tensor(done).shape)
    f = lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(*shape, 1)  # noqa: E731
    return TensorDict({"eps": f(eps), "next": {"done": torch.as_tensor(done, dtype=torch.bool).reshape(*shape, 1),
                                               "cost": f(cost), "episode_cost": f(ep_cost)}}, batch_size=shape)


def test_episode_costs_ended_episodes_then_per_step_rate_then_kept(monkeypatch):
    m = module()
    monkeypatch.setattr(PolicyGradient, "reduce_mean", lambda self, t: t)
    # env 0 (eps 20) ends two episodes of cost 3 and 5; env 1 (eps 40) ends none, 2 cost in 4 steps, horizon 10
    batch = rollout(eps=[[20] * 4, [40] * 4], done=[[0, 1, 0, 1], [0, 0, 0, 0]],
                    cost=[[1, 1, 0, 1], [1, 0, 1, 0]], ep_cost=[[9, 3, 9, 5], [1, 1, 2, 2]])
    assert onpolicy.episode_costs(m, batch, batch["next", "cost"], m.j_c).tolist() == pytest.approx([4.0, 5.0])
    # (3+5)/2; 2/4 * 10
    only_20 = rollout(eps=[[20] * 2], done=[[0, 1]], cost=[[0, 2]], ep_cost=[[0, 2]])
    j_c = onpolicy.episode_costs(m, only_20, only_20["next", "cost"], m.j_c)
    assert j_c.tolist() == pytest.approx([2.0, 5.0])  # eps 40 has no data: kept
    assert m.j_c.tolist() == j_c.tolist()  # the estimates are kept in the module's buffer


def test_episode_costs_add_the_shaping_to_the_true_cost(monkeypatch):
    m = module()
    monkeypatch.setattr(PolicyGradient, "reduce_mean", lambda self, t: t)
    batch = rollout(eps=[[20] * 2], done=[[0, 1]], cost=[[0, 2]], ep_cost=[[0, 2]])
    shaped = batch["next", "cost"] + 0.5
    assert onpolicy.episode_costs(m, batch, shaped, m.j_c)[0].item() == pytest.approx(2.0 + 0.5 * 10)
    # + mean shaping per step * horizon

PG = ("algo.name=test_pg", "threads=1")  # on experiment=smoke: the test's policy-gradient module


def test_log_prob_and_kl_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    loc, loc2, a = (torch.randn(5, 2, generator=gen) for _ in range(3))
    scale, scale2 = torch.rand(5, 2, generator=gen) + 0.1, torch.rand(5, 2, generator=gen) + 0.1
    dist = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    torch.testing.assert_close(diag_normal_log_prob(a, loc, scale), dist.log_prob(a))
    kl = diag_normal_kl(loc, scale, loc2, scale2)
    by_hand = (torch.log(scale2 / scale) + (scale**2 + (loc - loc2) ** 2) / (2 * scale2**2) - 0.5).sum(-1)
    torch.testing.assert_close(kl, by_hand)
    assert torch.all(diag_normal_kl(loc, scale, loc, scale).abs() < 1e-6)


def test_on_policy_subclass_trains_resumes_and_evaluates(tmp_path, pg_registered, smoke_config):
    metrics = fit(smoke_config(tmp_path, *PG, "total_frames=800", "run_name=pg"))
    assert metrics["train/frames"] == 800 and math.isfinite(metrics["eval/avg_reward"])
    run = tmp_path / "pg"
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["obs_dim"] > 0 and ckpt["state_dict"]["j_c"].shape == (3,)
    assert ckpt["training_state"]["stream"]["collects"] == 4  # one update per collection: 800 frames / 200
    before = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    # resumes: the parameters move on from the checkpoint
    fit(smoke_config(tmp_path, *PG, "total_frames=1200", "run_name=pg"))
    after = safe_load(run / "checkpoints" / "last.ckpt")
    assert after["training_state"]["stream"]["frames"] == 1200
    assert not torch.equal(after["state_dict"]["actor.mu.weight"], before["actor.mu.weight"])
    actor, cfg = load_policy(run / "checkpoints" / "last.ckpt")
    reward, cost, _ = evaluate_thresholds(make_policy(actor), cfg["env"], [25.0], 1, seed=0,
                                       max_steps=cfg["env"]["max_episode_steps"])
    assert reward.shape == (1, 1) and torch.isfinite(cost).all()
