"""The config table: it knows every key of conf/, refuses unknown ones naming the nearest, and checks the command
line's keys before Hydra composes them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ccpo_pl.conf import CONF_DIR
from ccpo_pl.errors import ConfigError
from ccpo_pl.validation import SCHEMA, _leaves, algo_keys, check_override_keys, rule_for, validate

ALGOS = sorted(p.stem for p in (CONF_DIR / "algo").glob("*.yaml"))
ENVS = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_config_passes_the_table(algo, compose_config):
    validate(compose_config(f"algo={algo}"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_passes_the_table(experiment, compose_config):
    validate(compose_config(f"experiment={experiment}"))


@pytest.mark.parametrize("env", ENVS)
def test_every_env_config_passes_the_table(env, compose_config):
    validate(compose_config(f"env={env}"))


@pytest.mark.parametrize("env", ENVS)
def test_the_smoke_experiment_takes_its_thresholds_from_every_task(env, compose_config):
    """`fit experiment=smoke env=<any task>` as the guide promises: the evaluation grid follows the task (the ends
    of its eps.range and the midpoint), and not the algorithm (CPO trains at one limit: the same grid, so a smoke run
    of an earlier version resumes)."""
    cfg = compose_config("experiment=smoke", f"env={env}")
    validate(cfg)
    lo, hi = cfg.eps.range
    assert list(cfg.eps.eval) == [lo, (lo + hi) / 2, hi]
    assert list(compose_config("experiment=smoke", f"env={env}", "algo=cpo").eps.eval) == list(cfg.eps.eval)


def test_the_cpo_family_refuses_a_ccpo_experiments_thresholds(compose_config):
    with pytest.raises(ConfigError, match="trains at one cost limit"):
        validate(compose_config("algo=cpo", "experiment=paper_table1"))


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
                         "algo.lagrange.pid={kp:1}", "paper_budgets.ball_circle=10", "~eps.bin"])


def test_a_key_far_from_every_known_key_points_to_the_config_files():
    with pytest.raises(ConfigError, match=r"unknown key zzz_qqq; every key is listed, with its meaning, in the"):
        check_override_keys(["+zzz_qqq=1"])


def test_every_rule_names_what_it_allows():
    assert all(rule.allowed_text() for rule in SCHEMA.values())


@pytest.mark.parametrize("algo, key", [("ccpo", "algo.kappa"), ("ccpo", "algo.dual.gap_decay"),
                                       ("c_ppo_lag", "algo.clip_epsilon"), ("cpo", "algo.cg_iters")])
def test_a_deleted_algorithm_key_is_refused_naming_it_and_its_file(algo, key, compose_config):
    cfg = compose_config(f"algo={algo}", f"~{key}")
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


def _run_keys(path) -> set[str]:
    """The dotted keys an `algo_run/` file sets, with those of the files in its defaults."""
    own = OmegaConf.to_container(OmegaConf.load(path))
    parents = [path.parent / f"{d}.yaml" for d in own.pop("defaults", [])]
    return {k for k, _ in _leaves(own)} | {k for parent in parents for k in _run_keys(parent)}


@pytest.mark.parametrize("algo", ALGOS)
def test_an_algorithm_file_sets_only_known_algo_keys(algo):
    text = (CONF_DIR / "algo" / f"{algo}.yaml").read_text()
    assert "@package" not in text  # the default package: every key lands under algo.
    keys = algo_keys(algo, inherited=True)
    assert "algo.name" in keys and all(rule_for(k) is not None for k in keys)


@pytest.mark.parametrize("algo", ALGOS)
def test_choosing_an_algorithm_changes_outside_algo_only_the_keys_of_its_algo_run_file(algo, compose_config):
    named = ("run_name=r", "label=l")  # by default both interpolate algo.name
    leaves = {a: dict(_leaves(OmegaConf.to_container(compose_config(f"algo={a}", *named), resolve=True)))
              for a in ("ccpo", algo)}
    changed = {k for k, v in leaves[algo].items() if not k.startswith("algo.") and leaves["ccpo"].get(k) != v}
    run_file = CONF_DIR / "algo_run" / f"{algo}.yaml"
    allowed = _run_keys(run_file) if run_file.is_file() else set()
    assert not any(k.startswith("algo.") for k in allowed)
    assert changed <= allowed
    if algo in ("cpo", "pdo", "trpo", "fpo"):  # the single cost limit of the CPO family
        assert leaves[algo]["eps.behavior"] == [25] and leaves[algo]["eps.eval"] == [25]


def test_the_algo_run_files_belong_to_algorithms():
    names = sorted(p.stem for p in (CONF_DIR / "algo_run").glob("*.yaml"))
    assert names == ["c_ppo_lag", "c_trpo_lag", "cpo", "fpo", "pdo", "trpo"]


@pytest.mark.parametrize("algo", ["ccpo", "ccpo_wo_cvi", "v_sac_lag", "c_ppo_lag", "pdo"])
def test_every_algorithm_names_its_multipliers_algo_lagrange(algo, compose_config):
    cfg = compose_config(f"algo={algo}", "algo.lagrange.method=pid")
    assert cfg.algo.lagrange.method == "pid" and "lagrangian" not in cfg.algo
    check_override_keys([f"algo={algo}", "algo.lagrange.lr=0.5"])


def test_the_old_multiplier_key_on_the_command_line_names_the_new_one():
    with pytest.raises(ConfigError, match=r"unknown key algo.lagrangian.lr; did you mean algo.lagrange.lr\?"):
        check_override_keys(["algo=ccpo_wo_cvi", "algo.lagrangian.lr=0.5"])
