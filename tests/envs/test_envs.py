"""Tests for ccpo_pl.envs: keys, specs, eps sampling, cost fidelity, action clipping and seeding."""

import gymnasium
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs, step_mdp

from ccpo_pl import compat
from ccpo_pl.envs import TASKS, make_env
from ccpo_pl.envs.batched import BulletBatchEnv


def task_cfg(name: str, max_episode_steps: int | None = None) -> dict:
    suite, env_id, steps = TASKS[name]
    return {"name": name, "suite": suite, "id": env_id, "max_episode_steps": max_episode_steps or steps}


@pytest.mark.parametrize("name", ["ball_circle", "half_cheetah_velocity"])
def test_make_env_specs_and_keys(name):
    env = make_env(task_cfg(name, 5), num_envs=2, seed=0, eps_values=[20, 40, 60])
    check_env_specs(env)
    assert env.batch_size == torch.Size([2])
    eps_spec = env.observation_spec["eps"]
    assert eps_spec.shape == (2, 1) and eps_spec.space.low.min() == 20 and eps_spec.space.high.max() == 60
    assert "cost" not in env.observation_spec and env.full_reward_spec["cost"].shape == (2, 1)
    rollout = env.rollout(7, break_when_any_done=False)
    for key in ["observation", "eps", ("next", "reward"), ("next", "cost"), ("next", "episode_cost")]:
        assert rollout[key].dtype == torch.float32, key
    for key in ["eps", ("next", "reward"), ("next", "cost"), ("next", "episode_reward"), ("next", "episode_cost")]:
        assert rollout[key].shape == (2, 7, 1), key
    truncated = rollout["next", "truncated"].squeeze(-1)
    assert truncated[:, 4].all() and not truncated[:, :4].any()
    assert not rollout["next", "terminated"].any()
    assert (rollout["next", "step_count"].squeeze(-1)[0] == torch.tensor([1, 2, 3, 4, 5, 1, 2])).all()
    env.close()


def test_eps_redrawn_only_at_reset():
    eps_values = [10.0, 20.0, 30.0, 40.0, 50.0]
    env = make_env(task_cfg("ball_circle", 5), num_envs=3, seed=0, eps_values=eps_values)
    torch.manual_seed(0)
    rollout = env.rollout(15, break_when_any_done=False)
    eps = rollout["eps"].squeeze(-1)
    assert torch.equal(eps, rollout["next", "eps"].squeeze(-1))
    assert torch.isin(eps, torch.tensor(eps_values)).all()
    episodes = eps.reshape(3, 3, 5)  # [env, episode, step]: StepCounter truncates every 5 steps
    assert (episodes == episodes[..., :1]).all(), "eps changed within an episode"
    assert (episodes[:, 1:, 0] != episodes[:, :-1, 0]).any(), "eps never redrawn at a reset"
    torch.manual_seed(0)
    assert torch.equal(env.rollout(15, break_when_any_done=False)["eps"].squeeze(-1), eps), "not reproducible"
    env.close()


def test_partial_reset_keeps_other_envs_eps():
    env = make_env(task_cfg("ball_circle"), num_envs=3, seed=0, eps_values=list(range(10, 110, 10)))
    torch.manual_seed(0)
    td = env.reset()
    first = td["eps"].clone()
    drawn = set()
    for _ in range(8):
        td = env.rand_step(td)
        td = step_mdp(td)
        td["_reset"] = torch.tensor([[True], [False], [False]])
        td = env.reset(td)
        assert torch.equal(td["eps"][1:], first[1:])
        assert td["step_count"][0].item() == 0 and (td["step_count"][1:] > 0).all()
        drawn.add(td["eps"][0].item())
    assert len(drawn) > 1, "the resetting env never drew a new eps"
    env.close()


def test_eps_constant_within_episodes_that_end_at_different_steps():
    env = make_env(task_cfg("ball_circle", 4), num_envs=2, seed=0, eps_values=list(range(10, 110, 10)))
    torch.manual_seed(1)
    td = step_mdp(env.rand_step(env.reset()))
    td["_reset"] = torch.tensor([[True], [False]])
    td = env.reset(td)  # env 0 restarts, env 1 is one step into its episode
    rollout = env.rollout(12, auto_reset=False, tensordict=td, break_when_any_done=False)  # step_and_maybe_reset
    step_count, eps = rollout["step_count"].squeeze(-1), rollout["eps"].squeeze(-1)
    assert not torch.equal(step_count[0], step_count[1])
    continuing = step_count[:, 1:] != 0
    assert torch.equal(eps[:, 1:][continuing], eps[:, :-1][continuing])
    assert (eps[:, 1:][~continuing] != eps[:, :-1][~continuing]).any()
    env.close()


def test_fixed_mode_gives_env_i_eps_i_and_checks_length():
    cfg = task_cfg("ball_circle", 3)
    env = make_env(cfg, num_envs=3, seed=0, eps_values=[15, 35, 55], eps_mode="fixed")
    rollout = env.rollout(7, break_when_any_done=False)
    assert (rollout["eps"].squeeze(-1) == torch.tensor([15.0, 35.0, 55.0]).unsqueeze(-1)).all()
    env.close()
    with pytest.raises(ValueError, match=r"eps_values=\[15, 35\], num_envs=3"):
        make_env(cfg, num_envs=3, seed=0, eps_values=[15, 35], eps_mode="fixed")
    with pytest.raises(ValueError, match="'grid' is not one of"):
        make_env(cfg, num_envs=3, seed=0, eps_values=[15], eps_mode="grid")


def test_bullet_cost_matches_simulator_and_raw_action_is_kept():
    seed, steps = 7, 40
    actions = [np.array([3.0, 0.9 * (-1) ** (t // 10)], np.float32) for t in range(steps)]  # x is outside [-1, 1]
    env = make_env(task_cfg("ball_circle"), num_envs=1, seed=seed, eps_values=[20])
    td = env.reset()
    costs, episode_costs, observations = [], [], [td["observation"][0]]
    for action in actions:
        td["action"] = torch.as_tensor(action).unsqueeze(0)
        td = env.step(td)
        assert torch.equal(td["action"][0], torch.as_tensor(action)), "the tensordict must keep the raw action"
        costs.append(td["next", "cost"].item())
        episode_costs.append(td["next", "episode_cost"].item())
        observations.append(td["next", "observation"][0])
        td = step_mdp(td)
    env.close()
    with compat.process_std_streams():
        raw = gymnasium.make("SafetyBallCircle-v0")
    np.random.seed(seed)  # bullet-safety-gym draws from numpy's global RNG; reset(seed=) is ignored
    obs, _ = raw.reset()  # BulletBatchEnv.set_seed seeds that stream only; then the rollout's own reset
    raw_costs, raw_observations = [], [obs]
    for action in actions:
        obs, _, _, _, info = raw.step(np.clip(action, -1.0, 1.0))
        raw_costs.append(float(info.get("cost", 0.0)))
        raw_observations.append(obs)
    raw.close()
    assert costs == raw_costs and sum(raw_costs) > 0
    assert np.allclose(episode_costs, np.cumsum(raw_costs))
    assert torch.allclose(torch.stack(observations), torch.as_tensor(np.stack(raw_observations), dtype=torch.float32))


def test_simulator_receives_clipped_action():
    env = make_env(task_cfg("ball_circle"), num_envs=2, seed=0, eps_values=[20])
    td = env.reset()
    received = []
    inner = env.base_env._envs[0]  # the first gym env of the BulletBatchEnv
    inner_step = inner.step

    def spy(action):
        received.append(np.array(action))
        return inner_step(action)

    inner.step = spy
    td["action"] = torch.tensor([[3.0, -0.5], [-2.0, 0.25]])
    td = env.step(td)
    assert np.array_equal(received[0], np.array([1.0, -0.5], np.float32))
    assert torch.equal(td["action"], torch.tensor([[3.0, -0.5], [-2.0, 0.25]]))
    env.close()


@pytest.mark.parametrize("name", ["ball_circle", "half_cheetah_velocity"])
def test_sub_envs_get_distinct_reproducible_seeds(name):
    first = make_env(task_cfg(name), num_envs=3, seed=11, eps_values=[20])
    obs = first.reset()["observation"]
    second = make_env(task_cfg(name), num_envs=3, seed=11, eps_values=[20])
    assert torch.equal(second.reset()["observation"], obs), "same seed, different initial observations"
    assert not torch.equal(obs[0], obs[1]) and not torch.equal(obs[1], obs[2])
    first.close()
    second.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"suite": "mujoco"}, "unknown env suite 'mujoco'; allowed: ('bullet', 'safety_gymnasium', 'gymnasium')"),
     ({"id": "SafetyBallCircle-v9"}, "unknown bullet env id 'SafetyBallCircle-v9'; allowed: [")],
)
def test_unknown_suite_or_id_is_a_one_line_error(change, message):
    with pytest.raises(ValueError) as error:
        make_env({**task_cfg("ball_circle"), **change}, num_envs=1, seed=0, eps_values=[20])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


class _EpsPolicy(torch.nn.Module):
    """Deterministic policy reading observation and eps, with actions well outside [-1, 1]."""

    def forward(self, observation, eps):
        return torch.cat([observation[..., :1], eps], -1) * 10.0


def test_collector_batches_carry_cost_and_eps():
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector

    env = make_env(task_cfg("ball_circle", 5), num_envs=2, seed=0, eps_values=[20, 40])
    with pytest.raises(KeyError):
        env.reward_key  # two reward entries: callers must pass reward/cost keys explicitly
    policy = TensorDictModule(_EpsPolicy(), in_keys=["observation", "eps"], out_keys=["action"])
    collector = Collector(env, policy, frames_per_batch=20, total_frames=20, auto_register_policy_transforms=False)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.batch_size == (2, 10)
    assert torch.equal(batch["action"][..., 1:], batch["eps"] * 10.0)
    assert torch.equal(batch["next", "eps"], batch["eps"])
    cost = batch["next", "cost"].reshape(2, 2, 5)
    assert torch.equal(batch["next", "episode_cost"].reshape(2, 2, 5), cost.cumsum(-1))


@pytest.mark.slow
def test_parallel_env_with_safety_gymnasium_worker():
    # One spawn-started worker: it must import ccpo_pl (the shim) to build a safety-gymnasium env.
    env = make_env(task_cfg("half_cheetah_velocity", 4), num_envs=1, seed=3, eps_values=[20, 40], parallel=True)
    try:
        torch.manual_seed(0)
        rollout = env.rollout(12, break_when_any_done=False)
    finally:
        env.close()
    eps = rollout["eps"].squeeze(-1).reshape(3, 4)
    assert (eps == eps[:, :1]).all() and torch.isin(eps, torch.tensor([20.0, 40.0])).all()
    assert rollout["next", "cost"].shape == (1, 12, 1)
    sums = rollout["next", "cost"].reshape(3, 4).cumsum(-1).reshape(1, 12, 1)
    assert torch.equal(rollout["next", "episode_cost"], sums)


def test_env_configs_match_tasks():
    from omegaconf import OmegaConf

    from ccpo_pl.conf import CONF_DIR

    paths = sorted(path for path in (CONF_DIR / "env").glob("*.yaml") if path.stem != "custom")
    assert sorted(path.stem for path in paths) == sorted(TASKS)
    assert OmegaConf.load(CONF_DIR / "env" / "custom.yaml").env.suite == "gymnasium"  # any env: not a TASKS row
    for path in paths:
        cfg = OmegaConf.load(path)
        assert cfg.env.name == path.stem
        assert TASKS[path.stem] == (cfg.env.suite, cfg.env.id, cfg.env.max_episode_steps), path.name
        low, high = cfg.eps.range
        assert all(low <= eps <= high for eps in [*cfg.eps.behavior, *cfg.eps.eval]), path.name


def test_bullet_batch_env_resets_only_the_flagged_envs():
    env = BulletBatchEnv("SafetyBallCircle-v0", 3, seed=4)
    td = env.reset()
    for _ in range(5):
        td["action"] = torch.rand(3, 2) * 2 - 1
        td = step_mdp(env.step(td))
    before = td["observation"].clone()
    td["_reset"] = torch.tensor([[False], [True], [False]])  # as a collector asks for it: with the current data
    after = env.reset(td)["observation"]
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.equal(after[1], before[1])
    env.close()


def test_bullet_batch_env_ends_an_episode_at_the_time_limit_without_resetting_it():
    """The step that hits the time limit is truncated (not terminated) and returns that episode's last
    observation, as the raw simulator does; the next episode starts only at the next reset."""
    seed, limit = 5, 200  # SafetyBallCircle-v0's gym TimeLimit
    action = np.array([0.5, -0.3], np.float32)
    env = BulletBatchEnv("SafetyBallCircle-v0", 1, seed=seed)
    td = env.reset()
    truncated = []
    for _ in range(limit):
        td["action"] = torch.as_tensor(action).unsqueeze(0)
        td = env.step(td)
        truncated.append(bool(td["next", "truncated"]))
        assert not td["next", "terminated"].any()
        last = td["next", "observation"][0]
        td = step_mdp(td)
    env.close()
    with compat.process_std_streams():
        raw = gymnasium.make("SafetyBallCircle-v0")
    np.random.seed(seed)
    raw.reset()
    for _ in range(limit):
        obs, _, terminated, raw_truncated, _ = raw.step(action)
    raw.close()
    assert truncated == [False] * (limit - 1) + [True] and raw_truncated and not terminated
    assert torch.equal(last, torch.as_tensor(obs, dtype=last.dtype))
