"""The trainer end to end on tiny budgets: checkpoints, per-eps TensorBoard tags, resume, refusals, DDP."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ccpo_pl.checkpointing import safe_load
from ccpo_pl.evaluation import load_policy
from ccpo_pl.fit import ConfigError, check_resumable, fit, validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smoke_config):
    log_dir = tmp_path_factory.mktemp("logs")
    cfg = smoke_config(log_dir, "total_frames=800", "run_name=smoke")
    metrics = fit(cfg)
    return log_dir / "smoke", metrics, cfg


def test_smoke_fit_writes_checkpoint_sidecar_and_metrics(smoke_run):
    run_dir, metrics, cfg = smoke_run
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["training_state"]["stream"]["frames"] == 800
    assert (run_dir / "checkpoints" / "epoch0001.ckpt").exists()  # every 2nd epoch (0-based names) in smoke
    sidecar = safe_load(run_dir / "checkpoints" / "sidecars" / "rank0" / f"{ckpt['training_state']['sidecar']}.pt")
    assert int(sidecar["buffer"]["_storage"]["_len"]) == 800
    assert metrics["train/frames"] == 800
    for eps in cfg.eps.eval:
        assert math.isfinite(metrics[f"eval/eps_{eps:g}/reward"]) and metrics[f"eval/eps_{eps:g}/cost"] >= 0
    state = ckpt["state_dict"]
    assert torch.all(state["lam"] >= 0) and torch.all(state["eta"] > 0)


def test_smoke_fit_logs_per_eps_tags_against_frames(smoke_run, tb_scalars):
    run_dir, _, cfg = smoke_run
    tags = tb_scalars(run_dir)
    for eps in cfg.eps.behavior:
        for name in ("multipliers/lam", "multipliers/eta", "critic/q_c", "trust_region/kl_mean",
                     "trust_region/kl_cov"):
            assert f"{name}/eps_{eps:g}" in tags
        assert f"train/eps_{eps:g}/episode_cost" in tags
    assert not [t for t in tags if t.startswith("eps_")]  # per-threshold tags sit under a few sections
    for eps in cfg.eps.eval:
        assert f"eval/eps_{eps:g}/cost" in tags and f"eval/eps_{eps:g}/reward" in tags
    steps = [s for s, _ in tags["eval/avg_cv"]]
    assert steps == [400, 800]  # one evaluation per 400-frame epoch, x-axis = env frames
    assert all(math.isfinite(v) for _, v in tags["loss/critic"])


def test_smoke_fit_logs_the_policy_spread_and_the_mean_training_return(smoke_run, tb_scalars):
    run_dir, _, cfg = smoke_run
    tags = tb_scalars(run_dir)
    std, entropy = dict(tags["train/policy_std"]), dict(tags["train/policy_entropy"])
    assert std and std.keys() == entropy.keys()
    assert all(0 < v < math.exp(2.0) for v in std.values())  # sigma is clamped to exp(log_std_max = 2)
    assert all(math.isfinite(v) for v in entropy.values())
    for name in ("episode_reward", "episode_cost"):
        mean = dict(tags[f"train/{name}"])
        per_eps = [dict(tags.get(f"train/eps_{e:g}/{name}", [])) for e in cfg.eps.behavior]
        assert mean
        for step, value in mean.items():  # the mean over the behaviour thresholds that ended episodes
            ended = [p[step] for p in per_eps if step in p]
            assert value == pytest.approx(sum(ended) / len(ended), rel=1e-5)


def test_resume_continues_counters_buffer_and_tensorboard(tmp_path, smoke_config, tb_scalars):
    first = fit(smoke_config(tmp_path, "total_frames=800", "run_name=r"))
    run_dir = tmp_path / "r"
    before = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert first["train/frames"] == 800
    fit(smoke_config(tmp_path, "total_frames=1600", "run_name=r"))  # same run name: resumes and extends the budget
    after = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert after["training_state"]["stream"]["frames"] == 1600
    assert after["global_step"] == 2 * before["global_step"]
    assert after["epoch"] == 2 * before["epoch"] + 1
    sidecar = safe_load(run_dir / "checkpoints" / "sidecars" / "rank0" / f"{after['training_state']['sidecar']}.pt")
    assert int(sidecar["buffer"]["_storage"]["_len"]) == 1600  # the first 800 transitions were restored
    assert [p.name for p in run_dir.iterdir() if p.is_dir() and p.name != "checkpoints"] == ["tb"]
    steps = [s for s, _ in tb_scalars(run_dir)["eval/avg_reward"]]
    assert steps == [400, 800, 1200, 1600]


def test_finished_run_is_not_retrained(smoke_run, capsys, smoke_config):
    run_dir, _, _ = smoke_run
    before = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert fit(smoke_config(run_dir.parent, "total_frames=800", "run_name=smoke")) == {"train/frames": 800.0}
    assert "raise total_frames to continue" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_resume_from_another_runs_checkpoint_loads_its_buffer(smoke_run, tmp_path, smoke_config):
    run_dir, _, _ = smoke_run
    fit(smoke_config(tmp_path, "total_frames=1200", "run_name=child", f"ckpt_path={run_dir}/checkpoints/last.ckpt"))
    after = safe_load(tmp_path / "child" / "checkpoints" / "last.ckpt")
    sidecar = safe_load(tmp_path / "child" / "checkpoints" / "sidecars" / "rank0"
                        / f"{after['training_state']['sidecar']}.pt")
    assert after["training_state"]["stream"]["frames"] == 1200
    assert int(sidecar["buffer"]["_storage"]["_len"]) == 1200  # the parent's 800 transitions came along


def test_changed_config_against_existing_run_is_refused(smoke_run, smoke_config):
    run_dir, _, _ = smoke_run
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="algo.kappa"):
        fit(smoke_config(run_dir.parent, "total_frames=800", "run_name=smoke", "algo.kappa=0.5"))
    assert files == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eps.behavior=[]", "eps.behavior is empty"),
        ("eps.behavior=[20,-5]", "[-5]"),
        ("eps.eval=[0,20]", "[0]"),
        ("eps.eval=[5,20]", "outside eps.range"),
        ("eps.range=[70,10]", "0 < low < high"),
        ("trainer.devices=4096", "trainer.devices=4096"),
        ("total_frames=0", "total_frames=0"),
        ("algo.name=nope", "unknown algo 'nope'"),
        ("run_name=a/b", "run_name='a/b'"),
        pytest.param("trainer=gpu", "no GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ],
)
def test_bad_config_values_give_one_line_errors(tmp_path, override, message, smoke_config):
    with pytest.raises(ConfigError) as err:
        validate(smoke_config(tmp_path, override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_and_corrupt_checkpoints_are_refused(tmp_path, smoke_config):
    with pytest.raises(ConfigError, match="does not exist"):
        fit(smoke_config(tmp_path, "ckpt_path=nowhere.ckpt", "run_name=a"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        fit(smoke_config(tmp_path, f"ckpt_path={bad}", "run_name=b"))


def _run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "ccpo_pl.fit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_unknown_env_exits_nonzero_with_one_line(tmp_path):
    out = _run_cli("env=nope", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]] and "unknown env 'nope'" in lines[0] and "ball_circle" in lines[0]
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("compile_update", ["false", "true"])  # true: the default config's compiled update
def test_ddp_two_cpu_processes_keep_parameters_identical(tmp_path, compile_update):
    out = _run_cli("experiment=smoke", "trainer.devices=2", "check_sync=true", "run_name=ddp", "total_frames=1600",
                   f"algo.compile={compile_update}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ddp_sync_checks="))
    fields = dict(kv.split("=") for kv in line.split())
    assert int(fields["ddp_sync_checks"]) == 2 * 80  # 2 epochs x 2 collections x 40 updates
    assert float(fields["max_param_diff"]) == 0.0
    assert fields["ranks"] == "2"
    # the CVI update's one backward reaches every parameter: DDP does not search for unused ones, nor warn per rank
    assert "find_unused_parameters=True" not in out.stdout + out.stderr
    ckpt_dir = tmp_path / "logs" / "smoke" / "ddp" / "checkpoints"  # experiment=smoke: log_dir logs/smoke
    token = safe_load(ckpt_dir / "last.ckpt")["training_state"]["sidecar"]
    obs = [safe_load(ckpt_dir / "sidecars" / f"rank{r}" / f"{token}.pt")["buffer"]["_storage"]["_storage"]
           ["observation"] for r in (0, 1)]
    assert obs[0].shape == obs[1].shape and not torch.equal(obs[0], obs[1])  # each rank collected its own data


def test_a_run_older_than_a_setting_resumes_with_it_and_says_so(smoke_run, tmp_path, capsys, smoke_config):
    """A setting added to the configs after the run started (here `algo.episode_cost_decay`) does not block resuming;
    a setting the run had, changed, still does."""
    run_dir, _, _ = smoke_run
    old_dir = tmp_path / "smoke"
    shutil.copytree(run_dir, old_dir)
    snapshot = OmegaConf.load(old_dir / "config.yaml")
    del snapshot.algo["episode_cost_decay"]
    OmegaConf.save(snapshot, old_dir / "config.yaml")
    with pytest.raises(ConfigError, match="algo.kappa"):
        fit(smoke_config(tmp_path, "total_frames=1200", "run_name=smoke", "algo.kappa=0.5"))
    assert fit(smoke_config(tmp_path, "total_frames=1200", "run_name=smoke"))["train/frames"] == 1200
    assert "predates the settings algo.episode_cost_decay=0.0; continuing" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "critic_key"),
    [
        ("algo.vve=false", "critic.q.net.0.weight"),         # eps appended to a plain critic's input
        ("algo.cvi=false", "critic.psi.net.0.weight"),       # Lagrangian actor loss instead of E/M-steps
        ("algo.z.kind=mlp", "critic.z.r.0.weight"),          # learned z(eps) encoder
        ("algo.critic_trunk=separate", "critic.psi.net.1.0.weight"),  # FSRL-style separate reward/cost MLPs
    ],
)
def test_ablations_and_critic_variants_train_through_fit(tmp_path, override, critic_key, smoke_config):
    metrics = fit(smoke_config(tmp_path, "total_frames=400", "run_name=v", override))
    assert metrics["train/frames"] == 400 and math.isfinite(metrics["eval/avg_reward"])
    ckpt = safe_load(tmp_path / "v" / "checkpoints" / "last.ckpt")
    assert critic_key in ckpt["state_dict"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    eta, alpha_mu = ckpt["state_dict"]["eta"], ckpt["state_dict"]["alpha_mu"]
    if override == "algo.cvi=false":  # the Lagrangian branch never runs the E-step or the KL multipliers
        assert torch.all(eta == 1.0) and torch.all(alpha_mu == 0.0)
    else:
        assert torch.any(eta != 1.0)


def test_load_policy_rebuilds_the_trained_actor_without_training_state(smoke_run, tmp_path):
    run_dir, _, cfg = smoke_run
    actor, run_cfg = load_policy(run_dir / "checkpoints" / "last.ckpt")
    state = safe_load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert run_cfg["env"]["id"] == cfg.env.id and run_cfg["algo"]["name"] == "ccpo"
    assert all(torch.equal(v, state[f"actor.{k}"]) for k, v in actor.state_dict().items())
    loc, _ = actor(torch.zeros(3, 8), torch.tensor([[10.0], [40.0], [70.0]]))  # BallCircle: 8-dim obs, 2-dim action
    assert loc.shape == (3, 2)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not a ccpo_pl.fit checkpoint"):
        load_policy(other)


def test_a_changed_config_names_three_differences_and_counts_the_rest(tmp_path):
    """The refusal of a changed config names the first differences and says how many more there are."""
    from ccpo_pl.fit import check_resumable

    stored = {"seed": 0, "total_frames": 10, "env": {"name": "a"}, "collect": {"num_envs": 1},
              "trainer": {"devices": 1}, "eps": {"bin": 5, "range": [10, 70]}, "algo": {"kappa": 0.1, "tau": 0.05}}
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create(stored), run_dir / "config.yaml")
    changed = {**stored, "seed": 1, "eps": {"bin": 2, "range": [10, 60]}, "algo": {"kappa": 0.2, "tau": 0.1}}
    with pytest.raises(ConfigError) as err:
        check_resumable(run_dir, changed)
    message = str(err.value)
    assert message.count(" -> ") == 3 and message.endswith("; and 2 more); use another run_name or the run's own "
                                                           "config")
    with pytest.raises(ConfigError) as err:
        check_resumable(run_dir, {**stored, "seed": 1})
    assert "(seed: 0 -> 1); use another run_name" in str(err.value)  # one difference: named, nothing more


def test_the_readme_order_default_run_then_smoke_run_trains_both(tmp_path, monkeypatch, compose_config):
    """The README starts the default run, then the smoke tour: the smoke run has a directory of its own."""
    monkeypatch.chdir(tmp_path)
    default, smoke = compose_config(), compose_config("experiment=smoke")
    default_dir = Path(default.log_dir) / default.run_name
    default_dir.mkdir(parents=True)
    (default_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(default, resolve=True)))
    smoke_plain = OmegaConf.to_container(smoke, resolve=True)
    assert Path(smoke.log_dir) / smoke.run_name == Path("logs/smoke/ball_circle-ccpo-s0")
    check_resumable(Path(smoke.log_dir) / smoke.run_name, smoke_plain)  # a new run: nothing to refuse
    with pytest.raises(ConfigError, match="exists with a different config"):  # what sharing a directory did
        check_resumable(default_dir, smoke_plain)


def test_a_finished_fit_says_where_its_run_is_and_what_comes_next(tmp_path, smoke_config):
    from ccpo_pl.fit import finished_lines

    cfg = smoke_config(tmp_path, "run_name=r")
    metrics = {"eval/avg_reward": 17.4, "eval/avg_cv": 0.0, "eval/avg_reward_unseen": 20.7, "train/frames": 1600.0,
               "time/loop_s": 12.97, "time/eval_s": 5.7, "time/update_s": 4.2, "time/updates": 400.0,
               "time/steady_env_steps_per_s": 268.6, "time/steady_update_ms": 10.9, "eval/eps_10/cost": 3.0}
    lines = finished_lines(cfg, metrics)
    run = tmp_path / "r"
    assert lines[0] == f"ccpo_pl.fit: run {run} at 1600 frames: checkpoints/, tb/"
    assert lines[1] == "train/frames=1600 eval/avg_reward=17.4 eval/avg_cv=0"
    assert lines[2:] == [f"next: python -m ccpo_pl.evaluate run={run}", f"      tensorboard --logdir {run}"]
    assert all(len(line.replace(str(run), "logs/<run>")) <= 80 for line in lines)  # not a 300-character dump
    csv = finished_lines(smoke_config(tmp_path, "run_name=r", "logger=csv"), metrics)
    assert csv[0].endswith("checkpoints/, csv/") and len(csv) == 3


def test_the_python_training_api_returns_the_run_directory_and_its_policy(tmp_path):
    import numpy as np

    import ccpo_pl

    with pytest.raises(ConfigError, match=r"^unknown env 'nope'; allowed: "):
        ccpo_pl.train(["env=nope"])
    trained = ccpo_pl.train(["experiment=smoke", f"log_dir={tmp_path}", "total_frames=400", "threads=1",
                             "collect.collects_per_epoch=1"])
    assert trained.run_dir == tmp_path / "ball_circle-ccpo-s0"
    assert (trained.run_dir / "checkpoints" / "last.ckpt").is_file() and trained.metrics["train/frames"] == 400
    assert "ccpo_pl.train experiment=smoke" in (trained.run_dir / "commands.txt").read_text()
    action = trained.policy.predict(np.zeros(8, dtype=np.float32), 40.0)
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    again = ccpo_pl.train(["experiment=smoke", f"log_dir={tmp_path}", "total_frames=400", "threads=1",
                           "collect.collects_per_epoch=1"])  # the same command resumes: the run is finished
    assert again.run_dir == trained.run_dir and again.metrics == {"train/frames": 400.0}
