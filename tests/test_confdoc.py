"""`python -m ccpo_pl.fit --info [overrides]` (`ccpo_pl.confdoc`): the composed config with each key's comment from
conf/, for the options chosen on the command line."""

from __future__ import annotations

import sys
import threading

import pytest
import yaml
from omegaconf import OmegaConf

from ccpo_pl import fit as fit_module
from ccpo_pl.conf import CONF_DIR
from ccpo_pl.confdoc import describe, file_comments


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_describe_is_the_composed_config_with_each_keys_comment(compose_config):
    text = describe(["algo=cpo", "experiment=smoke"])
    assert yaml.safe_load(text) == OmegaConf.to_container(compose_config("algo=cpo", "experiment=smoke"),
                                                          resolve=True)  # the comments change no value
    assert _line(text, "  target_kl: 0.01 ").endswith("# paper appendix, OmniSafe, FSRL: KL bound delta")
    # the single cost limit of algo_run/cpo.yaml, its comment from there
    assert _line(text, "  behavior: [25] ").endswith("# OmniSafe cost_limit 25: the single cost limit d (episode "
                                                      "cost); within every env's eps.range")
    # a value from a later file than its comment: the comment, and which file set it
    assert _line(text, "total_frames: 1600 ").endswith("all ranks together (FSRL BallCircle: 1M) "
                                                       "[experiment/smoke.yaml]")
    assert "kappa:" not in text  # CCPO's keys are not in a CPO config
    default = describe([])
    assert _line(default, "  kappa: 0.02 ").endswith("# FSRL estep_kl: E-step KL bound")
    assert "target_kl" not in default


def test_a_comment_continued_on_the_next_lines_is_joined():
    comments = file_comments(CONF_DIR / "config.yaml", [])
    assert comments["collect.parallel"][0] == ("true: sub-envs in worker processes (TorchRL ParallelEnv); false: in "
                                               "this process (bullet: envs.batched.BulletBatchEnv; safety-gymnasium: "
                                               "SerialEnv)")
    assert comments["eps.bin"][0] == "ours: width of the per-threshold bins (logging, dual warm starts)"
    assert "defaults" in comments and "hydra.run.dir" in comments  # read as written; describe shows the run keys


def test_fit_info_prints_it_and_refuses_an_unknown_option_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # main() installs its own
    monkeypatch.setattr(sys, "argv", ["ccpo_pl.fit", "--info", "algo=cpo"])
    fit_module.main()
    out = capsys.readouterr().out
    assert _line(out, "  target_kl: 0.01 ").endswith("# paper appendix, OmniSafe, FSRL: KL bound delta")
    assert not (tmp_path / "logs").exists()  # nothing trained, nothing written
    monkeypatch.setattr(sys, "argv", ["ccpo_pl.fit", "--info", "algo=nope"])
    with pytest.raises(SystemExit) as stop:
        fit_module.main()
    printed = capsys.readouterr()
    assert stop.value.code == 2 and printed.out == ""
    assert printed.err.startswith("ccpo_pl.fit: error: unknown algo 'nope'") and printed.err.count("\n") == 1


def test_a_value_set_on_the_command_line_is_marked_as_such():
    lines = describe(["env=car_circle", "seed=3", "eps.eval=[20,30]"]).splitlines()
    seed = next(line for line in lines if line.startswith("seed: 3"))
    assert seed.endswith("[command line]")
    (evaluation,) = [line for line in lines if line.startswith("  eval: [20, 30]")]
    assert evaluation.endswith("[command line]")
    (name,) = [line for line in lines if line.startswith("  name: car_circle")]  # from the group's file, not marked
    assert "[command line]" not in name
