"""Checkpoint plumbing: atomic writes, weights_only loads, RNG round trips, sidecar pruning."""

from __future__ import annotations

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

from ccpo_pl import checkpointing
from ccpo_pl.checkpointing import Sidecars, atomic_torch_save, rng_state, safe_load, set_rng_state


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("fails half-way through the save")


def test_atomic_save_keeps_the_previous_file_when_a_save_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    with pytest.raises(RuntimeError, match="half-way"):
        atomic_torch_save({"step": 2, "bad": _Unpicklable()}, path)
    assert safe_load(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_safe_load_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsCode(str(marker))}, f)
    with pytest.raises(pickle.UnpicklingError):
        safe_load(path)
    assert not marker.exists()


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    atomic_torch_save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(safe_load(tmp_path / "rng.pt"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_sidecars_pair_by_token_and_keep_the_newest(tmp_path):
    sidecars = Sidecars(tmp_path, rank=1, keep=2)
    for frames in (400, 800, 1200):
        sidecars.save(f"{frames:013d}", {"frames": torch.tensor(frames)})
    assert sidecars.load(f"{400:013d}") is None
    assert int(sidecars.load(f"{1200:013d}")["frames"]) == 1200
    assert sorted(p.name for p in (tmp_path / "rank1").iterdir()) == [f"{800:013d}.pt", f"{1200:013d}.pt"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_open_does(tmp_path, mask, mode):
    """A checkpoint, a sidecar or an evaluation file gets the mode `open` would give it (colleagues on a shared
    cluster read a run when the umask lets them), not `mkstemp`'s 0600."""
    old = os.umask(mask)
    try:
        assert checkpointing.umask() == mask
        checkpointing.atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "a.ckpt")
        checkpointing.atomic_write_text("text\n", tmp_path / "b.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.yaml").stat().st_mode) == mode
    assert (tmp_path / "b.yaml").read_text() == "text\n"


def test_training_state_is_read_under_the_current_key_and_the_earlier_one():
    state, legacy = {"stream": {"frames": 800}}, {"stream": {"frames": 400}}
    assert checkpointing.training_state({"training_state": state}) is state
    assert checkpointing.training_state({"ccpo": legacy}) is legacy  # checkpoints written before the rename
    assert checkpointing.training_state({"training_state": state, "ccpo": legacy}) is state
    assert checkpointing.training_state({"state_dict": {}}) is None
    assert checkpointing.training_state({"training_state": "not a dict"}) is None
