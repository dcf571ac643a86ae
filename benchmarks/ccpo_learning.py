"""Does CCPO learn on BallCircle? Per-threshold reward and cost of the trained policy, against a random policy.

Expected (issue "CCPO trainer, end to end"): over the behaviour thresholds the episode cost increases with eps
(J_c(20) < J_c(40) < J_c(60)), each within a few units of its eps or below, and the reward clearly above the random
policy's. The CCPO paper reaches Avg R 710.86 / Avg CV 0.59 on BallCircle (1M steps).

Runs the public `fit` (default budget 300,000 frames; the run stays in logs/<run_name> and resumes if re-run),
then evaluates `episodes` deterministic episodes per evaluation threshold.

    uv run --locked python benchmarks/ccpo_learning.py [total_frames=1000000] [eval.episodes=10] [seed=0]
    uv run --locked python benchmarks/ccpo_learning.py run_name=<earlier run> total_frames=1000000   # extend it

Prints one line per threshold `eps=<eps> reward=<mean> cost=<mean> episodes=<n>`, then a key=value summary line.
"""

from __future__ import annotations

import sys

import torch
from _common import commit, compose_cfg, log
from torchrl.envs.utils import RandomPolicy

from ccpo_pl.envs import make_env
from ccpo_pl.evaluation import cost_violation, rollout_episodes
from ccpo_pl.fit import fit


def random_policy_scores(cfg) -> tuple[float, float]:
    """Mean episode reward and cost of uniform random actions (the 'no learning' reference)."""
    evals, n = list(cfg.eps.eval), cfg.eval.episodes
    env = make_env(cfg.env, num_envs=len(evals) * n, seed=cfg.seed + 123, eps_values=[e for e in evals for _ in
                   range(n)], eps_mode="fixed")
    try:
        ep_r, ep_c = rollout_episodes(env, RandomPolicy(env.action_spec), int(cfg.env.max_episode_steps))
    finally:
        env.close(raise_if_closed=False)
    return float(ep_r.mean()), float(ep_c.mean())


def main(argv: list[str]) -> None:
    cfg = compose_cfg(["total_frames=300000", "eval.episodes=5", "eval.every_epochs=5"], argv)
    if not any(a.startswith("run_name=") for a in argv):  # re-running resumes; run_name=<old> extends a run
        cfg.run_name = f"bench-learning-{cfg.env.name}-{cfg.total_frames}-s{cfg.seed}"
    log(f"benchmark: ccpo learning, env={cfg.env.id} total_frames={cfg.total_frames} run={cfg.run_name}")
    m = fit(cfg)
    rand_r, rand_c = random_policy_scores(cfg)
    evals = [float(e) for e in cfg.eps.eval]
    rewards = torch.tensor([m[f"eval/eps_{e:g}/reward"] for e in evals])
    costs = torch.tensor([m[f"eval/eps_{e:g}/cost"] for e in evals])
    for e, r, c in zip(evals, rewards.tolist(), costs.tolist()):
        print(f"eps={e:g} reward={r:.2f} cost={c:.2f} episodes={cfg.eval.episodes}")
    beh = [evals.index(float(e)) for e in cfg.eps.behavior]
    jc_beh = costs[beh]
    monotone = bool(torch.all(jc_beh[1:] > jc_beh[:-1]))
    cv = cost_violation(costs, torch.tensor(evals))
    print(f"bench=ccpo_learning task={cfg.env.id} frames={int(m['train/frames'])} avg_reward={rewards.mean():.2f} "
          f"avg_cv={cv.mean():.2f} max_cv_behavior={cv[beh].max():.2f} jc_behavior_increasing={monotone} "
          f"random_reward={rand_r:.2f} random_cost={rand_c:.2f} seed={cfg.seed} commit={commit()}")


if __name__ == "__main__":
    main(sys.argv[1:])
