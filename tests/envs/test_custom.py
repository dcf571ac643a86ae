"""`env=custom`: any gymnasium env with a cost (`ccpo_pl.envs.custom`), the example env `examples.hazard_point`.

The example is imported from the repository root, as `python -m ccpo_pl.fit` run there would; the user's own envs
are a module written into a temporary directory on the import path (`my_envs`), as a user's package would be.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from ccpo_pl.envs import make_env
from ccpo_pl.errors import ConfigError
from ccpo_pl.validation import validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "examples.hazard_point:HazardPoint"
#: the user's module: the example's cost as Safety-Gymnasium's 6-tuple, as a class and as a registered id
MY_ENVS = '''
import gymnasium as gym

from examples.hazard_point import HazardPoint


class SixTuple(HazardPoint):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, info.pop("cost"), terminated, truncated, info


class NoCost(HazardPoint):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {"hazard": info["cost"]}


if "SixTupleHazard-v0" not in gym.registry:
    gym.register("SixTupleHazard-v0", entry_point=SixTuple)
'''
#: the smoke budget: 2 epochs of 2 collections of 200 frames, 10 updates per collection, evaluated at the end
SMOKE = ("env=custom", "threads=1", "eps.eval=[3,7]", "total_frames=800",
         "collect.updates_per_frame=0.05", "eval.every_epochs=2")


@pytest.fixture(scope="module")
def user_path(tmp_path_factory):
    """The repository root (for `examples`) and a directory with the user's module `my_envs` on the import path."""
    mine = tmp_path_factory.mktemp("user")
    (mine / "my_envs.py").write_text(MY_ENVS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        patch.syspath_prepend(str(mine))
        yield mine


@pytest.fixture(scope="module")
def trained(user_path, tmp_path_factory, smoke_config):
    """A CCPO run on the example env at the smoke budget."""
    from ccpo_pl.fit import fit

    logs = tmp_path_factory.mktemp("custom")
    metrics = fit(smoke_config(logs, *SMOKE, "env.name=hazard_point"))
    return logs / "hazard_point-ccpo-s0", metrics


def test_example_env_trains_and_evaluates_at_an_unseen_threshold_as_the_raw_env_plays(trained):
    from ccpo_pl.deploy import load, run_episodes
    from ccpo_pl.evaluation import evaluate_run
    from examples.hazard_point import HazardPoint

    run, metrics = trained
    assert metrics["train/frames"] == 800 and np.isfinite(metrics["eval/avg_reward"])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    summary = evaluate_run(run, eps=[6], episodes=1, seed=5, policy="deterministic")
    assert summary["task"] == "hazard_point" and summary["env_id"] == EXAMPLE and summary["eps"] == [6]
    row = (run / "eval" / "per_episode.csv").read_text().splitlines()[1].split(",")
    reward, cost, length = float(row[3]), float(row[4]), int(row[5])
    assert length == 100  # env.max_episode_steps ends the episode; the env has no time limit of its own
    # the same policy at the same threshold in the plain gymnasium env
    policy = load(run)
    assert policy.metadata["suite"] == "gymnasium" and policy.metadata["action_high"] == 1.0
    env = gym.wrappers.TimeLimit(HazardPoint(), 100)
    env.reset(seed=5)  # evaluation seeds sub-env 0 with its seed, then resets it for the episode
    played = run_episodes(policy, env, lambda step, so_far: 6.0)[0]
    assert played.length == length and played.cost == cost
    assert played.reward == pytest.approx(reward, abs=1e-3)


@pytest.mark.parametrize("env_id", [EXAMPLE, "my_envs:SixTuple", "my_envs:SixTupleHazard-v0"])
def test_cost_from_info_or_six_tuple_matches_the_gymnasium_env(env_id, user_path):
    """Straight through the hazard: the batched env's per-step costs and episode sums are the env's own, seeding
    reaches the env, and `max_episode_steps` truncates."""
    from examples.hazard_point import HazardPoint

    env_cfg = {"name": "hazard_point", "suite": "gymnasium", "id": env_id, "max_episode_steps": 30}
    env = make_env(env_cfg, num_envs=2, seed=3, eps_values=[2.0, 5.0], eps_mode="fixed")
    right = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    rollout = env.rollout(32, policy=lambda td: td.set("action", right), break_when_any_done=False)
    env.close()
    for i in range(2):
        raw = HazardPoint()
        raw.reset(seed=3 + i)  # make_env seeds sub-env i with seed + i, then the rollout resets it
        first, _ = raw.reset()
        costs = [raw.step(np.array([1.0, 0.0]))[4]["cost"] for _ in range(30)]
        assert torch.equal(rollout["observation"][i, 0], torch.as_tensor(first))
        assert rollout["next", "cost"][i, :30, 0].tolist() == costs and sum(costs) >= 8  # crossed the hazard
        assert rollout["next", "episode_cost"][i, 29, 0] == sum(costs)
    assert rollout["next", "truncated"][:, :30, 0].nonzero()[:, 1].tolist() == [29, 29]
    assert torch.equal(rollout["eps"][:, 0, 0], torch.tensor([2.0, 5.0]))


def test_env_kwargs_reach_the_constructor(user_path, compose_config):
    cfg = compose_config("env=custom", "+env.kwargs.hazard_radius=0.05", "+env.kwargs.step_size=0.2")
    validate(cfg)
    env = make_env(cfg.env, num_envs=1, seed=0, eps_values=[2.0])
    rollout = env.rollout(15, policy=lambda td: td.set("action", torch.tensor([[1.0, 0.0]])))
    env.close()
    start = rollout["observation"][0, 0, 0]
    assert rollout["next", "observation"][0, 0, 0] - start == pytest.approx(0.2)  # step_size
    assert rollout["next", "cost"].sum() <= 1  # a hazard of radius 0.05 is crossed in at most one step


@pytest.mark.parametrize(("overrides", "message"), [
    (("env.id=no_such_pkg.envs:Env",), "env.id='no_such_pkg.envs:Env': cannot import module 'no_such_pkg.envs' "
                                       "(ModuleNotFoundError: No module named 'no_such_pkg')"),
    (("env.id=examples.hazard_point:Hazard",), "module 'examples.hazard_point' has no 'Hazard' and no gymnasium id "
                                               "'Hazard' is registered"),
    (("env.id=MountainCarContinuos-v0",), "no gymnasium id 'MountainCarContinuos-v0' is registered; did you mean "
                                          "'MountainCarContinuous-v0'?"),
    (("env.id=MountainCarContinuous-v0",), "its step reports no cost; give the cost in info['cost'] or as a 6-tuple "
                                           "(obs, reward, cost, terminated, truncated, info) (the step returned a "
                                           "5-tuple whose info has keys [])"),
    (("env.id=my_envs:NoCost",), "info has keys ['hazard']"),
    (("env.id=CartPole-v1",), "action space Discrete(2) is not supported; env=custom needs a 1-D "
                              "gymnasium.spaces.Box observation space and a 1-D Box action space with bounds [-1, 1]"),
    (("env.id=Pendulum-v1",), "action space Box(-2.0, 2.0, (1,), float32) is not supported"),
    (("+env.kwargs.size=2",), "building it with env.kwargs={'size': 2} failed (TypeError: "),
])
def test_a_bad_env_is_refused_in_one_line_before_the_run_writes_anything(overrides, message, user_path, tmp_path,
                                                                         smoke_config):
    from ccpo_pl.fit import fit

    with pytest.raises(ConfigError) as err:
        fit(smoke_config(tmp_path / "logs", *SMOKE, *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (("env.name=my_task",), "unknown env 'my_task'; env.name must be one of ant_circle, "),
    (("+env.kwargs.size=2",), "env.kwargs={'size': 2} is only for env.suite=gymnasium (env=custom)"),
    (("env=custom", "env.name=''", "run_name=x"), "env.name='' is not allowed; env.name must be a short name"),
])
def test_env_names_and_kwargs_are_checked(overrides, message, compose_config):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(compose_config(*overrides))


def _fit_main(argv: list[str], output: str, path: list[str]) -> None:
    import ccpo_pl.fit as fit_module

    sys.path[:0] = path
    with open(output, "w") as out:
        os.dup2(out.fileno(), 2)
        sys.stderr = out
        sys.argv = ["ccpo_pl.fit", *argv]
        fit_module.main()


def test_command_line_exits_2_with_one_line(user_path, tmp_path):
    argv = ["experiment=smoke", *SMOKE, f"log_dir={tmp_path / 'logs'}", "env.id=MountainCarContinuous-v0"]
    proc = multiprocessing.get_context("fork").Process(target=_fit_main,
                                                       args=(argv, str(tmp_path / "err.txt"), [str(user_path)]))
    proc.start()
    proc.join(120)
    lines = (tmp_path / "err.txt").read_text().splitlines()
    assert proc.exitcode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ccpo_pl.fit: error: env.id='MountainCarContinuous-v0': its step reports no cost")
    assert not (tmp_path / "logs").exists()
