"""How far a CCPO policy's sampled actions leave the action box, and what the critic makes of them there.

The actor's samples are raw Gaussian draws that the env clips to [-1, 1], so the env cannot tell a raw action from
its clipped one. For states of sampled-action rollouts at a few thresholds, K actions per state from pi(.|s, eps):
the share of action coordinates outside the box, the mean policy std, and the critic's mean |Q(s, a) - Q(s, clip a)|
over the samples with a coordinate outside, against the mean spread (std over the K samples) of Q in a state. A
difference comparable to the spread means the E-step ranks those samples by values the env cannot produce.

    uv run --locked python benchmarks/action_box.py benchmarks/table1/drone_run-s0/last.ckpt [--eps 20 40 60]

Last line: `std=... outside=... q_r_clip_diff=... q_r_spread=... q_c_clip_diff=... q_c_spread=...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import load_networks, log


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path, help="a CCPO checkpoint")
    parser.add_argument("--eps", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    parser.add_argument("--steps", type=int, default=400, help="rollout steps per threshold")
    parser.add_argument("--samples", type=int, default=64, help="actions per state (K)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from ccpo_pl.envs import make_env
    from ccpo_pl.nets import make_policy

    torch.manual_seed(args.seed)
    _, cfg, actor, critic, _ = load_networks(args.ckpt)
    env = make_env(cfg.env, num_envs=len(args.eps), seed=args.seed, eps_values=args.eps, eps_mode="fixed")
    with set_exploration_type(ExplorationType.RANDOM):
        td = env.rollout(args.steps, make_policy(actor), break_when_any_done=False)
    env.close()
    obs, eps = td["observation"][:, ::4], td["eps"][:, ::4]  # every 4th state: [E, T, ...]
    loc, scale = actor(obs, eps)
    actions = loc + scale * torch.randn(args.samples, *loc.shape)  # [K, E, T, A]
    obs_k, eps_k = obs.expand(args.samples, *obs.shape), eps.expand(args.samples, *eps.shape)
    q_r, q_c = critic(obs_k, actions, eps_k)
    q_r_clip, q_c_clip = critic(obs_k, actions.clamp(-1.0, 1.0), eps_k)
    outside = (actions.abs() > 1).any(-1)
    result = {
        "std": scale.mean().item(),
        "outside": (actions.abs() > 1).float().mean().item(),
        "q_r_clip_diff": (q_r - q_r_clip).abs()[outside].mean().item(),
        "q_r_spread": q_r.std(0).mean().item(),
        "q_c_clip_diff": (q_c - q_c_clip).abs()[outside].mean().item(),
        "q_c_spread": q_c.std(0).mean().item(),
    }
    log(f"{args.ckpt}: {cfg.env.name}, eps {args.eps}, {obs.shape[1]} states each, {args.samples} actions per state")
    print(" ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
