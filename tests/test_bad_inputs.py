"""One table of bad inputs across the entry points: `ccpo_pl.fit`, `ccpo_pl.evaluate`, `ccpo_pl.report`,
`ccpo_pl.plot`, `ccpo_pl.export` (their command lines) and `load_policy` (the Python API); a second table for the
deployment API (`load`, `predict`, `run_episodes`, `remaining_budget`), and property-based tests (Hypothesis) that
feed generated config values, damaged eval files and run configs, and predict inputs.

For every row: the bad command exits with status 2 (the API raises `ConfigError`), prints exactly one line that
names the bad value and what is allowed, no traceback; a reference run's files (checkpoint, sidecar, config,
evaluation, report) stay byte-identical and the command's own output place is not created; then the corrected
command works. Command lines run as forked children calling the entry point's `main()` (no interpreter start-up
per row). A corrected `fit` command runs in this process through every check up to the trainer (a stand-in
trainer ends it there), since training 30 runs would cost minutes; `test_reliability` trains after a corrected
command. A corrected `evaluate`, `report` or `load_policy` command runs to its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ccpo_pl.evaluate as evaluate_module
import ccpo_pl.evaluation as evaluation_module
import ccpo_pl.export as export_module
import ccpo_pl.fit as fit_module
import ccpo_pl.plot as plot_module
import ccpo_pl.report as report_module
from ccpo_pl.checkpointing import safe_load
from ccpo_pl.deploy import load, remaining_budget, run_episodes
from ccpo_pl.errors import ConfigError
from ccpo_pl.evaluation import evaluate_run, load_policy
from ccpo_pl.validation import CONF_DIR

DATA = Path(__file__).resolve().parent / "fixtures" / "checkpoints_main"
RUN = "ball_circle-ccpo-s0"
FIT = ("experiment=smoke", "threads=1", "log_dir={logs}", f"run_name={RUN}")
RESUME_REFERENCE = ("ckpt_path={ckpt}", "total_frames=3200")  # the reference checkpoint has 1600 frames
EVALUATE = ("run={run}", "out={tmp}/eval", "episodes=1", "eps=[10]", "policy=deterministic", "threads=1")


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad command, what its one line must name (`value`, `allowed`), and the corrected command."""

    tool: str  # fit | evaluate | report | plot | export | load_policy
    args: tuple[str, ...]
    value: str
    allowed: str
    fixed: tuple[str, ...]
    environ: tuple[tuple[str, str], ...] = ()  # environment variables of the bad command only

    @property
    def id(self) -> str:
        return f"{self.tool}: {' '.join(a for a in self.args if a not in FIT + EVALUATE)}"[:60]


def fit_case(bad: str | tuple[str, ...], value: str, allowed: str, fixed: str | tuple[str, ...] = ()) -> Case:
    """Against the reference run (its name and log_dir); the corrected command starts a run in a new log_dir."""
    bad, fixed = (bad,) if isinstance(bad, str) else bad, (fixed,) if isinstance(fixed, str) else fixed
    return Case("fit", (*FIT, *bad), value, allowed, (*FIT[:2], "log_dir={tmp}", f"run_name={RUN}", *fixed))


def evaluate_case(bad: str | tuple[str, ...], value: str, allowed: str, fixed: str | tuple[str, ...] = ()) -> Case:
    bad, fixed = (bad,) if isinstance(bad, str) else bad, (fixed,) if isinstance(fixed, str) else fixed
    return Case("evaluate", (*EVALUATE, *bad), value, allowed, (*EVALUATE, *fixed))


CASES = [
    # ---- fit: values, ranges, types, names
    fit_case("trainer.num_nodes=0", "trainer.num_nodes=0", "an integer >= 1", "trainer.num_nodes=1"),
    fit_case("eps.range=[10,inf]", "eps.range=[10, inf]", "both finite", "eps.range=[10,70]"),
    fit_case("eps.bin=0", "eps.bin=0", "a finite number > 0", "eps.bin=5"),
    fit_case("trainer.devices=-1", "trainer.devices=-1", "give a number of processes", "trainer.devices=1"),
    fit_case("seed=-1", "seed=-1", "an integer in [0, 4294967295]", "seed=1"),
    fit_case("seed=abc", "seed='abc'", "an integer in [0, 4294967295]", "seed=2"),
    fit_case("threads=-1", "threads=-1", "null or an integer >= 1", "threads=1"),
    fit_case("+trainer.max_epochs=3", "trainer.max_epochs=3", "left unset: ccpo_pl.fit sets it"),
    fit_case(("algo=c_ppo_lag", "eps.behavior=[60,20]"), "eps.behavior=[60, 20]", "strictly increasing",
             ("algo=c_ppo_lag", "eps.behavior=[20,60]")),
    fit_case("collect.updates_per_frame=nan", "collect.updates_per_frame=nan", "a finite number >= 0",
             "collect.updates_per_frame=0.2"),
    fit_case("run_name=a/b", "run_name='a/b'", "no path separators", "run_name=a_b"),
    fit_case("log_dir=null", "log_dir=None", "a non-empty string"),
    fit_case("total_frames=0", "total_frames=0", "an integer >= 1", "total_frames=800"),
    fit_case("faults.on_nan=ignore", "faults.on_nan='ignore'", "one of stop, skip", "faults.on_nan=skip"),
    fit_case("algo.gamma=1.5", "algo.gamma=1.5", "a number in (0, 1)", "algo.gamma=0.98"),
    fit_case("eps.eval=[0,20]", "eps.eval has [0]", "finite thresholds > 0", "eps.eval=[10,20]"),
    fit_case("algo.hidden=[64,0]", "algo.hidden=[64, 0]", "positive integers", "algo.hidden=[64,32]"),
    fit_case("trainer.accelerator=tpu", "trainer.accelerator='tpu'", "one of cpu, gpu", "trainer.accelerator=cpu"),
    fit_case("eps.behavior=[5,20]", "eps.behavior has [5] outside eps.range", "widen eps.range",
             "eps.behavior=[10,20]"),
    fit_case("check_sync=maybe", "check_sync='maybe'", "true or false", "check_sync=true"),
    # ---- fit: names of groups and keys
    fit_case("env=nope", "unknown env 'nope'", "ball_circle", "env=ball_run"),
    fit_case("algo=nope", "unknown algo 'nope'", "ccpo_wo_cvi", "algo=cvpo"),
    fit_case("algo.kapa=0.1", "unknown key algo.kapa", "did you mean algo.kappa?", "algo.kappa=0.1"),
    fit_case("+algo.kapa=0.1", "unknown key algo.kapa", "did you mean algo.kappa?", "algo.kappa=0.1"),
    fit_case("~algo.kappa", "algo.kappa is missing", "restore it", "algo.kappa=0.03"),
    fit_case("algo.clip_epsilon=0.1", "algo.clip_epsilon", "ccpo", ("algo=c_ppo_lag", "algo.clip_epsilon=0.1")),
    # ---- fit: checkpoints and the existing run
    fit_case("ckpt_path={text}", "{text}", "a checkpoint written by ccpo_pl.fit", RESUME_REFERENCE),
    fit_case("ckpt_path={nan}", "NaN or inf in actor.", "an earlier checkpoint", RESUME_REFERENCE),
    fit_case("ckpt_path={tmp}/none.ckpt", "none.ckpt", "does not exist", RESUME_REFERENCE),
    fit_case("ckpt_path={trunc}", "{trunc}", "a checkpoint written by ccpo_pl.fit", RESUME_REFERENCE),
    fit_case("algo.kappa=0.5", "algo.kappa: 0.02 -> 0.5", "run_name", ("algo.kappa=0.5", "run_name=kappa05")),
    # ---- evaluate
    evaluate_case("episodes=0", "episodes=0", "a positive integer", "episodes=2"),
    evaluate_case("seed=-1", "seed=-1", "an integer in [0, ", "seed=3"),
    evaluate_case("policy=greedy", "policy='greedy'", "deterministic, stochastic, both", "policy=stochastic"),
    evaluate_case("extrapolation=cubic", "extrapolation='cubic'", "linear, nearest"),
    evaluate_case("extrapolation=nearest", "extrapolation='nearest'", "c_ppo_lag, c_trpo_lag checkpoints only"),
    evaluate_case("eps=[0,10]", "eps has [0]", "numbers > 0", "eps=[15,10]"),
    evaluate_case("eps=[]", "eps=[]", "a non-empty list of thresholds > 0", "eps=[25]"),
    evaluate_case("batch_envs=0", "batch_envs=0", "a positive integer", "batch_envs=1"),
    evaluate_case("run={tmp}/nothing", "nothing", "a ccpo_pl.fit run directory", "run={ckpt}"),
    evaluate_case("run={text}", "{text}", "a checkpoint written by ccpo_pl.fit"),
    evaluate_case("run={nan}", "NaN or inf in actor.", "an earlier checkpoint"),
    evaluate_case("run=null", "run=", "a ccpo_pl.fit run directory or a .ckpt file"),
    evaluate_case("out={text}/eval", "out=", "give a writable directory", "out={tmp}/eval"),
    evaluate_case("expect_env=car_circle", "env.name='ball_circle'", "env.name='car_circle'",
                  "expect_env=ball_circle"),
    evaluate_case("expect_algo=cpo", "algo.name='ccpo'", "algo.name='cpo'", "expect_algo=ccpo"),
    evaluate_case("episode=3", "unknown key episode", "did you mean episodes?", "episodes=3"),
    evaluate_case("threads=-1", "threads=-1", "null or an integer >= 1", "threads=1"),
    evaluate_case("threads=two", "threads='two'", "null or an integer >= 1", "threads=2"),
    # ---- report
    Case("report", ("{tmp}/none", "--out", "{tmp}/report.md"), "none", "a sweep or run directory",
         ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{empty}", "--out", "{tmp}/report.md"), "{empty}", "summary.json",
         ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--section"), "--section", "--out FILE.md",
         ("{logs}", "--section", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--notes", "{tmp}/none.md", "--out", "{tmp}/report.md"), "none.md", "--notes",
         ("{logs}", "--notes", "{text}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--out", "{text}/report.md"), "--out='{text}'", "give a writable directory",
         ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--ouut", "{tmp}/report.md"), "unrecognized arguments: --ouut", "did you mean --out?",
         ("{logs}", "--out", "{tmp}/report.md")),
    # ---- numbers in the precision they are used in, bounded counts, thresholds once
    fit_case("seed=${{seed}}", "seed=${{seed}}", "give a value", "seed=1"),
    fit_case("eps.range=[10,1e39]", "eps.range=[10, 1e+39]", "both finite", "eps.range=[10,70]"),
    fit_case("eps.range=[1e-46,70]", "eps.range=[1e-46, 70]", "0 < low", "eps.range=[1,70]"),
    fit_case("eps.range=[70,10]", "eps.range=[70, 10]", "low < high", "eps.range=[10,70]"),
    fit_case("eps.eval=[20,20]", "eps.eval has 20 more than once", "each once", "eps.eval=[20,30]"),
    fit_case("eval.final_episodes=1000000000", "eval.final_episodes=1000000000", "at most 100000",
             "eval.final_episodes=1"),
    fit_case("collect.num_envs=1000000", "collect.num_envs=1000000", "at most 4096", "collect.num_envs=2"),
    evaluate_case("eps=[10,inf]", "eps has [inf]", "finite in float32", "eps=[10,70]"),
    evaluate_case("eps=[10,1e39]", "eps has [1e+39]", "finite in float32", "eps=[10,70]"),
    evaluate_case("episodes=1000000000", "episodes=1000000000", "at most 100000", "episodes=1"),
    evaluate_case("eps=[40,40,10]", "eps has 40 more than once", "give each threshold once", "eps=[40,10]"),
    evaluate_case("batch_envs=true", "batch_envs=True", "a positive integer", "batch_envs=2"),
    evaluate_case("run=5", "run=5", "a ccpo_pl.fit run directory or a .ckpt file"),
    Case("evaluate", (*EVALUATE, "video=true"), "MUJOCO_GL='bogus'", "egl, osmesa or glfw", EVALUATE,
         (("MUJOCO_GL", "bogus"),)),
    # ---- outputs: never the input, another kind of file, or an existing output unless asked; one unit
    evaluate_case("out={run}", "out='{run}'", "which this command reads", "out={tmp}/eval"),
    evaluate_case("out={run}/checkpoints", "out='{run}/checkpoints'", "which this command reads"),
    evaluate_case("out={run}/eval", "already holds evaluation files", "pass overwrite=true"),
    evaluate_case(("out={run}/eval", "overwrite=maybe"), "overwrite='maybe'", "true or false", "overwrite=true"),
    Case("report", ("{logs}", "--out", "{run}/config.yaml"), "--out='{run}/config.yaml'",
         "a report is never written into a run", ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--out", "{text}"), "--out='{text}' exists and is not a report",
         "it is never replaced", ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--out", "{nan}"), "--out='{nan}' exists and is not a report", "never replaced",
         ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--out", "{empty}"), "--out='{empty}' is a directory", "give a file name",
         ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--section", "--out", "{text}"), "is not a Markdown text file", "never replaced",
         ("{logs}", "--section", "--out", "{tmp}/report.md")),
    Case("report", ("{logs}", "--notes", "{root}/notes.md", "--out", "{root}/notes.md"),
         "--out='{root}/notes.md' is what this command reads", "give another --out",
         ("{logs}", "--notes", "{root}/notes.md", "--out", "{tmp}/report.md")),
    Case("plot", ("{logs}", "--out", "{run}"), "--out='{run}' is inside the run directory",
         "never written into a run", ("{logs}", "--out", "{tmp}/plots")),
    Case("plot", ("{logs}", "--out", "{run}/plots"), "is inside the run directory", "give a folder outside it",
         ("{logs}", "--out", "{tmp}/plots")),
    Case("plot", ("{logs}", "--out", "{plots}"), "--out='{plots}' already holds plot files", "--overwrite",
         ("{logs}", "--out", "{tmp}/plots")),
    Case("plot", ("{logs}", "--out", "{empty}/.."), "holds", "not one of the plot files",
         ("{logs}", "--out", "{tmp}/plots")),
    Case("export", ("run={run}", "out={ckpt}", "overwrite=true"), "out='{ckpt}' is what this command reads",
         "give another out=", ("run={run}", "out={tmp}/p.onnx")),
    Case("export", ("run={run}", "out={run}/config.yaml", "overwrite=true"),
         "out='{run}/config.yaml' exists and is not an exported policy", "never replaced",
         ("run={run}", "out={tmp}/p.onnx")),
    Case("export", ("run={run}", "out={nan}", "overwrite=true"), "not an exported policy", "give another out=",
         ("run={run}", "format=torchscript", "out={tmp}/p.pt")),
    Case("export", ("run={run}", "out=/proc/p.onnx"), "out='/proc/p.onnx'", "give a writable directory",
         ("run={run}", "out={tmp}/p.onnx")),
    # ---- damaged files read by report and plot: refused naming the file and the field, before any write
    Case("report", ("{damaged}/eps_range", "--out", "{tmp}/report.md"), "eval/summary.json': eps_range is [10]",
         "not [low, high]", ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{damaged}/eps", "--out", "{tmp}/report.md"), "eval/summary.json': eps is ['a', 'b']",
         "finite thresholds > 0", ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{damaged}/nan_reward", "--out", "{tmp}/report.md"), "avg_reward is nan",
         "not a finite number", ("{logs}", "--out", "{tmp}/report.md")),
    Case("report", ("{damaged}/per_eps_text", "--out", "{tmp}/report.md"), "per_eps.csv",
         "reward_mean='abc' is not a finite number", ("{logs}", "--out", "{tmp}/report.md")),
    Case("plot", ("{damaged}/per_eps_text", "--out", "{tmp}/plots"), "per_eps.csv': reward_mean='abc'",
         "is not a number", ("{logs}", "--out", "{tmp}/plots")),
    Case("plot", ("{damaged}/yaml", "--out", "{tmp}/plots"), "config.yaml' is not readable YAML",
         "restore the run's config.yaml", ("{logs}", "--out", "{tmp}/plots")),
    # ---- load_policy (the Python API: a ConfigError, no exit status)
    Case("load_policy", ("{text}",), "{text}", "a ccpo_pl.fit checkpoint", ("{ckpt}",)),
    Case("load_policy", ("{nan}",), "NaN or inf in actor.", "an earlier checkpoint", ("{ckpt}",)),
    Case("load_policy", ("{tmp}/none.ckpt",), "none.ckpt", "does not exist", ("{ckpt}",)),
    Case("load_policy", ("{trunc}",), "{trunc}", "a ccpo_pl.fit checkpoint", ("{ckpt}",)),
    Case("load_policy", ("{run}",), "{run}' is a directory", "give a checkpoint file", ("{ckpt}",)),
    Case("load_policy", ("{ckpt}", "device=tpu"), "device='tpu'", "cpu, cuda or cuda:1", ("{ckpt}", "device=cpu")),
    Case("load_policy", ("{ckpt}", "device=meta"), "device='meta'", "cpu, cuda or cuda:1", ("{ckpt}", "device=cpu")),
    Case("load_policy", ("{ckpt}", "device=cuda:99"), "device='cuda:99' is not available", "give",
         ("{ckpt}", "device=cpu")),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """The reference run (a run directory of an earlier version, evaluated and reported here), and bad files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    logs = root / "logs"
    shutil.copytree(DATA / RUN, logs / RUN)
    run = logs / RUN
    evaluate_run(run, eps=[10, 40], episodes=1, policy="deterministic")
    report_module.main([str(logs), "--out", str(logs / "report.md")])
    ckpt = run / "checkpoints" / "last.ckpt"
    text = root / "notes.txt"
    text.write_text("not a checkpoint\n")
    nan = root / "nan.ckpt"
    data = safe_load(ckpt)
    next(v for k, v in data["state_dict"].items() if k.startswith("actor.")).fill_(float("nan"))
    torch.save(data, nan)
    trunc = root / "trunc.ckpt"
    trunc.write_bytes(ckpt.read_bytes()[:4096])
    empty = root / "empty"
    empty.mkdir()
    (root / "notes.md").write_text("# What was learnt\n")
    (run / "tb").mkdir()  # what plot looks for beside config.yaml (no scalars: the threshold curves only)
    plot_module.main([str(logs), "--out", str(root / "plots")])
    damaged = root / "damaged"
    summary = json.loads((run / "eval" / "summary.json").read_text())
    for name, change in DAMAGED.items():
        copy = damaged / name / RUN
        shutil.copytree(run, copy)
        if name == "yaml":
            (copy / "config.yaml").write_text("seed: [0\nenv: {name: ball_circle\n")
            continue
        if name == "per_eps_text":
            lines = (copy / "eval" / "per_eps.csv").read_text().splitlines()
            cells = lines[1].split(",")
            cells[2] = "abc"  # reward_mean of the first row
            (copy / "eval" / "per_eps.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
        (copy / "eval" / "summary.json").write_text(json.dumps(summary | change))
    return {"root": str(root), "logs": str(logs), "run": str(run), "ckpt": str(ckpt), "text": str(text),
            "nan": str(nan), "trunc": str(trunc), "empty": str(empty), "plots": str(root / "plots"),
            "damaged": str(damaged)}


#: the damaged copies of the reference run: what their summary.json says instead (yaml: an invalid config.yaml;
#: per_eps_text: text in per_eps.csv, read by report because 40 is outside the range it says)
DAMAGED = {"eps_range": {"eps_range": [10]}, "eps": {"eps": ["a", "b"]}, "nan_reward": {"avg_reward": math.nan},
           "per_eps_text": {"eps_range": [10.0, 30.0]}, "yaml": {}}


def files_of(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _child(tool: str, args: list[str], output: str, environ: dict[str, str]) -> None:
    out = open(output, "w", buffering=1)  # noqa: SIM115 - lives as long as the forked process
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out
    os.environ.update(environ)
    if tool in ("report", "plot"):
        sys.argv = [f"ccpo_pl.{tool}", *args]
        (report_module if tool == "report" else plot_module).main(args)
    else:
        module = {"fit": fit_module, "evaluate": evaluate_module, "export": export_module}[tool]
        sys.argv = [f"ccpo_pl.{tool}", *args]
        module.main()


def command_line(tool: str, args: list[str], output: Path, environ=()) -> tuple[int, list[str]]:
    """Exit status and output lines of `python -m ccpo_pl.<tool> <args>`, run as a forked child (with the
    environment variables `environ` set)."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(tool, args, str(output), dict(environ)))
    proc.start()
    proc.join(300)
    if proc.exitcode is None:
        proc.kill()
        pytest.fail(f"{tool} {args} did not end")
    return proc.exitcode, output.read_text(errors="replace").splitlines()


class ReachedTrainer(Exception):
    """Raised by the stand-in trainer: every check before training passed."""


def corrected_fit(args: list[str], monkeypatch) -> None:
    def stand_in(*_args, **_kwargs):
        raise ReachedTrainer

    monkeypatch.setattr(fit_module, "make_trainer", stand_in)
    fit_module._check_group_overrides(args)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args)
    with pytest.raises(ReachedTrainer):
        fit_module.fit(cfg)


def api_args(args: list[str]) -> tuple[str, dict]:
    path, *rest = args
    return path, dict(a.split("=", 1) for a in rest)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_refused_in_one_line_touching_nothing_and_the_corrected_command_works(case, places,
                                                                                          tmp_path, monkeypatch):
    fill = {**places, "tmp": str(tmp_path / "scratch")}
    args = [a.format(**fill) for a in case.args]
    value, allowed = case.value.format(**fill), case.allowed.format(**fill)
    before = files_of(Path(places["root"]))
    if case.tool == "load_policy":
        path, kwargs = api_args(args)
        with pytest.raises(ConfigError) as err:
            load_policy(path, **kwargs)
        lines = [str(err.value)]
    else:
        status, lines = command_line(case.tool, args, tmp_path / "output.txt", case.environ)
        assert status == 2, lines
        assert len(lines) == 1 and lines[0].startswith(f"ccpo_pl.{case.tool}: error: "), lines
    assert value in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    assert files_of(Path(places["root"])) == before  # the reference run, its evaluation and report untouched
    assert not (tmp_path / "scratch").exists()  # nothing written where the command would have written

    fixed = [a.format(**fill) for a in case.fixed]
    if case.tool == "fit":
        corrected_fit(fixed, monkeypatch)
    elif case.tool == "load_policy":
        path, kwargs = api_args(fixed)
        actor, cfg = load_policy(path, **kwargs)
        assert cfg["algo"]["name"] == "ccpo" and all(torch.isfinite(p).all() for p in actor.parameters())
    else:
        status, lines = command_line(case.tool, fixed, tmp_path / "fixed.txt")
        assert status == 0, lines
        written = {"evaluate": "eval/summary.json", "report": "report.md", "plot": "plots/thresholds.png"}
        if case.tool in written:
            assert (tmp_path / "scratch" / written[case.tool]).is_file()
        else:  # export: the policy file
            assert [p.suffix for p in (tmp_path / "scratch").iterdir()] in ([".onnx"], [".pt"])
    assert files_of(Path(places["root"])) == before


# ---------------------------------------------------------------- the deployment API: ValueError / TypeError
class FakeEnv:
    """A gymnasium-like env of the reference task's sizes: episodes of 3 steps without cost."""

    def __init__(self, obs_dim: int, act_dim: int):
        self.obs_dim, self.act_dim, self.t = obs_dim, act_dim, 0

    def reset(self, seed=None):
        self.t = 0
        return np.zeros(self.obs_dim, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(self.obs_dim, np.float32), 1.0, 0.0, False, self.t >= 3, {}


@pytest.fixture(scope="module")
def policy(places):
    return load(places["run"])


def _obs(policy, *shape) -> np.ndarray:
    return np.zeros((*shape, policy.metadata["obs_dim"]))


API_CASES = [
    ("load device=meta", lambda p, pl: load(p["run"], device="meta"), ValueError, "device='meta'", "cpu, cuda"),
    ("load device=cuda:99", lambda p, pl: load(p["run"], device="cuda:99"), ValueError, "device='cuda:99'",
     "is not available"),
    ("load device=3", lambda p, pl: load(p["run"], device=3), TypeError, "device=3", "a device name"),
    ("load None", lambda p, pl: load(None), TypeError, "run=None", "a run directory or a .ckpt file"),
    ("predict eps=1e39", lambda p, pl: pl.predict(_obs(pl), 1e39), ValueError, "eps has 1e+39", "float32"),
    ("predict eps=1e-50", lambda p, pl: pl.predict(_obs(pl), 1e-50), ValueError, "eps=1e-50", "as a float32"),
    ("predict eps=True", lambda p, pl: pl.predict(_obs(pl), True), TypeError, "eps=True", "real numbers"),
    ("predict eps='40'", lambda p, pl: pl.predict(_obs(pl), "40"), TypeError, "eps='40'", "real numbers"),
    ("predict deterministic='no'", lambda p, pl: pl.predict(_obs(pl), 40.0, deterministic="no"), TypeError,
     "deterministic='no'", "True or False"),
    ("predict obs str", lambda p, pl: pl.predict("abc", 40.0), TypeError, "observation='abc'", "real numbers"),
    ("predict obs None", lambda p, pl: pl.predict(None, 40.0), TypeError, "observation=None", "real numbers"),
    ("predict obs dict", lambda p, pl: pl.predict({"x": 1}, 40.0), TypeError, "observation={'x': 1}",
     "real numbers"),
    ("predict obs object", lambda p, pl: pl.predict(object(), 40.0), TypeError, "observation holds objects",
     "real numbers"),
    ("predict obs complex", lambda p, pl: pl.predict(_obs(pl).astype(complex), 40.0), TypeError,
     "observation holds complex numbers", "real numbers"),
    ("predict obs complex tensor", lambda p, pl: pl.predict(torch.zeros(3, dtype=torch.complex64), 40.0), TypeError,
     "complex64", "real numbers"),
    ("predict obs 1e39", lambda p, pl: pl.predict(_obs(pl) + 1e39, 40.0), ValueError, "observation has 1e+39",
     "float32"),
    ("remaining_budget eps_range=[70, 10]", lambda p, pl: remaining_budget(25, 100, [70, 10]), ValueError,
     "eps_range=[70, 10]", "0 < low < high"),
    ("remaining_budget eps_range=[nan, 70]", lambda p, pl: remaining_budget(25, 100, [math.nan, 70]), ValueError,
     "eps_range=[nan, 70]", "both finite"),
    ("remaining_budget eps_range=[0, 70]", lambda p, pl: remaining_budget(25, 100, [0, 70]), ValueError,
     "eps_range=[0, 70]", "0 < low"),
    ("remaining_budget '25'", lambda p, pl: remaining_budget("25", 100), TypeError, "total_budget='25'",
     "a finite number > 0"),
    ("remaining_budget horizon=True", lambda p, pl: remaining_budget(25, True), ValueError, "horizon=True",
     "a positive integer"),
    ("run_episodes episodes=True", lambda p, pl: run_episodes(pl, FakeEnv(1, 1), lambda s, f: 40.0, episodes=True),
     ValueError, "episodes=True", "a positive integer"),
    ("run_episodes episodes=1e9", lambda p, pl: run_episodes(pl, FakeEnv(1, 1), lambda s, f: 40.0,
                                                             episodes=10**9), ValueError, "episodes=1000000000",
     "at most 100000"),
    ("run_episodes eps_fn=40", lambda p, pl: run_episodes(pl, FakeEnv(1, 1), 40), TypeError, "eps_fn=40",
     "a function (step, so_far) -> eps"),
    ("run_episodes eps_fn -> True", lambda p, pl: run_episodes(pl, FakeEnv(pl.metadata["obs_dim"], 2),
                                                               lambda s, f: True), TypeError,
     "eps_fn returned True", "a real number > 0"),
    ("run_episodes deterministic='no'", lambda p, pl: run_episodes(pl, FakeEnv(1, 1), lambda s, f: 40.0,
                                                                   deterministic="no"), TypeError,
     "deterministic='no'", "True or False"),
    ("run_episodes policy='p'", lambda p, pl: run_episodes("p", FakeEnv(1, 1), lambda s, f: 40.0), TypeError,
     "policy (str)", "a Policy"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_a_bad_api_argument_is_a_one_line_value_or_type_error_naming_it(case, places, policy):
    _, call, error, value, allowed = case
    before = files_of(Path(places["root"]))
    with pytest.raises(error) as err:
        call(places, policy)
    assert type(err.value) in (error, ConfigError) and "\n" not in str(err.value)
    assert value in str(err.value) and allowed in str(err.value), str(err.value)
    assert files_of(Path(places["root"])) == before


def test_numpy_scalars_are_numbers_to_the_api(policy):
    schedule = remaining_budget(np.float32(25), np.int64(100), np.array([10.0, 70.0]))
    assert schedule(0, {"episode_cost": 0.0}) == 25.0
    assert policy.predict(_obs(policy), np.float32(40)).shape == (2,)
    episodes = run_episodes(policy, FakeEnv(policy.metadata["obs_dim"], 2), lambda s, f: np.float64(40),
                            episodes=np.int64(2), seed=np.int64(3))
    assert [e.length for e in episodes] == [3, 3] and all(np.all(e.eps == 40.0) for e in episodes)


# ---------------------------------------------------------------- properties (Hypothesis): success or one line
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCALARS = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.sampled_from(["abc", "${seed}", "${nope}", "1e39", "", "10"]),
                    st.sampled_from([1e39, -1e39, 1e-46, 3.5e38, 0.0, -0.0, 2**31, 2**63, 1e12 + 1]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
FIT_KEYS = ("seed", "total_frames", "eps.range", "eps.eval", "eps.behavior", "eps.bin", "eval.final_episodes",
            "eval.episodes", "collect.num_envs", "collect.updates_per_frame", "algo.gamma", "algo.kappa", "threads",
            "check_sync", "label")


def hydra_text(value) -> str:
    """`value` as a command-line override value (what a user types)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return value if value.startswith("${") or value == "" else f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_text(v) for v in value) + "]"
    return str(value)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text and "Traceback" not in text, text
    return text


@PROPERTY
@given(key=st.sampled_from(FIT_KEYS), value=VALUES)
@example(key="eps.range", value=[10, 1e39])
@example(key="eps.bin", value=1e-46)
@example(key="eval.final_episodes", value=10**9)
@example(key="seed", value="${seed}")
def test_property_a_generated_fit_value_reaches_training_or_is_refused_in_one_line(places, key, value):
    override = f"{key}={hydra_text(value)}"
    before = files_of(Path(places["root"]))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        args = [*FIT[:2], f"log_dir={tmp}", f"run_name={RUN}", override]
        try:
            corrected_fit(args, mp)
        except ConfigError as err:
            assert key.split(".")[-1] in one_line(err) or "does not resolve" in str(err), (override, str(err))
        else:  # trained with it: a number that float32 holds, a count within its bound
            assert not any(isinstance(v, float) and not (math.isfinite(v) and abs(v) <= 3.4e38)
                           for v in (value if isinstance(value, list) else [value])), override
            assert not (isinstance(value, int) and not isinstance(value, bool) and value > 10**12), override
        assert not any(Path(tmp).iterdir())  # a refused or stopped run leaves nothing
    assert files_of(Path(places["root"])) == before


class ReachedEpisodes(Exception):
    """Raised instead of running the episodes: every check of `evaluate_run` passed."""


def _reached(*args, **kwargs):
    raise ReachedEpisodes


@PROPERTY
@given(episodes=VALUES, eps=VALUES, batch_envs=VALUES, seed=VALUES,
       policy=st.sampled_from(["deterministic", "stochastic", "both", "greedy", None, 1]))
def test_property_generated_evaluate_values_are_checked_before_anything_is_written(places, episodes, eps, batch_envs,
                                                                                 seed, policy):
    before = files_of(Path(places["root"]))
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation_module, "_evaluate", _reached)
        try:
            evaluate_run(places["run"], eps=eps, episodes=episodes, seed=seed, policy=policy, batch_envs=batch_envs,
                         out=Path(tmp) / "eval")
        except ConfigError as err:
            one_line(err)
        except ReachedEpisodes:  # what runs is sane: bounded counts, float32 thresholds, each once
            assert type(episodes) is int and 0 < episodes <= 100_000 and type(batch_envs) is int
            grid = eps if isinstance(eps, list) else [] if eps is None else [eps]  # None: the run's own grid
            assert all(abs(e) <= 3.4e38 for e in grid) and len(set(grid)) == len(grid)
        assert not (Path(tmp) / "eval").exists() and not any(Path(tmp).iterdir())
    assert files_of(Path(places["root"])) == before


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(), st.text(max_size=5)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                    max_leaves=6)
SUMMARY_KEYS = ("eps", "eps_range", "avg_reward", "avg_cv", "avg_reward_unseen", "seed", "episodes", "task", "label",
                "algo", "by_policy", "frames", "train_wall_s", "policy", "behavior")


def _in_process(module, args: list[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of a command line's `main(args)`, called in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            module.main(args)
            status = 0
        except SystemExit as done:
            status = done.code
    return status, err.getvalue().splitlines()


def _damaged_logs(places, tmp: Path, summary: bytes | None, per_eps: bytes | None, config: bytes | None) -> Path:
    """`tmp/logs`: a good copy of the reference run (without its checkpoints) and a copy with files replaced."""
    logs = tmp / "logs"
    for name in ("good", "bad"):
        shutil.copytree(places["run"], logs / name, ignore=shutil.ignore_patterns("checkpoints"))
    for rel, data in (("eval/summary.json", summary), ("eval/per_eps.csv", per_eps), ("config.yaml", config)):
        if data is not None:
            (logs / "bad" / rel).write_bytes(data)
    return logs


@st.composite
def damaged_summary(draw, reference: dict) -> bytes:
    """The reference summary with a field replaced or dropped, or any bytes instead of it."""
    kind = draw(st.sampled_from(["field", "field", "drop", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
    summary, key = dict(reference), draw(st.sampled_from(SUMMARY_KEYS))
    if kind == "drop":
        summary.pop(key, None)
    else:
        summary[key] = draw(JSON)
    return json.dumps(summary).encode()


def damaged_csv(path: Path, cells) -> bytes:
    """`path` (a CSV) with the (row, column) cells replaced by the texts of `cells`."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    for row, col, text in cells:
        if row < len(rows) and col < len(rows[row]):
            rows[row][col] = text.replace("\n", " ").replace("\r", " ")
    return ("\n".join(",".join(r) for r in rows) + "\n").encode()


CELLS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9), st.text(max_size=6)), max_size=3)
REFERENCE_SUMMARY = {"task": "ball_circle", "algo": "ccpo", "label": "ccpo", "seed": 0, "episodes": 1,
                     "eps": [10.0, 40.0], "eps_range": [10.0, 70.0], "avg_reward": 1.0, "avg_cv": 0.0,
                     "policy": "deterministic", "by_policy": {"deterministic": {"avg_reward": 1.0, "avg_cv": 0.0}},
                     "frames": 1600, "train_wall_s": 1.0}


@PROPERTY
@given(summary=damaged_summary(REFERENCE_SUMMARY), narrow=st.booleans(), cells=CELLS)
def test_property_report_skips_or_refuses_damaged_eval_files_in_one_line_changing_none(places, summary, narrow,
                                                                                     cells):
    if narrow and summary.startswith(b"{"):  # 40 outside the range: report reads per_eps.csv too
        with contextlib.suppress(ValueError, TypeError):
            summary = json.dumps(json.loads(summary) | {"eps_range": [10.0, 30.0]}).encode()
    per_eps = damaged_csv(Path(places["run"]) / "eval" / "per_eps.csv", cells)
    with tempfile.TemporaryDirectory() as tmp:
        logs = _damaged_logs(places, Path(tmp), summary, per_eps, None)
        inputs = files_of(logs)
        status, lines = _in_process(report_module, [str(logs), "--out", str(Path(tmp) / "report.md")])
        assert status in (0, 2) and "Traceback" not in "\n".join(lines), lines
        if status == 0:  # the good run is reported; the damaged one, if it is, is skipped in one warning
            assert (Path(tmp) / "report.md").is_file() and len(lines) <= 1, lines
            assert all(ln.startswith("ccpo_pl.report: warning: skipping '") and "bad/eval" in ln for ln in lines)
        else:
            assert len(lines) == 1 and lines[0].startswith("ccpo_pl.report: error: "), lines
        assert files_of(logs) == inputs


@PROPERTY
@given(config=st.one_of(st.none(), st.text(max_size=60).map(str.encode), st.sampled_from(
           [b"seed: [0\n", b"- a\n- b\n", b"eps: {range: [10]}\n", b"eps: {behavior: [a]}\n", b"\xff\xfe", b""])),
       cells=CELLS)
def test_property_plot_refuses_damaged_files_in_one_line_before_writing_anything(places, config, cells):
    per_eps = damaged_csv(Path(places["run"]) / "eval" / "per_eps.csv", cells)
    with tempfile.TemporaryDirectory() as tmp:
        logs = _damaged_logs(places, Path(tmp), None, per_eps, config)
        inputs = files_of(logs)
        out = Path(tmp) / "plots"
        status, lines = _in_process(plot_module, [str(logs), "--out", str(out)])
        assert status in (0, 2) and "Traceback" not in "\n".join(lines), lines
        if status == 0:
            assert (out / "thresholds.png").is_file()
        else:
            assert len(lines) == 1 and lines[0].startswith("ccpo_pl.plot: error: "), lines
            assert not out.exists()
        assert files_of(logs) == inputs


OBS_DIM = 8  # ball_circle's observations
OBS_ELEMENTS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                         st.sampled_from([1e39, -1e39, 1e-46]))
EPS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 100), st.booleans(), st.none(),
                st.text(max_size=3), st.sampled_from([1e39, 1e-50, 40.0, np.float32(40), np.int64(40)]),
                st.lists(st.floats(1, 70), min_size=1, max_size=3).map(np.array))


@st.composite
def observations(draw):
    kind = draw(st.sampled_from(["array", "array", "list", "tensor", "other"]))
    if kind == "other":
        return draw(st.sampled_from(["abc", None, {"x": 1}, object(), 1 + 2j, [[1, 2], [3]], True]))
    dim = draw(st.sampled_from([OBS_DIM, OBS_DIM, OBS_DIM - 1]))
    shape = draw(st.sampled_from([(dim,), (2, dim), (1, dim), (2, 2, dim)]))
    values = draw(st.lists(OBS_ELEMENTS, min_size=math.prod(shape), max_size=math.prod(shape)))
    array = np.array(values, dtype=np.float64).reshape(shape)
    if draw(st.booleans()):
        with np.errstate(all="ignore"):
            array = array.astype(draw(st.sampled_from([np.float32, np.complex64, np.int16, np.bool_])))
    return array.tolist() if kind == "list" else torch.as_tensor(array) if kind == "tensor" else array


@PROPERTY
@given(obs=observations(), eps=EPS, deterministic=st.sampled_from([True, False, "no", 1, None, np.bool_(True)]))
@example(obs=np.zeros(OBS_DIM, np.complex64) + 1j, eps=40.0, deterministic=True)
@example(obs=np.zeros(OBS_DIM), eps=True, deterministic=True)
@example(obs=np.zeros(OBS_DIM), eps=40.0, deterministic="no")
@example(obs=np.zeros(OBS_DIM), eps=1e39, deterministic=True)
def test_property_predict_acts_in_the_box_or_raises_one_line_value_or_type_error(policy, obs, eps, deterministic):
    assert policy.metadata["obs_dim"] == OBS_DIM
    try:
        action = policy.predict(obs, eps, deterministic=deterministic)
    except (ValueError, TypeError) as err:
        one_line(err)
        return
    # what is acted on: real observations and thresholds, finite in float32, and a real choice of policy
    kinds = {np.asarray(obs.numpy() if isinstance(obs, torch.Tensor) else obs).dtype.kind,
             np.asarray(eps).dtype.kind}
    assert kinds <= {"i", "u", "f"} and isinstance(deterministic, (bool, np.bool_)), (obs, eps, deterministic)
    assert np.all(np.abs(np.asarray(eps, np.float64)) <= 3.4e38)
    action = np.asarray(action.cpu() if isinstance(action, torch.Tensor) else action)
    assert action.shape[-1] == policy.metadata["act_dim"] and np.isfinite(action).all()
    assert (action >= policy.metadata["action_low"]).all() and (action <= policy.metadata["action_high"]).all()
