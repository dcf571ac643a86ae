"""The CPU thread setting: the count chosen for a core count and process count, and the adaptive choice under a
load that comes and goes (simulated update times: the mechanism, not the machine's speed)."""

from __future__ import annotations

import random

import pytest
import torch

from ccpo_pl.threads import ThreadChoice, ThreadTuner, configure_threads, cores_per_process

# ms per update measured on 2 cores (benchmarks/ccpo_throughput.py): quiet, and beside one busy process
QUIET = {2: 4.3, 1: 6.2}
LOADED = {2: 17.6, 1: 5.4}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "procs", "expected"), [(2, 1, 2), (2, 2, 1), (16, 4, 4), (16, 3, 5), (1, 4, 1)])
def test_cores_per_process_shares_the_cores(cores, procs, expected):
    assert cores_per_process(procs, cpu_count=cores) == expected


MEAN_NOISE = 0.98 * 1.0 + 0.02 * 5.0  # the mean factor of `simulate`'s noise


def simulate(choice: ThreadChoice, phases: list[tuple[dict[int, float], int]], seed: int = 0):
    """Runs `choice` through phases of (ms per update by thread count, updates), with 20 % multiplicative noise
    and an occasional 5x outlier (a collection's logging); returns per phase the counts used and total ms."""
    rng = random.Random(seed)
    out = []
    for speeds, n in phases:
        used, total = [], 0.0
        for _ in range(n):
            ms = speeds[choice.current] * rng.uniform(0.8, 1.2) * (5.0 if rng.random() < 0.02 else 1.0)
            used.append(choice.current)
            total += ms
            choice.record(ms / 1e3)
        out.append((used, total))
    return out


def test_adaptive_choice_follows_the_load_both_ways():
    choice = ThreadChoice((2, 1))
    quiet1, loaded, quiet2 = simulate(choice, [(QUIET, 6000), (LOADED, 6000), (QUIET, 6000)])
    assert quiet1[0].count(2) / 6000 > 0.9  # quiet: two threads nearly all the time
    assert loaded[0][-3000:].count(1) / 3000 > 0.9  # beside a busy process: one thread, once it has noticed
    assert 1 in loaded[0][:400]  # noticed within a few hundred updates
    assert quiet2[0][-3000:].count(2) / 3000 > 0.9  # the load went away: back to two threads
    assert choice.switches >= 2
    # the time spent stays close to always having run the faster count (the cost of probes and of noticing)
    for (used, total), speeds in zip((quiet1, loaded, quiet2), (QUIET, LOADED, QUIET)):
        best = len(used) * min(speeds.values()) * MEAN_NOISE
        assert total < 1.2 * best


def test_a_settled_run_probes_less_and_less():
    choice = ThreadChoice((2, 1))
    simulate(choice, [(QUIET, 4000)])
    assert choice.period == choice.max_period  # every probe of the slower count lost


def test_equal_speeds_do_not_flip_back_and_forth():
    choice = ThreadChoice((2, 1))
    simulate(choice, [({2: 5.0, 1: 5.0}, 8000)])
    assert choice.switches <= 2  # a probe must be faster by the margin to win


def test_choice_takes_two_candidates():
    with pytest.raises(ValueError, match="two candidate"):
        ThreadChoice((4, 2, 1))


def test_configure_threads_fixed_count_has_no_tuner(restore_threads):
    assert configure_threads(3, local_procs=1) is None
    assert torch.get_num_threads() == 3


def test_configure_threads_one_core_per_process_has_no_tuner(restore_threads, monkeypatch):
    monkeypatch.setattr("ccpo_pl.threads.cores_per_process", lambda procs: 1)
    assert configure_threads(None, local_procs=2) is None
    assert torch.get_num_threads() == 1


def test_configure_threads_adaptive_lets_compiled_kernels_follow(restore_threads, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "dynamic_threads", False)
    monkeypatch.setattr("ccpo_pl.threads.cores_per_process", lambda procs: 2)
    tuner = configure_threads(None, local_procs=1)
    assert isinstance(tuner, ThreadTuner)
    assert tuner.choice.candidates == (2, 1)
    assert torch.get_num_threads() == 2
    assert inductor_config.cpp.dynamic_threads  # a change of count costs no recompilation


def test_tuner_applies_the_choice_to_torch(restore_threads):
    tuner = ThreadTuner(2, min_updates=1, min_seconds=0.0, warmup=0, min_period=1)
    tuner.on_train_start(None, None)
    assert torch.get_num_threads() == 2
    tuner.on_train_batch_start(None, None, None, 0)
    tuner.on_train_batch_end(None, None, None, None, 0)  # one block of the incumbent: the probe starts
    assert torch.get_num_threads() == 1
    assert tuner.choice.current == 1
