"""Does CCPO learn on BallCircle? Per-threshold reward and cost of the trained policy, against a random policy.

Expected: over the behaviour thresholds the episode cost increases with eps
(J_c(20) < J_c(40) < J_c(60)), each within a few units of its eps or below, and the reward clearly above the random
policy's. The CCPO paper reaches Avg R 710.86 / Avg CV 0.59 on BallCircle (1M steps).

Runs the public `fit` (default budget 300,000 frames; the run stays in logs/<run_name> and resumes if re-run),
then loads the final policy from its checkpoint and evaluates `eval.episodes` episodes per evaluation threshold
with the mean action (the paper's protocol) and with sampled actions (the policy the E-step constrains).

    uv run --locked python benchmarks/ccpo_learning.py [total_frames=1000000] [eval.episodes=10] [seed=0]
    uv run --locked python benchmarks/ccpo_learning.py run_name=<earlier run> total_frames=1000000   # extend it

Prints one line per threshold and policy `eps=<eps> reward=<mean> cost=<mean> episodes=<n> policy=<mode>`, then a
key=value summary line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _common import commit, compose_cfg, log
from torchrl.envs import ExplorationType

from ccpo_pl.envs import make_env
from ccpo_pl.evaluation import cost_violation, evaluate_thresholds, load_policy
from ccpo_pl.fit import fit
from ccpo_pl.nets import make_policy


def scores(cfg, policy, exploration) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean episode reward and cost per evaluation threshold `[n_eval]` each."""
    ep_r, ep_c, _ = evaluate_thresholds(policy, cfg.env, list(cfg.eps.eval), cfg.eval.episodes, seed=cfg.seed + 123,
                                     max_steps=int(cfg.env.max_episode_steps), exploration=exploration)
    return ep_r.mean(1), ep_c.mean(1)


def random_policy(cfg):
    """Uniform actions over the task's action box, for any batch of envs."""
    env = make_env(cfg.env, num_envs=1, seed=cfg.seed, eps_values=list(cfg.eps.behavior))
    try:
        low, high = env.action_spec.space.low[0], env.action_spec.space.high[0]
    finally:
        env.close(raise_if_closed=False)

    def policy(td):
        return td.set("action", low + (high - low) * torch.rand(*td.batch_size, low.shape[-1]))
    return policy


def main(argv: list[str]) -> None:
    cfg = compose_cfg(["total_frames=300000", "eval.episodes=5", "eval.every_epochs=5"], argv)
    if not any(a.startswith("run_name=") for a in argv):  # re-running resumes; run_name=<old> extends a run
        cfg.run_name = f"bench-learning-{cfg.env.name}-{cfg.total_frames}-s{cfg.seed}"
    log(f"benchmark: ccpo learning, env={cfg.env.id} total_frames={cfg.total_frames} run={cfg.run_name}")
    m = fit(cfg)
    actor, _ = load_policy(Path(cfg.log_dir) / cfg.run_name / "checkpoints" / "last.ckpt")
    evals = torch.tensor([float(e) for e in cfg.eps.eval])
    beh = [evals.tolist().index(float(e)) for e in cfg.eps.behavior]
    summary = {}
    for mode, exploration in (("deterministic", ExplorationType.DETERMINISTIC), ("stochastic", ExplorationType.RANDOM)):
        rewards, costs = scores(cfg, make_policy(actor), exploration)
        for e, r, c in zip(evals.tolist(), rewards.tolist(), costs.tolist()):
            print(f"eps={e:g} reward={r:.2f} cost={c:.2f} episodes={cfg.eval.episodes} policy={mode}")
        cv = cost_violation(costs, evals)
        summary |= {f"{mode}_avg_reward": f"{rewards.mean():.2f}", f"{mode}_avg_cv": f"{cv.mean():.2f}",
                    f"{mode}_max_cv_behavior": f"{cv[beh].max():.2f}",
                    f"{mode}_jc_behavior_increasing": bool(torch.all(costs[beh][1:] > costs[beh][:-1]))}
    rand_r, rand_c = scores(cfg, random_policy(cfg), ExplorationType.RANDOM)
    print(f"bench=ccpo_learning task={cfg.env.id} frames={int(m['train/frames'])} "
          + " ".join(f"{k}={v}" for k, v in summary.items())
          + f" random_reward={rand_r.mean():.2f} random_cost={rand_c.mean():.2f} seed={cfg.seed} commit={commit()}")


if __name__ == "__main__":
    main(sys.argv[1:])
