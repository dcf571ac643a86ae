"""Run configs stored by earlier versions (a run's config.yaml, a checkpoint's run_config) under keys renamed or
removed since: `validation.current_run_config` maps them, so such a run resumes and its checkpoints load and
evaluate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import load_policy
from ccpo_pl.fit import check_resumable, fit
from ccpo_pl.validation import REMOVED_KEYS, RENAMED_KEYS, current_run_config, removed_setting

OLD_RUN = Path(__file__).parent / "fixtures" / "checkpoints_main" / "ball_circle-ccpo-s0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of a CCPO run written before `algo.lagrangian` became `algo.lagrange` (1600 frames)."""
    run_dir = tmp_path / OLD_RUN.name
    shutil.copytree(OLD_RUN, run_dir)
    return run_dir


def test_current_run_config_renames_only_the_old_keys():
    stored = {"algo": {"name": "ccpo", "lagrangian": {"lr": 0.01}, "kappa": 0.02}, "seed": 1}
    assert current_run_config(stored) == {"algo": {"name": "ccpo", "lagrange": {"lr": 0.01}, "kappa": 0.02},
                                          "seed": 1}
    assert "lagrangian" in stored["algo"]  # a copy: the stored config is not changed
    now = {"algo": {"name": "v_sac_lag", "lagrange": {"lr": 0.01}}}
    assert current_run_config(now) == now and current_run_config(None) is None
    assert RENAMED_KEYS == {"algo.lagrangian": "algo.lagrange"}


def test_current_run_config_drops_removed_keys_that_hold_their_old_default():
    stored = {"algo": {"name": "ccpo", "estep_states": "batch", "critic_ensemble": 1, "kappa": 0.02}, "seed": 1}
    assert current_run_config(stored) == {"algo": {"name": "ccpo", "kappa": 0.02}, "seed": 1}
    assert removed_setting(current_run_config(stored)) is None and "estep_states" in stored["algo"]  # a copy
    other = {"algo": {"name": "ccpo", "estep_states": "behaviour", "critic_ensemble": 1}}
    assert current_run_config(other) == {"algo": {"name": "ccpo", "estep_states": "behaviour"}}
    assert removed_setting(current_run_config(other)) == "algo.estep_states='behaviour'"
    assert REMOVED_KEYS == {"algo.estep_states": "batch", "algo.critic_ensemble": 1}


def test_a_run_with_a_removed_setting_off_its_default_is_refused_for_resume_in_one_line(old_run, smoke_config):
    stored = OmegaConf.load(old_run / "config.yaml")
    assert stored.algo.critic_ensemble == 1  # the old default: dropped, the run resumes (test below)
    stored.algo.critic_ensemble = 2
    OmegaConf.save(stored, old_run / "config.yaml")
    plain = OmegaConf.to_container(smoke_config(old_run.parent, "threads=1"), resolve=True)
    with pytest.raises(ConfigError, match=r"trained with algo.critic_ensemble=2, a setting ccpo_pl no longer has: "
                                          r"its checkpoints evaluate but the run does not resume"):
        check_resumable(old_run, plain)


def test_a_run_stored_with_the_old_key_passes_the_changed_config_check(old_run, smoke_config):
    stored = OmegaConf.to_container(OmegaConf.load(old_run / "config.yaml"))
    assert "lagrangian" in stored["algo"] and "lagrange" not in stored["algo"]
    plain = OmegaConf.to_container(smoke_config(old_run.parent, "threads=1"), resolve=True)
    check_resumable(old_run, plain)  # the same run: not refused
    plain["algo"]["lagrange"]["lr"] = 0.5  # a real change under the new name is still refused
    with pytest.raises(ConfigError, match=r"different config \(algo.lagrange.lr: 0.01 -> 0.5\)"):
        check_resumable(old_run, plain)


def test_a_checkpoint_stored_with_the_old_key_loads_with_the_new_one(old_run):
    actor, cfg = load_policy(old_run / "checkpoints" / "last.ckpt")
    assert cfg["algo"]["lagrange"]["method"] == "gradient" and "lagrangian" not in cfg["algo"]
    assert actor is not None


@pytest.mark.slow
def test_a_run_stored_with_the_old_key_resumes_and_is_recorded_with_the_new_one(old_run, smoke_config):
    metrics = fit(smoke_config(old_run.parent, "threads=1", "total_frames=2000"))
    assert metrics["train/frames"] == 2000  # one more epoch of 400 frames after the stored 1600
    assert "lagrange" in OmegaConf.load(old_run / "config.yaml").algo
