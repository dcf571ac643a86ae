"""How much of the E-step dual is decided by which states a batch holds? Three ways of solving it, on a run's own
critic, policy and replay buffer.

The population problem is the dual of eq. 10 over `--population` replay states per threshold. Each scheme then
runs `--updates` consecutive replay batches of `--states` states per threshold, warm-started as in training:
- `batch`: the dual solved on the batch alone (3 warm-started Newton iterations): the constraint's state-level part
  mean_s E_pi_old[Q_c] comes from the batch's states;
- `running`: the same solver, with that state-level part from a running estimate across batches
  (`equations.running_cost_gap`, weight `--decay`): the batch decides only the within-state reweighting;
- `persistent`: lam as a persistent variable moved by a small projected gradient step on the batch's dg/dlam
  (`--lam-lr`, FSRL's kind of dual), eta solved per batch at that lam.

    uv run --locked python benchmarks/estep_dual_noise.py logs/<run>/checkpoints/last.ckpt [--eps 20 40 60]

Also measures the E-step's sampled Q values in bfloat16 (`algo.estep_precision`) against float32 at the run's Q
magnitudes: their error and the E-step weights' total-variation distance at the population solution.

Prints the population solution, the bf16 line, then per scheme the share of updates with lam at its cap, the share
within `--tol` of the population lam, and the mean |lam - lam_pop|; the last line compares the schemes as key=value
pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import load_networks

from ccpo_pl.algos.ccpo import equations as eq


def load(ckpt_path: Path):
    """Old policy, target critic, replay observations and the run's config from a checkpoint and its newest sidecar."""
    ckpt, cfg, actor, critic, storage = load_networks(ckpt_path, "actor_old.", "critic_target.")
    obs = storage["_storage"]["observation"][: int(storage["_len"])].float()
    return cfg, actor, critic, obs, int(ckpt["hyper_parameters"]["act_dim"])


def q_values(actor, critic, obs: torch.Tensor, eps: torch.Tensor, k: int, act_dim: int):
    """Q_r, Q_c [E, S, K] of K actions from pi_old at states `obs [E, S, obs]`."""
    with torch.no_grad():
        loc, scale = actor(obs, eps.view(-1, 1, 1))
        actions = loc.unsqueeze(2) + scale.unsqueeze(2) * torch.randn(*obs.shape[:2], k, act_dim)
        return critic(obs.unsqueeze(2), actions, eps.view(-1, 1, 1, 1))


def bf16_error(actor, critic, obs, eps, eps_q, kappa, k, act_dim, eta, lam) -> str:
    """bf16 against fp32 Q values of the same sampled actions, and the weights' mean total-variation distance."""
    with torch.no_grad():
        loc, scale = actor(obs, eps.view(-1, 1, 1))
        actions = loc.unsqueeze(2) + scale.unsqueeze(2) * torch.randn(*obs.shape[:2], k, act_dim)
        exact = critic(obs.unsqueeze(2), actions, eps.view(-1, 1, 1, 1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = [q.float() for q in critic(obs.unsqueeze(2), actions, eps.view(-1, 1, 1, 1))]
    w_exact = eq.estep_weights(*exact, eta, lam)
    w_low = eq.estep_weights(*low, eta, lam)
    tv = 0.5 * (w_exact - w_low).abs().sum(-1).mean().item()
    parts = [f"bf16_tv={tv:.4f}"]
    for name, a, b in zip(("q_r", "q_c"), exact, low):
        parts += [f"{name}_mean_abs={a.abs().mean():.3f}", f"{name}_bf16_err={(a - b).abs().mean():.4f}"]
    return " ".join(parts)


def eta_at(q_r, q_c, eps_q, kappa, eta, lam, iters: int = 3):
    """eta minimising the dual at fixed lam: Newton steps on log eta (the persistent scheme's eta)."""
    for _ in range(iters):
        _, grad, hess = eq.estep_dual_grad_hess(eta, lam, q_r, q_c, eps_q, kappa)
        step = grad[:, 0] / (hess[:, 0, 0] * eta + grad[:, 0]).clamp(min=1e-12)  # Newton on log eta
        eta = (eta * torch.exp(-step.clamp(-4.6, 4.6))).clamp(1e-3, 1e3)
    return eta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--eps", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    ap.add_argument("--states", type=int, default=64)
    ap.add_argument("--population", type=int, default=4096)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--decay", type=float, default=0.003)
    ap.add_argument("--lam-lr", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg, actor, critic, obs, act_dim = load(args.ckpt)
    algo = cfg.algo
    k, kappa, lam_max = int(algo.num_samples), float(algo.kappa), float(algo.dual.lam_max)
    eps = torch.tensor(args.eps)
    n_e = len(eps)
    eps_q = eq.eps_to_q_units(eps, float(algo.gamma), int(cfg.env.max_episode_steps))
    pop = obs[torch.randint(len(obs), (n_e * args.population,))].view(n_e, args.population, -1)
    q_r, q_c = q_values(actor, critic, pop, eps, k, act_dim)
    eta_pop, lam_pop = eq.solve_estep_dual(q_r, q_c, eps_q, kappa, torch.ones(n_e), torch.zeros(n_e), iters=60,
                                           lam_max=lam_max)
    print("eps", args.eps, "eps_q", [round(x, 3) for x in eps_q.tolist()],
          "population E[Q_c]", [round(x, 3) for x in q_c.mean((1, 2)).tolist()],
          "lam_pop", [round(x, 3) for x in lam_pop.tolist()], "eta_pop", [round(x, 3) for x in eta_pop.tolist()])
    print("bf16:", bf16_error(actor, critic, pop, eps, eps_q, kappa, k, act_dim, eta_pop, lam_pop))
    lams = {name: [] for name in ("batch", "running", "persistent")}
    state = {name: (torch.ones(n_e), torch.zeros(n_e)) for name in lams}
    gap, count = torch.zeros(n_e), torch.zeros(n_e)
    for _ in range(args.updates):
        batch = obs[torch.randint(len(obs), (n_e * args.states,))].view(n_e, args.states, -1)
        q_r, q_c = q_values(actor, critic, batch, eps, k, act_dim)
        state["batch"] = eq.solve_estep_dual(q_r, q_c, eps_q, kappa, *state["batch"], iters=3, lam_max=lam_max)
        gap, count = eq.running_cost_gap(gap, count, q_c.mean((1, 2)) - eps_q, args.decay)
        state["running"] = eq.solve_estep_dual(q_r, q_c, eps_q, kappa, *state["running"], iters=3,
                                               lam_max=lam_max, c_gap=gap)
        eta, lam = state["persistent"]
        eta = eta_at(q_r, q_c, eps_q, kappa, eta, lam)
        _, grad, _ = eq.estep_dual_grad_hess(eta, lam, q_r, q_c, eps_q, kappa)
        state["persistent"] = eta, (lam - args.lam_lr * grad[:, 1]).clamp(0.0, lam_max)
        for name in lams:
            lams[name].append(state[name][1].clone())
    summary = []
    burn = args.updates // 10
    for name, seq in lams.items():
        seq = torch.stack(seq)[burn:]
        at_cap = (seq >= 0.99 * lam_max).float().mean(0)
        near = ((seq - lam_pop).abs() <= args.tol).float().mean(0)
        err = (seq - lam_pop).abs().mean(0)
        print(f"{name:>10}: at cap {[round(x, 3) for x in at_cap.tolist()]}  within {args.tol} of lam_pop "
              f"{[round(x, 3) for x in near.tolist()]}  mean |lam - lam_pop| {[round(x, 2) for x in err.tolist()]}")
        summary += [f"{name}_at_cap={at_cap.mean():.3f}", f"{name}_near={near.mean():.3f}",
                    f"{name}_abs_err={err.mean():.2f}"]
    print(" ".join(summary))


if __name__ == "__main__":
    main()
