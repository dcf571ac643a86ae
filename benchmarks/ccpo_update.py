"""How much does one change of the compiled CCPO update save? Two updates side by side in one process.

Builds the default CCPO module twice on a synthetic batch shaped like BallCircle's (8 observation dims, 2 action
dims, batch 256, 4 thresholds, K = 16): A compiled with `inductor_for_the_update`, B with the named change
switched off (`eager`: not compiled at all). Then alternates blocks of updates, A then B, so that both see the
same machine: these VMs drift by +-20 % within minutes, and only a ratio taken this way is stable.

    uv run --locked python benchmarks/ccpo_update.py --without {recompute_views,cpp_wrapper,split_addmm,compile}
        [--blocks 25] [--updates 40] [hydra overrides]

Last line: ms_per_update=<A median> ms_per_update_without=<B median> ratio=<median of B/A per block pair> ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import torch
from _common import commit, compose_cfg, log
from tensordict import TensorDict

from ccpo_pl import compat
from ccpo_pl.algos.ccpo.compiled import compiled_or_eager, inductor_backend
from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.algos.registry import build

OBS, ACT, BATCH = 8, 2, 256  # SafetyBallCircle-v0's spaces, the default batch


class _OneProcess:
    world_size = 1


def make_module(cfg, backend_options: dict | None) -> CCPO:
    """The default module with its update compiled by `inductor_backend(**backend_options)` (None: eager). The
    objectives get their own code object so that each module has its own torch.compile cache, as in a run."""
    torch.manual_seed(0)
    module = build(cfg, OBS, ACT, eps_behavior=list(cfg.eps.behavior), eps_range=list(cfg.eps.range),
                   eps_bin=cfg.eps.bin, eps_eval=list(cfg.eps.eval), horizon=cfg.env.max_episode_steps,
                   total_frames=cfg.total_frames)
    module._trainer = _OneProcess()
    optimizers = module.configure_optimizers()
    module.optimizers = lambda: optimizers
    module.manual_backward = lambda loss: loss.backward()
    fn = CCPO.update_objectives
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    objectives = types.MethodType(own, module)
    module.objectives_fn = (objectives if backend_options is None
                            else compiled_or_eager(objectives, backend=inductor_backend(**backend_options)))
    return module


def synthetic_batch() -> TensorDict:
    g = torch.Generator().manual_seed(1)
    return TensorDict({
        "observation": torch.randn(BATCH, OBS, generator=g), "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
        "next": {"observation": torch.randn(BATCH, OBS, generator=g), "reward": torch.randn(BATCH, 1, generator=g),
                 "cost": (torch.rand(BATCH, 1, generator=g) < 0.2).float(),
                 "terminated": torch.zeros(BATCH, 1, dtype=torch.bool)},
    }, [BATCH])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--without", required=True,
                        choices=["recompute_views", "cpp_wrapper", "split_addmm", "compile"])
    parser.add_argument("--blocks", type=int, default=25)
    parser.add_argument("--updates", type=int, default=40)
    args, overrides = parser.parse_known_args(argv)
    compat.cuda_check_without_nvml()
    cfg = compose_cfg(["algo.compile=false"], overrides)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    log(f"benchmark: CCPO update with and without {args.without}, {torch.get_num_threads()} threads")
    a = make_module(cfg, {})
    b = make_module(cfg, None if args.without == "compile" else {args.without: False})
    batch, eps = synthetic_batch(), torch.tensor([20.0, 40.0, 60.0, 33.0])
    bins = a.bin_index(eps)

    def block(module: CCPO, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            module.cvi_update(batch, eps, bins)
        return (time.perf_counter() - start) / n * 1e3

    for module in (a, b):  # compile and warm up
        block(module, 30)
    times_a, times_b = [], []
    for _ in range(args.blocks):
        times_a.append(block(a, args.updates))
        times_b.append(block(b, args.updates))
    ratios = [tb / ta for ta, tb in zip(times_a, times_b)]
    print(f"bench=ccpo_update without={args.without} blocks={args.blocks} updates_per_block={args.updates} "
          f"ratio_min={min(ratios):.3f} ratio_max={max(ratios):.3f} commit={commit()}")
    print(f"ms_per_update={statistics.median(times_a):.3f} ms_per_update_without={statistics.median(times_b):.3f} "
          f"ratio={statistics.median(ratios):.3f} without={args.without}")


if __name__ == "__main__":
    main(sys.argv[1:])
