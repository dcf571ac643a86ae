"""Does the cost critic Q_c(s, a | eps) predict the cost the policy pi(.|s, eps) incurs, and on which states?

The E-step constrains the critic's mean Q_c over replay states (slides eq. 10, threshold eps in Q units, eps_q). A
policy that keeps that constraint but overshoots eps in its episodes has either a critic that misjudges its own
states' cost, or a constraint evaluated on states it does not visit (the replay buffer mixes the states of every
behaviour threshold's policy). For each threshold this runs `--episodes` episodes of the sampled-action policy of a
checkpoint (the policy the E-step constrains), and compares, on the first `--steps` steps of each episode (default:
all but the last 100, where the episode's end truncates at most gamma^100 of the discounted sum):
- `G_c`: the discounted cost-to-go actually incurred, sum_k gamma^k c_{t+k} up to the episode's end;
- `Q_c on-policy`: the critic at the same states and actions;
- `Q_c replay`: the critic's mean over the checkpoint's replay states with actions from pi(.|s, eps) (what the
  E-step's constraint sees; needs the checkpoint's replay sidecar);
- `Q_c own`: the same over the replay states collected at this threshold (a behaviour threshold's own states);
- `eps_q`: the threshold in Q units.

    uv run --locked python benchmarks/critic_vs_returns.py <run dir or checkpoint> [--eps 20 40 60] [--episodes 5]

Last line: per threshold `episode_cost_<e>`, `g_c_<e>`, `q_c_onpolicy_<e>`, `q_c_replay_<e>`, `q_c_own_<e>`,
`eps_q_<e>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import load_networks

from ccpo_pl.algos.ccpo import equations as eq


def discounted_to_go(costs: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k c_{t+k} up to the end of the array (the episode's end)."""
    out, running = np.zeros(len(costs)), 0.0
    for t in range(len(costs) - 1, -1, -1):
        running = costs[t] + gamma * running
        out[t] = running
    return out


def load(path: Path):
    """(config, actor, critic, replay (observations, collection eps) or None) of a run's last checkpoint or a
    checkpoint: the current actor and critic."""
    ckpt_path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    _, cfg, actor, critic, storage = load_networks(ckpt_path)
    replay = None
    if storage is not None:
        n = int(storage["_len"])
        replay = storage["_storage"]["observation"][:n].float(), storage["_storage"]["eps"][:n].view(-1).float()
    return cfg, actor.eval(), critic.eval(), replay


@torch.no_grad()
def episodes(cfg, actor, eps: float, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(observations, actions, costs) of `n` sampled-action episodes at `eps` in the task's gymnasium env."""
    import bullet_safety_gym  # noqa: F401  (registers the Safety*-v0 ids)
    import gymnasium as gym

    env = gym.make(cfg.env.id)
    np.random.seed(seed)  # bullet-safety-gym draws its start states from numpy's global RNG
    torch.manual_seed(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        rows, acts, costs, done = [], [], [], False
        while not done:
            o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
            loc, scale = actor(o, torch.tensor([[eps]]))
            a = (loc + scale * torch.randn_like(loc)).clamp(-1.0, 1.0)
            obs_next, _, terminated, truncated, info = env.step(a[0].numpy())
            rows.append(o[0].numpy())
            acts.append(a[0].numpy())
            costs.append(float(info.get("cost", 0.0)))
            obs, done = obs_next, bool(terminated or truncated)
        out.append((np.stack(rows), np.stack(acts), np.array(costs)))
    env.close()
    return out


@torch.no_grad()
def replay_q_c(actor, critic, states: torch.Tensor, eps: float, n: int, gen: torch.Generator) -> float:
    """The critic's mean Q_c over `n` of `states` (drawn without replacement) with actions from pi(.|s, eps)."""
    states = states[torch.randperm(len(states), generator=gen)[:n]]
    e = torch.full((len(states), 1), eps)
    loc, scale = actor(states, e)
    return float(critic(states, loc + scale * torch.randn_like(loc), e)[1].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory or checkpoint")
    parser.add_argument("--eps", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="compare on the first this many steps of an episode (default: the horizon - 100)")
    parser.add_argument("--replay", type=int, default=4096, help="replay states for the replay mean")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg, actor, critic, replay = load(args.run)
    if cfg.env.suite != "bullet":
        raise SystemExit(f"env.suite={cfg.env.suite!r}: this script runs the bullet tasks only")
    gamma, horizon = float(cfg.algo.gamma), int(cfg.env.max_episode_steps)
    args.steps = args.steps or max(1, horizon - 100)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"{'eps':>5} {'episode cost':>12} {'G_c':>7} {'Q_c on-policy':>13} {'Q_c replay':>10} {'Q_c own':>8} "
          f"{'eps_q':>6}")
    fields = {}
    for e in args.eps:
        runs = episodes(cfg, actor, e, args.episodes, args.seed)
        obs = torch.as_tensor(np.concatenate([o[: args.steps] for o, _, _ in runs]))
        act = torch.as_tensor(np.concatenate([a[: args.steps] for _, a, _ in runs]))
        g_c = float(np.concatenate([discounted_to_go(c, gamma)[: args.steps] for _, _, c in runs]).mean())
        with torch.no_grad():
            q_on = float(critic(obs, act, torch.full((len(obs), 1), e))[1].mean())
            q_rep = q_own = float("nan")
            if replay is not None:
                states, collected_at = replay
                q_rep = replay_q_c(actor, critic, states, e, args.replay, gen)
                if bool((collected_at == e).any()):
                    q_own = replay_q_c(actor, critic, states[collected_at == e], e, args.replay, gen)
        eps_q = float(eq.eps_to_q_units(torch.tensor(e), gamma, horizon))
        cost = float(np.mean([c.sum() for _, _, c in runs]))
        print(f"{e:5g} {cost:12.1f} {g_c:7.2f} {q_on:13.2f} {q_rep:10.2f} {q_own:8.2f} {eps_q:6.2f}")
        tag = f"{e:g}"
        fields |= {f"episode_cost_{tag}": round(cost, 2), f"g_c_{tag}": round(g_c, 3),
                   f"q_c_onpolicy_{tag}": round(q_on, 3), f"q_c_replay_{tag}": round(q_rep, 3),
                   f"q_c_own_{tag}": round(q_own, 3),
                   f"eps_q_{tag}": round(eps_q, 3)}
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
