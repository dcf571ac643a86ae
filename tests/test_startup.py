"""Start-up imports what a command needs when it needs it: loading a command, its `--help` and a refused
command line import neither Lightning nor TorchRL, the simulators or the algorithms (they are imported when a run
is built, after its config is checked). Mechanisms, not speed: `benchmarks/startup.py` measures the time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: top-level packages a command must not import before it trains or evaluates
HEAVY = ("lightning", "pytorch_lightning", "torchrl", "tensordict", "pybullet", "bullet_safety_gym",
         "safety_gymnasium", "gymnasium", "mujoco", "matplotlib")
#: the project's modules that may load before a run is built (the rest import the packages above)
LIGHT = ("ccpo_pl", "ccpo_pl.compat", "ccpo_pl.conf", "ccpo_pl.errors", "ccpo_pl.faults", "ccpo_pl.metrics",
         "ccpo_pl.validation", "ccpo_pl.quiet", "ccpo_pl.algos", "ccpo_pl.algos.registry", "ccpo_pl.envs",
         "ccpo_pl.envs.tasks", "ccpo_pl.fit", "ccpo_pl.evaluate", "ccpo_pl.report", "ccpo_pl.export",
         "ccpo_pl.outputs", "ccpo_pl.extras")
COMMANDS = ("ccpo_pl.fit", "ccpo_pl.evaluate", "ccpo_pl.report", "ccpo_pl.export")


def too_heavy(modules) -> list[str]:
    """The modules of `modules` that are heavy packages or project modules outside `LIGHT`."""
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or (m.startswith("ccpo_pl") and m not in LIGHT))


def test_importing_each_command_imports_no_trainer_torchrl_simulator_or_algorithm():
    # one process, the commands in turn: what each import adds to sys.modules
    code = ("import importlib, json, sys\n"
            "added = {}\n"
            f"for name in {COMMANDS!r}:\n"
            "    before = set(sys.modules)\n"
            "    importlib.import_module(name)\n"
            "    added[name] = sorted(set(sys.modules) - before)\n"
            "print(json.dumps(added))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(added) == sorted(COMMANDS)
    assert "torch" in added["ccpo_pl.fit"]  # what the commands do import is seen
    assert {name: too_heavy(modules) for name, modules in added.items()} == {name: [] for name in COMMANDS}


def imported(stderr: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its stderr."""
    return {line.rpartition("|")[2].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(("args", "code", "says"), [
    (["ccpo_pl.fit", "--help"], 0, None),
    (["ccpo_pl.fit", "algo.lr_actor=-1"], 2, "ccpo_pl.fit: error: algo.lr_actor=-1 is not allowed"),
    # a check between keys that reads the algorithm table (combined policies need increasing thresholds)
    (["ccpo_pl.fit", "algo=c_ppo_lag", "eps.behavior=[60,40,20]"], 2, "must be strictly increasing"),
    (["ccpo_pl.evaluate", "episode=3"], 2, "ccpo_pl.evaluate: error: unknown key episode; did you mean episodes?"),
], ids=["fit-help", "fit-bad-value", "fit-bad-relation", "evaluate-bad-key"])
def test_help_and_a_refused_command_line_import_no_trainer(args, code, says, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == code, errors[-20:]
    if says:
        assert len(errors) == 1 and says in errors[0], errors
    modules = imported(proc.stderr)
    assert {"torch", "hydra", "ccpo_pl.validation"} <= modules  # the command's own imports are seen
    assert too_heavy(modules) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # and nothing written
