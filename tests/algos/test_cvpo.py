"""Single-threshold CVPO: the threshold choice, the eps-pinned policy, one threshold per update."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from ccpo_pl.algos.ccpo.build import build
from ccpo_pl.algos.ccpo.build import make_actor as cvpo_actor
from ccpo_pl.algos.ccpo.cvpo import PinnedEps, cvpo_threshold
from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.fit import CONF_DIR
from ccpo_pl.nets import EpsActor, PlainCritic


def test_cvpo_threshold_defaults_to_the_middle_behaviour_threshold():
    assert cvpo_threshold({"threshold": None}, [60, 20, 40], [10, 70]) == 40.0
    assert cvpo_threshold({"threshold": None}, [20, 60], [10, 70]) == 60.0
    assert cvpo_threshold({"threshold": 25}, [20, 40, 60], [10, 70]) == 25.0


@pytest.mark.parametrize("bad", [5, 80, "forty", True])
def test_cvpo_threshold_outside_the_range_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=r"algo\.threshold=.*eps\.range"):
        cvpo_threshold({"threshold": bad}, [20, 40, 60], [10, 70])


def test_pinned_policy_is_the_threshold_policy_at_every_eps():
    torch.manual_seed(0)
    inner = EpsActor(3, 2, [16], [10, 70])
    pinned = PinnedEps(inner, 40.0)
    obs = torch.randn(5, 3)
    want = inner(obs, torch.full((5, 1), 40.0))
    for eps in (10.0, 25.0, 70.0):
        got = pinned(obs, torch.full((5, 1), eps))
        assert all(torch.allclose(g, w) for g, w in zip(got, want))
    assert not torch.allclose(inner(obs, torch.full((5, 1), 10.0))[0], want[0])  # the inner actor does use eps


def test_cvpo_actor_rebuilds_the_pinned_policy_from_a_run_config():
    run_cfg = {"algo": {"name": "cvpo", "hidden": [16], "log_std": [-20.0, 2.0], "threshold": None},
               "eps": {"behavior": [20, 40, 60], "range": [10, 70]}}
    actor = cvpo_actor(run_cfg, 3, 2)
    assert isinstance(actor, PinnedEps) and actor.threshold == 40.0
    assert isinstance(cvpo_actor({**run_cfg, "algo": {**run_cfg["algo"], "name": "ccpo"}}, 3, 2), EpsActor)


def test_cvpo_trains_one_threshold_per_update():
    module = CCPO(PinnedEps(EpsActor(3, 2, [8], [10, 70]), 25.0), PlainCritic(3, 2, [8], [10, 70]), threshold=25.0,
                  n_eps=4, eps_behavior=[20, 40, 60], eps_range=[10, 70], eps_bin=5, eps_eval=[10, 40], horizon=200,
                  total_frames=1000)
    assert module.sample_train_eps().tolist() == [25.0]
    assert module.hparams.threshold == 25.0


def test_cvpo_is_built_as_ccpo_at_its_threshold_with_the_pinned_policy_and_envs_drawing_only_it():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["algo=cvpo", "algo.compile=false"])
    module = build(cfg, 3, 2, eps_behavior=[20, 40, 60], eps_range=[10, 70], eps_bin=5, eps_eval=[10, 40],
                   horizon=200, total_frames=1000)
    assert isinstance(module.actor, PinnedEps) and module.actor.threshold == 40.0
    assert isinstance(module.actor_old, PinnedEps)
    assert module.hparams.threshold == 40.0 and module.sample_train_eps().tolist() == [40.0]
    assert module.collection_eps() == [40.0]  # the data module's training envs draw only it
