"""Every command block of README.md and docs/guide.md works as written.

The fast test parses each documented `ccpo_pl.fit`, `ccpo_pl.evaluate` and `ccpo_pl.export` command through the
same checks the commands run first (unknown groups and keys, Hydra's composition, the config table), so a refused
override in the docs fails here. The long test (`CCPO_PL_DOCS_TEST=1`, about 15 minutes on 2 cores) runs every
command block in order in a temporary folder, with tiny frame budgets appended: the commands in `SKIPPED`
(servers, accounts, clusters, GPUs, hour-long sweeps) are left out, each for the reason given there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ccpo_pl.conf import CONF_DIR
from ccpo_pl.evaluate import check_keys
from ccpo_pl.fit import _check_group_overrides
from ccpo_pl.validation import validate

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/guide.md")

#: a documented command containing this text is not run by the long test, for the reason given
SKIPPED = {
    "pip install uv && uv run --locked python -m ccpo_pl.fit": "the default training: 1M frames, about an hour",
    "pip install uv && uv run --locked pytest": "the test suite itself",
    "tensorboard --logdir": "a server that runs until stopped",
    "wandb sync": "uploads to W&B: needs an account and the network",
    "logger.offline=false": "logs to W&B online: needs an account and the network",
    "mlflow ui": "a server that runs until stopped",
    "logger.tracking_uri=http://": "needs an MLflow tracking server",
    "torchrun": "two nodes (tests/test_multinode.py runs it on one machine)",
    "srun ": "SLURM",
    "hydra/launcher=submitit_slurm": "SLURM",
    "trainer=gpu": "needs a GPU",
    "experiment=paper_table1": "15 runs at the paper's frame budgets (days on a CPU)",
    "experiment=eps_sampling": "a sweep at the paper's frame budgets",
    "experiment=cpo_figure1": "a sweep at the paper's frame budgets",
    "ccpo_pl.report logs/paper_table1": "reads the paper_table1 sweep, not run here",
    "ccpo_pl.report logs/eps_sampling": "reads the eps_sampling sweep, not run here",
    "ccpo_pl.plot logs/paper_table1": "reads the paper_table1 sweep, not run here",
    "benchmarks/cpo_figure1.py": "reads the cpo_figure1 sweep, not run here",
    "benchmarks/ccpo_throughput.py": "a benchmark of several minutes",
    "my_pkg.envs:MyEnv": "a placeholder for the user's own env",
}

#: appended to every documented fit command the long test runs (replacing the command's own values of these keys)
TINY_FIT = ("total_frames=400", "eval.episodes=1", "threads=1")
#: and to those not of experiment=smoke (which has its own small sizes)
TINY_SIZES = ("collect.num_envs=2", "collect.frames_per_collect=200", "collect.collects_per_epoch=2",
              "collect.batch_size=64", "collect.buffer_size=10000", "eval.final_episodes=1")
TINY_EVALUATE = ("episodes=1", "video_length=5", "threads=1")


@dataclass
class Command:
    text: str  # as documented (continuation lines joined)
    env: dict[str, str]  # leading VAR=value assignments
    argv: list[str]  # the words after them

    @property
    def module(self) -> str | None:
        """`fit`, `evaluate`, ... for `uv run --locked python -m ccpo_pl.<module>`, else None."""
        words = self.argv
        if words[:5] == ["uv", "run", "--locked", "python", "-m"] and words[5].startswith("ccpo_pl."):
            return words[5].removeprefix("ccpo_pl.")
        return None

    @property
    def args(self) -> list[str]:
        """The arguments after `python -m ccpo_pl.<module>`."""
        return self.argv[6:]

    @property
    def skipped(self) -> str | None:
        return next((why for text, why in SKIPPED.items() if text in self.text), None)


def documented_commands() -> list[Command]:
    """Every command of the ```bash blocks of README.md and docs/guide.md, in order."""
    commands = []
    for doc in DOCS:
        blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / doc).read_text(), flags=re.S | re.M)
        for block in blocks:
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                text = " ".join(words)
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                commands.append(Command(text, env, words))
    return commands


COMMANDS = documented_commands()


def _key(arg: str) -> str:
    return arg.lstrip("+~").partition("=")[0]


def _with(args: list[str], extra: tuple[str, ...]) -> list[str]:
    """`args` with the keys of `extra` replaced by `extra`'s values."""
    keys = {_key(a) for a in extra}
    return [a for a in args if _key(a) not in keys] + list(extra)


def compose_fit(args: list[str]):
    """The config `python -m ccpo_pl.fit <args>` composes (a multirun's first job), after fit's own checks."""
    _check_group_overrides([a for a in args if a != "-m"])
    overrides = [a.split(",")[0] if "=" in a and "[" not in a else a for a in args
                 if a not in ("-m", "--info") and not a.startswith(("hydra/", "hydra."))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_the_docs_have_commands_and_every_skip_names_one_of_them():
    modules = [c.module for c in COMMANDS]
    assert modules.count("fit") > 20 and {"evaluate", "export", "report", "plot"} <= set(modules)
    for text in SKIPPED:
        assert any(text in c.text for c in COMMANDS), f"no documented command contains {text!r}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module == "fit" and "my_pkg" not in c.text],
                         ids=lambda c: c.text[len("uv run --locked python -m ccpo_pl.fit "):][:80])
def test_every_documented_fit_command_passes_fits_checks(command, monkeypatch):
    import torch

    if "trainer=gpu" in command.args:  # checked as on a machine with GPUs
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    validate(compose_fit(command.args))


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module in ("evaluate", "export")],
                         ids=lambda c: c.text[len("uv run --locked python -m ccpo_pl."):][:80])
def test_every_documented_evaluate_and_export_command_has_known_keys(command):
    if command.module == "evaluate":
        check_keys(command.args)
    known = set(OmegaConf.load(CONF_DIR / f"{command.module}.yaml")) - {"defaults", "hydra"}
    assert {_key(a) for a in command.args} <= known
    assert not any(a.startswith("out=") and a.split("=", 1)[1].startswith(("benchmarks", "src", "tests", "docs"))
                   for a in command.args), "writes into a tracked folder"
    run = next(a.split("=", 1)[1] for a in command.args if a.startswith("run="))
    assert run.startswith("logs/") or any(a.startswith("out=logs/") for a in command.args), \
        "a run outside logs/ needs an out= under logs/ (the docs must not write into tracked folders)"


# ---------------------------------------------------------------- the long test: run them all
def _runnable(command: Command, cwd: Path) -> list[str] | None:
    """The argv the long test runs for a documented command (tiny sizes appended), or None to skip it."""
    if command.skipped:
        return None
    python = [sys.executable]
    if command.module == "fit":
        args = _with(command.args, TINY_FIT)
        cfg = compose_fit(args)
        if "experiment=smoke" not in args:
            args = _with(args, TINY_SIZES)
        if "compile" in cfg.algo:
            args = _with(args, ("algo.compile=false",))
        run_dir = cwd / str(cfg.log_dir) / str(cfg.run_name)
        if "--info" not in args and "-m" not in args and (run_dir / "config.yaml").is_file():
            # the docs list alternatives of one run name (algo.num_samples=32, trainer.devices=2 ...): each
            # starts its own run, as it would on its own
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.{len(list(run_dir.parent.iterdir()))}"))
        return python + ["-m", "ccpo_pl.fit", *args]
    if command.module == "evaluate":
        return python + ["-m", "ccpo_pl.evaluate", *_with(command.args, TINY_EVALUATE)]
    if command.module is not None:
        return python + ["-m", f"ccpo_pl.{command.module}", *command.args]
    raise AssertionError(f"a documented command neither run nor in SKIPPED: {command.text}")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CCPO_PL_DOCS_TEST"), reason="about 15 minutes: set CCPO_PL_DOCS_TEST=1")
def test_every_documented_command_runs_in_order(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # env=custom's example, "from the repository root"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    for command in COMMANDS:
        argv = _runnable(command, tmp_path)
        if argv is None:
            continue
        proc = subprocess.run(argv, cwd=tmp_path, env=env | command.env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{command.text}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "benchmarks").exists()  # nothing written into what would be tracked folders
