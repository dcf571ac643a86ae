"""The config table: it knows every key of conf/, refuses unknown ones naming the nearest, and checks the command
line's keys before Hydra composes them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from ccpo_pl.errors import ConfigError
from ccpo_pl.conf import CONF_DIR
from ccpo_pl.validation import SCHEMA, check_override_keys, validate

ALGOS = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))
ENVS = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_config_passes_the_table(algo):
    validate(compose_cfg(f"algo={algo}"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_passes_the_table(experiment):
    validate(compose_cfg(f"experiment={experiment}"))


@pytest.mark.parametrize("env", ENVS)
def test_every_env_config_passes_the_table(env):
    validate(compose_cfg(f"env={env}"))


def test_the_cpo_family_refuses_a_ccpo_experiments_thresholds():
    with pytest.raises(ConfigError, match="trains at one cost limit"):
        validate(compose_cfg("algo=cpo", "experiment=paper_table1"))


@pytest.mark.parametrize(("arg", "near"), [
    ("algo.kapa=0.1", "algo.kappa"),
    ("+algo.kapa=0.1", "algo.kappa"),
    ("++eps.bni=3", "eps.bin"),
    ("~colect.num_envs", "collect.num_envs"),
    ("trainer.max_epoch=3", "trainer.max_epochs"),
])
def test_an_unknown_key_on_the_command_line_names_the_nearest(arg, near):
    with pytest.raises(ConfigError) as err:
        check_override_keys([arg])
    assert str(err.value).endswith(f"did you mean {near}?")


def test_groups_flags_hydra_settings_and_known_keys_pass_the_command_line_check():
    check_override_keys(["-m", "--multirun", "env=car_circle", "algo=cvpo,ccpo", "experiment=smoke",
                         "hydra.job.chdir=true", "seed=0,1,2", "+algo.kappa=0.1", "eps.behavior=[20]",
                         "algo.lagrangian.pid={kp:1}", "paper_budgets.ball_circle=10", "~eps.bin"])


def test_a_key_far_from_every_known_key_points_to_the_config_files():
    with pytest.raises(ConfigError, match=r"unknown key zzz_qqq; every key is listed, with its meaning, in the"):
        check_override_keys(["+zzz_qqq=1"])


def test_every_rule_names_what_it_allows():
    assert all(rule.allowed_text() for rule in SCHEMA.values())


@pytest.mark.parametrize("algo, key", [("ccpo", "algo.kappa"), ("ccpo", "algo.dual.gap_decay"),
                                       ("c_ppo_lag", "algo.clip_epsilon"), ("cpo", "algo.cg_iters")])
def test_a_deleted_algorithm_key_is_refused_naming_it_and_its_file(algo, key):
    cfg = compose_cfg(f"algo={algo}", f"~{key}")
    with pytest.raises(ConfigError, match=rf"{key} is missing from the config; restore it \(conf/algo/{algo}.yaml"):
        validate(cfg)


@pytest.mark.parametrize("args, message", [
    (["algo.clip_epsilon=0.1"], "algo.clip_epsilon is not a setting of algo=ccpo"),
    (["+algo.clip_epsilon=0.1"], "algo.clip_epsilon is not a setting of algo=ccpo"),
    (["algo=v_sac_lag", "algo.kappa=0.1"], "algo.kappa is not a setting of algo=v_sac_lag"),
])
def test_a_key_of_another_algorithm_is_refused_naming_the_chosen_one(args, message):
    with pytest.raises(ConfigError, match=message):
        check_override_keys(args)


@pytest.mark.parametrize("args", [["algo.kappa=0.1"], ["algo=cvpo", "algo.kappa=0.1", "algo.threshold=30"],
                                  ["algo=pdo", "algo.cg_iters=5"], ["algo=ccpo,cvpo", "algo.dual.iters=2"],
                                  ["algo=c_ppo_lag", "algo.lagrange.pid.kp=0.1"], ["~algo.kappa"]])
def test_the_chosen_algorithms_own_and_inherited_keys_pass(args):
    check_override_keys(args)
