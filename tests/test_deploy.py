"""Deployment: `ccpo_pl.load(...).predict` against the checkpoint's actor, exported ONNX / TorchScript files run in a
process without ccpo_pl, the export command's refusals, and `run_episodes` with constant and budget schedules in
the real BallCircle env."""

from __future__ import annotations

import functools
import io
import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import ccpo_pl
from ccpo_pl import compat
from ccpo_pl.algos.registry import ALGOS
from ccpo_pl.deploy import Policy, policy_metadata, remaining_budget, run_episodes
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import EXPLORATION, EnvPool, evaluate_thresholds, load_policy
from ccpo_pl.export import export_policy, policy_bytes
from ccpo_pl.fit import fit
from ccpo_pl.nets import make_policy

REPO = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM = 8, 2  # BallCircle
# below, inside and above the trained range [10, 70], on and between the behaviour thresholds 20, 40, 60
EPS = [5.0, 10.0, 20.0, 25.0, 40.0, 55.0, 60.0, 70.0, 90.0]
DEPLOY = ("threads=1", "eps.eval=[10,70]")  # on experiment=smoke


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_config):
    """A smoke-trained run of CCPO (EpsActor) and of C-PPO-Lag (CombinedActor): one update each, real checkpoints."""
    log_dir = tmp_path_factory.mktemp("logs")
    for algo in ("ccpo", "c_ppo_lag"):
        fit(smoke_config(log_dir, *DEPLOY, f"algo={algo}", "total_frames=400", f"run_name={algo}"))
    return {algo: log_dir / algo for algo in ("ccpo", "c_ppo_lag")}


def reference(run: Path, obs: np.ndarray, eps) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's actor as evaluation loads it, at [B] observations and thresholds: the mean action clipped to
    the box [-1, 1] (as the env clips it) and the std."""
    actor, _ = load_policy(run / "checkpoints" / "last.ckpt")
    eps = torch.tensor(np.broadcast_to(eps, len(obs)), dtype=torch.float32)[:, None]
    with torch.no_grad():
        loc, scale = actor(torch.as_tensor(obs, dtype=torch.float32), eps)
    return loc.clamp(-1.0, 1.0).numpy(), scale.numpy()


@pytest.mark.parametrize("algo", ["ccpo", "c_ppo_lag"])
def test_predict_matches_the_checkpoint_actor_for_numpy_torch_single_and_batch(runs, algo):
    policy = ccpo_pl.load(runs[algo])
    meta = policy.metadata
    assert meta["algo"] == algo and meta["task"] == "ball_circle" and meta["env_id"] == "SafetyBallCircle-v0"
    assert (meta["obs_dim"], meta["act_dim"]) == (OBS_DIM, ACT_DIM)
    assert meta["eps_range"] == [10.0, 70.0] and meta["eps_behavior"] == [20.0, 40.0, 60.0]
    assert (meta["action_low"], meta["action_high"]) == (-1.0, 1.0) and meta["observation_normalisation"] == "none"
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(len(EPS), OBS_DIM))
    ref, _ = reference(runs[algo], obs, np.array(EPS))
    assert np.ptp(ref, axis=0).max() > 1e-3  # the thresholds change the action: a test that could fail

    batch = policy.predict(obs, np.array(EPS))
    assert isinstance(batch, np.ndarray) and batch.shape == (len(EPS), ACT_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, ref, atol=1e-6)
    for i, e in enumerate(EPS):  # one observation, eps as a float, a 0-d array and a 0-d tensor
        for eps in (e, np.float64(e), np.array(e), torch.tensor(e)):
            single = policy.predict(obs[i], eps)
            assert single.shape == (ACT_DIM,)
            np.testing.assert_allclose(single, ref[i], atol=1e-6)
    scalar_eps = policy.predict(obs, 25.0)  # one eps for the whole batch
    np.testing.assert_allclose(scalar_eps, reference(runs[algo], obs, 25.0)[0], atol=1e-6)
    as_tensor = policy.predict(torch.as_tensor(obs, dtype=torch.float32), torch.tensor(EPS))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (len(EPS), ACT_DIM)
    np.testing.assert_allclose(as_tensor.numpy(), ref, atol=1e-6)
    assert isinstance(policy.predict(obs[0].tolist(), 40.0), np.ndarray)
    torch.manual_seed(0)
    sampled = policy.predict(obs, np.array(EPS), deterministic=False)
    assert not np.allclose(sampled, ref) and np.all(np.abs(sampled) <= 1.0)


@pytest.mark.parametrize("obs, eps, match", [
    (np.zeros(7), 40.0, r"observation has shape \[7\]; allowed: \[8\] or \[B, 8\]"),
    (np.zeros((2, 3, 8)), 40.0, r"observation has shape \[2, 3, 8\]"),
    (np.array([0, 0, np.nan, 0, 0, 0, 0, 0]), 40.0, r"observation has NaN or inf \(first at index \(2,\): nan\)"),
    (np.zeros(8), 0.0, r"eps=0.0 is not allowed; eps must be finite and > 0"),
    (np.zeros(8), -5, r"eps=-5.0 is not allowed"),
    (np.zeros(8), float("nan"), r"eps=nan is not allowed"),
    (np.zeros((3, 8)), np.array([10.0, math.inf, -1.0]), r"eps=\[inf, -1.0\] is not allowed"),
    (np.zeros((3, 8)), np.array([10.0, 20.0]), r"eps has shape \[2\]; allowed: a float, a 0-d array, or \[B\]"),
    (np.zeros(8), np.array([10.0, 20.0]), r"eps has shape \[2\]"),
    (np.zeros((2, 8)), np.ones((2, 1)), r"eps has shape \[2, 1\]"),
])
def test_predict_rejects_bad_input_with_one_line_naming_the_value(runs, obs, eps, match):
    policy = ccpo_pl.load(runs["ccpo"])
    with pytest.raises(ValueError, match=match) as err:
        policy.predict(obs, eps)
    assert "\n" not in str(err.value)


def test_load_refuses_a_missing_run_with_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass a ccpo_pl.fit run directory or a .ckpt file"):
        ccpo_pl.load(tmp_path / "nothing")


def test_import_ccpo_pl_stays_cheap_and_deploy_is_imported_on_use():
    code = ("import sys, ccpo_pl; heavy = [m for m in ('torch', 'numpy', 'torchrl', 'lightning') if m in sys.modules];"
            " assert not heavy, heavy; assert callable(ccpo_pl.deploy.run_episodes); assert 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- exported files, run without ccpo_pl
RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    paths, obs, eps = sys.argv[1:-2], np.load(sys.argv[-2]), np.load(sys.argv[-1])
    out = {}
    for path in paths:
        rows = []
        for batch in ([slice(0, len(obs))] + [slice(i, i + 1) for i in range(len(obs))]):
            if path.endswith(".onnx"):
                import onnxruntime
                session = onnxruntime.InferenceSession(path)
                result = session.run(None, {"observation": obs[batch], "eps": eps[batch]})
                meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
            else:
                import torch
                files = {"metadata.json": ""}
                module = torch.jit.load(path, _extra_files=files)
                result = [x.numpy() for x in module(torch.from_numpy(obs[batch]), torch.from_numpy(eps[batch]))]
                meta = json.loads(files["metadata.json"])
            rows.append([r.tolist() for r in result])
        out[path] = {"outputs": rows, "metadata": meta}
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("ccpo_pl", "torchrl", "tensordict"))
    print(json.dumps(out))
""")


def test_exported_files_run_without_ccpo_pl_and_match_the_checkpoint_policy(runs, tmp_path):
    rng = np.random.default_rng(1)
    obs, eps = rng.normal(size=(len(EPS), OBS_DIM)).astype(np.float32), np.array(EPS, dtype=np.float32)
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "eps.npy", eps)
    expected = {}
    for algo, run in runs.items():
        metadata = ccpo_pl.load(run).metadata
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
            path = export_policy(run, fmt, tmp_path / f"{algo}{suffix}", std=True)
            expected[str(path)] = (*reference(run, obs, eps), metadata)
    proc = subprocess.run([sys.executable, "-c", RUNNER, *expected, str(tmp_path / "obs.npy"),
                           str(tmp_path / "eps.npy")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("modules") == []  # neither ccpo_pl nor TorchRL was imported to run the files
    assert set(result) == set(expected)
    for path, (action, std, meta) in expected.items():
        rows = result[path]["outputs"]
        assert result[path]["metadata"] == meta
        np.testing.assert_allclose(np.array(rows[0][0]), action, atol=1e-5, err_msg=path)  # the batch of 9
        np.testing.assert_allclose(np.array(rows[0][1]), std, rtol=1e-5, err_msg=path)
        unbatched = np.concatenate([np.array(r[0]) for r in rows[1:]])  # one observation at a time
        np.testing.assert_allclose(unbatched, action, atol=1e-5, err_msg=path)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_algorithm_traces_to_files_that_act_as_its_policy(algo, tmp_path, smoke_config):
    """Every registered actor (random weights) through both formats, run here, at several batch sizes."""
    import onnxruntime

    cfg = OmegaConf.to_container(smoke_config(tmp_path, *DEPLOY, f"algo={algo}"), resolve=True)
    torch.manual_seed(0)
    actor = ALGOS[algo].make_actor(cfg, OBS_DIM, ACT_DIM).eval()
    rng = np.random.default_rng(2)
    obs, eps = rng.normal(size=(len(EPS), OBS_DIM)).astype(np.float32), np.array(EPS, dtype=np.float32)
    with torch.no_grad():
        loc = actor(torch.from_numpy(obs), torch.from_numpy(eps)[:, None])[0].numpy()
    bound = float(np.median(np.abs(loc)))  # a box that clips about half of the mean actions
    policy = Policy(actor, policy_metadata(cfg, OBS_DIM, ACT_DIM, (-bound, bound)))
    want = policy.predict(obs, eps)
    np.testing.assert_array_equal(want, loc.clip(-bound, bound))
    assert np.any(np.abs(loc) > bound) and np.any(np.abs(loc) < bound)  # the clip is part of the exported policy
    session = onnxruntime.InferenceSession(policy_bytes(policy, "onnx"))
    traced = torch.jit.load(io.BytesIO(policy_bytes(policy, "torchscript")))
    for rows in (slice(0, 9), slice(2, 3), slice(3, 8)):
        got_onnx = session.run(None, {"observation": obs[rows], "eps": eps[rows]})[0]
        got_ts = traced(torch.from_numpy(obs[rows]), torch.from_numpy(eps[rows])).numpy()
        np.testing.assert_allclose(got_onnx, want[rows], atol=1e-5)
        np.testing.assert_allclose(got_ts, want[rows], atol=1e-5)


def test_export_command_writes_a_file_and_refuses_to_overwrite_it(runs, tmp_path):
    out = tmp_path / "policy.onnx"
    command = [sys.executable, "-m", "ccpo_pl.export", f"run={runs['ccpo']}", "format=onnx", f"out={out}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"out={out} format=onnx std=False"
    written = out.read_bytes()
    proc = subprocess.run(command + ["std=true"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"ccpo_pl.export: error: out={str(out)!r} exists; pass another "
                                                    f"out= or overwrite=true to replace it")
    assert out.read_bytes() == written
    export_policy(runs["ccpo"], "onnx", out, std=True, overwrite=True)
    assert out.read_bytes() != written and sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]
    with pytest.raises(ConfigError, match="format='tflite'; allowed: onnx, torchscript"):
        export_policy(runs["ccpo"], "tflite", tmp_path / "p.tflite")
    with pytest.raises(ConfigError, match="is a directory"):
        export_policy(runs["ccpo"], "onnx", tmp_path)
    assert export_policy(runs["ccpo"], "torchscript") == runs["ccpo"] / "policy.pt"


# ---------------------------------------------------------------- eps chosen at run time in the real env
def make_bullet_env(env_id: str, seed: int) -> gym.Env:
    """A gymnasium BallCircle env seeded the way evaluation seeds its envs (bullet draws from numpy's global RNG)."""
    with compat.process_std_streams():
        import bullet_safety_gym  # noqa: F401  (registers the ids)

        np.random.seed(seed)
        env = gym.make(env_id)
    np.random.seed(seed)
    return env


def test_run_episodes_at_a_constant_eps_reproduces_the_evaluation(runs):
    policy = ccpo_pl.load(runs["ccpo"])
    actor, cfg = load_policy(runs["ccpo"] / "checkpoints" / "last.ckpt")
    for eps in (10.0, 55.0):
        reward, cost, _ = evaluate_thresholds(make_policy(actor), cfg["env"], [eps], 1, seed=7, max_steps=200)
        env = make_bullet_env(cfg["env"]["id"], seed=7)
        (episode,) = run_episodes(policy, env, lambda step, so_far: eps, episodes=1)
        env.close()
        assert episode.length == 200 and np.all(episode.eps == eps)
        assert episode.cost == cost.item() and episode.cost == episode.step_cost.sum()
        assert episode.reward == pytest.approx(reward.item(), rel=1e-5, abs=1e-4)


def test_sampled_action_episodes_depend_on_the_seed_only_and_leave_the_callers_streams_alone(runs):
    actor, cfg = load_policy(runs["ccpo"] / "checkpoints" / "last.ckpt")
    results = []
    for caller_seed, seed in ((1, 7), (2, 7), (2, 8)):
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        torch_state, np_state = torch.get_rng_state(), np.random.get_state()
        results.append(evaluate_thresholds(make_policy(actor), cfg["env"], [20.0, 50.0], 2, seed=seed, max_steps=200,
                                           batch_envs=3, exploration=EXPLORATION["stochastic"]))
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert np.array_equal(np.random.get_state()[1], np_state[1])
    (r1, c1, _), (r2, c2, _), (r3, _, _) = results
    assert torch.equal(r1, r2) and torch.equal(c1, c2)  # what ran before does not change the episodes
    assert not torch.equal(r1, r3)  # the seed does


@pytest.mark.parametrize(("exploration", "max_envs", "kept_batches"),
                         [("deterministic", 64, 2), ("stochastic", 64, 2), ("deterministic", 3, 1)])
def test_kept_evaluation_envs_give_the_episodes_of_new_ones(runs, exploration, max_envs, kept_batches):
    """An `EnvPool` reseeds and resets its bullet envs instead of rebuilding them: on BallCircle every later call,
    at any seed, gives the episodes that a call building new envs gives. It keeps at most `max_envs` sub-envs (the
    batch of 3 is closed to make room for the batch of 1 when 3 is the bound) and closes them with the pool."""
    actor, cfg = load_policy(runs["ccpo"] / "checkpoints" / "last.ckpt")
    run = functools.partial(evaluate_thresholds, make_policy(actor), cfg["env"], [20.0, 50.0], 2, max_steps=200,
                            batch_envs=3, exploration=EXPLORATION[exploration])
    pool = EnvPool(max_envs)
    first = None
    try:
        for seed in (7, 8, 7):
            kept, new = run(seed=seed, pool=pool), run(seed=seed)
            for a, b in zip(kept, new):
                assert torch.equal(a, b)
            first = first or list(pool._envs.values())
        assert len(pool._envs) == kept_batches  # the grid's two batches (3 + 1 sub-envs), or the last one
        envs = list(pool._envs.values())
        assert (envs == first) == (kept_batches == 2)  # built once each where both fit
    finally:
        pool.close()
    assert not pool._envs and all(env.is_closed for env in envs)


def test_remaining_budget_schedule_sees_the_accumulated_cost(runs):
    policy = ccpo_pl.load(runs["ccpo"])
    budget, horizon = 10.0, policy.metadata["max_episode_steps"]
    schedule = remaining_budget(budget, horizon)
    assert schedule(0, {"episode_cost": 0.0}) == budget
    assert schedule(100, {"episode_cost": 0.0}) == pytest.approx(2 * budget)  # unspent: twice the rate
    assert schedule(100, {"episode_cost": 5.0}) == pytest.approx(budget)
    assert schedule(150, {"episode_cost": 12.0}) == pytest.approx(budget * 1e-6)  # overspent: the floor
    seen = []
    env = make_bullet_env(policy.metadata["env_id"], seed=7)
    (episode,) = run_episodes(policy, env, lambda step, so_far: seen.append(dict(so_far)) or schedule(step, so_far))
    env.close()
    assert episode.cost > budget  # the smoke policy is barely trained: it spends more than the budget
    cost_before = np.concatenate([[0.0], np.cumsum(episode.step_cost)[:-1]])
    assert [s["episode_cost"] for s in seen] == pytest.approx(cost_before.tolist())
    steps = np.arange(horizon)
    np.testing.assert_allclose(episode.eps, np.maximum((budget - cost_before) * horizon / (horizon - steps),
                                                       budget * 1e-6))
    first = int(np.nonzero(episode.step_cost)[0][0])
    assert episode.eps[first + 1] < episode.eps[first]  # the first cost lowers eps at the next step
    assert np.all(np.diff(episode.eps[: first + 1]) > 0)  # before it, the unspent budget raises it
    clipped = remaining_budget(budget, horizon, eps_range=policy.metadata["eps_range"])
    assert clipped(150, {"episode_cost": 12.0}) == 10.0 and clipped(190, {"episode_cost": 0.0}) == 70.0


class RecordSteps(gym.Wrapper):
    """Keeps what every `step` of the wrapped env returned."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = []

    def step(self, action):
        out = self.env.step(action)
        self.steps.append(out)
        return out


def test_run_episodes_reads_the_cost_of_a_safety_gymnasium_step(tmp_path, smoke_config):
    """Safety-Gymnasium returns (obs, reward, cost, terminated, truncated, info): the cost is the third value."""
    import safety_gymnasium

    cfg = OmegaConf.to_container(smoke_config(tmp_path, *DEPLOY, "env=point_circle"), resolve=True)
    env = RecordSteps(safety_gymnasium.make(cfg["env"]["id"]))
    obs_dim = env.observation_space.shape[0]
    torch.manual_seed(0)
    policy = Policy(ALGOS["ccpo"].make_actor(cfg, obs_dim, 2).eval(), policy_metadata(cfg, obs_dim, 2, (-1.0, 1.0)))
    episodes = run_episodes(policy, env, lambda step, so_far: 20.0 + so_far["episode"], episodes=2, seed=3)
    env.close()
    costs = np.array([out[2] for out in env.steps], dtype=float)
    ends = [i + 1 for i, out in enumerate(env.steps) if out[3] or out[4]]  # terminated or truncated
    assert [ep.length for ep in episodes] == [ends[0], ends[1] - ends[0]] and ends[1] == len(env.steps) > 400
    assert costs.sum() > 0  # the random policy leaves the circle's safe area
    np.testing.assert_array_equal(np.concatenate([ep.step_cost for ep in episodes]), costs)
    parts = np.split(np.arange(len(costs)), ends[:1])
    assert [ep.cost for ep in episodes] == pytest.approx([costs[p].sum() for p in parts])
    assert [ep.reward for ep in episodes] == pytest.approx([sum(env.steps[i][1] for i in p) for p in parts])
    assert np.all(episodes[0].eps == 20.0) and np.all(episodes[1].eps == 21.0)  # eps chosen per episode


@pytest.mark.parametrize("args, match", [((0.0, 200), "total_budget=0.0 must be a finite number > 0"),
                                          ((10.0, 0), "horizon=0 must be a positive integer"),
                                          ((math.nan, 200), "total_budget=nan")])
def test_remaining_budget_rejects_bad_values(args, match):
    with pytest.raises(ValueError, match=match):
        remaining_budget(*args)


def test_predict_outside_the_trained_range_warns_once(smoke_config, tmp_path):
    cfg = OmegaConf.to_container(smoke_config(tmp_path, *DEPLOY), resolve=True)
    policy = Policy(ALGOS["ccpo"].make_actor(cfg, OBS_DIM, ACT_DIM).eval(),
                    policy_metadata(cfg, OBS_DIM, ACT_DIM, (-1.0, 1.0)))
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.predict(obs, 40.0)  # inside [10, 70]: no warning
        policy.predict(np.zeros((2, OBS_DIM)), np.array([10.0, 70.0]))
    with pytest.warns(UserWarning, match=r"^eps=500 is outside the trained range \[10, 70\]: the policy extrapolates"):
        policy.predict(obs, 500.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.predict(obs, 500.0)  # once per policy
        policy.predict(np.zeros((2, OBS_DIM)), np.array([5.0, 40.0]))


def test_load_reads_the_action_box_from_the_checkpoint_without_the_simulator(runs):
    """A deployed policy loads without building an env: the checkpoint stores the action box."""
    code = textwrap.dedent(f"""
        import json, sys, ccpo_pl
        policy = ccpo_pl.load({str(runs['ccpo'])!r})
        box = [policy.metadata["action_low"], policy.metadata["action_high"]]
        print(json.dumps([box, [m for m in ("bullet_safety_gym", "safety_gymnasium", "pybullet") if m in sys.modules]]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    box, simulators = json.loads(proc.stdout.strip().splitlines()[-1])
    assert box == [-1.0, 1.0] and simulators == []
    assert "AdroitHand" not in proc.stderr and "LeafSpec" not in proc.stderr  # notices ccpo_pl.quiet names
    ckpt = torch.load(runs["ccpo"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["action_box"] == [-1.0, 1.0]


def test_load_of_a_checkpoint_without_the_action_box_reads_it_from_the_env():
    run = REPO / "tests" / "fixtures" / "checkpoints_main" / "ball_circle-ccpo-s0"
    assert "action_box" not in torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    policy = ccpo_pl.load(run)
    assert (policy.metadata["action_low"], policy.metadata["action_high"]) == (-1.0, 1.0)
