"""The module state-dict contract: the modules built today from the configs of the run directories in
`tests/fixtures/checkpoints_main/` (written by an earlier version) have exactly those checkpoints' state-dict keys and
shapes, load them strictly, keep their hyper-parameters, and their policies rebuild from them for evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ccpo_pl.algos.registry import ALGOS, build
from ccpo_pl.checkpointing import safe_load
from ccpo_pl.validation import current_run_config

RUNS = sorted((Path(__file__).parents[1] / "fixtures" / "checkpoints_main").glob("*-s0"))


def built_module(run: Path):
    cfg = OmegaConf.create(current_run_config(OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))))
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    module = build(cfg, hp["obs_dim"], hp["act_dim"], eps_behavior=list(cfg.eps.behavior),
                   eps_range=list(cfg.eps.range), eps_bin=cfg.eps.bin, eps_eval=list(cfg.eps.eval),
                   horizon=int(cfg.env.max_episode_steps), total_frames=int(cfg.total_frames), seed=int(cfg.seed))
    return module, ckpt


def test_the_run_directories_are_there():
    assert {r.name.split("-")[1] for r in RUNS} == {"ccpo", "v_sac_lag", "c_ppo_lag", "cpo"}


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_todays_module_loads_the_checkpoint_strictly(run):
    module, ckpt = built_module(run)
    state = dict(ckpt["state_dict"])
    if hasattr(module, "fill_state_defaults"):
        module.fill_state_defaults(state)
    mine = module.state_dict()
    assert sorted(mine) == sorted(state)
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in state.items()}
    module.load_state_dict(state, strict=True)
    for key, value in state.items():
        torch.testing.assert_close(module.state_dict()[key], value)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_todays_module_keeps_the_hyperparameters(run):
    module, ckpt = built_module(run)
    old = ckpt["hyper_parameters"]
    skip = {"run_config", "sidecar_dir", "make_train_env", "make_eval_env", "keep_buffers", "eval_every",
            "eval_episodes", "max_epochs", "on_nan",  # set by the trainer, not by the algorithm's builder
            "stream"}  # the collection settings: the data module's (`data.RolloutData`)
    missing = {k for k in old if k not in module.hparams and k not in skip}
    assert not missing, f"hyper-parameters no longer saved: {sorted(missing)}"
    for key in set(old) - skip:
        assert module.hparams[key] == old[key], key


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_the_policy_rebuilds_from_the_checkpoint(run):
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    run_cfg = hp["run_config"]
    actor = ALGOS[run_cfg["algo"]["name"]].make_actor(run_cfg, hp["obs_dim"], hp["act_dim"])
    weights = {k.removeprefix("actor."): v for k, v in ckpt["state_dict"].items() if k.startswith("actor.")}
    actor.load_state_dict(weights, strict=True)
    loc, scale = actor(torch.zeros(2, hp["obs_dim"]), torch.full((2, 1), float(run_cfg["eps"]["behavior"][0])))
    assert loc.shape == scale.shape == (2, hp["act_dim"]) and torch.isfinite(loc).all()
