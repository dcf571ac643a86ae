"""Fixtures shared by the test files: composing a run config from the package's config tree, reading what a
run logged to TensorBoard, and a two-process DDP smoke run. Each fixture is a function (session-scoped, so
module-scoped fixtures can use it too)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ccpo_pl.conf import CONF_DIR
from ccpo_pl.tb_runs import read_scalars


def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def _events(run_dir: Path, kinds: tuple[str, ...] = ("scalars", "images", "tensors")) -> EventAccumulator:
    """The run's own TensorBoard events of `kinds` (`tb/`, not its per-threshold runs), every one of them."""
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance=dict.fromkeys(kinds, 0))
    acc.Reload()
    return acc


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """`compose_config(*overrides, return_hydra_config=False)`: `config.yaml` composed as `ccpo_pl.fit` would."""
    return _compose


@pytest.fixture(scope="session")
def smoke_config() -> Callable[..., DictConfig]:
    """`smoke_config(log_dir, *overrides)`: the tiny run of `experiment=smoke`, its run directories under `log_dir`."""
    return lambda log_dir, *overrides: _compose("experiment=smoke", f"log_dir={log_dir}", *overrides)


@pytest.fixture(scope="session")
def tb_events() -> Callable[[Path], EventAccumulator]:
    """`tb_events(run_dir)`: every event of the run's TensorBoard folder (`<run dir>/tb`), loaded."""
    return _events


@pytest.fixture(scope="session")
def tb_scalars() -> Callable[[Path], dict[str, list[tuple[int, float]]]]:
    """`tb_scalars(run_dir)`: flat tag -> [(step, value), ...] of every scalar the run logged (`tb/` and its
    per-threshold runs `tb/eps_<eps>/`: `ccpo_pl.tb_runs`)."""
    def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
        return read_scalars(Path(run_dir) / "tb")  # the run's own tags and its per-threshold runs' flat tags

    return scalars


@pytest.fixture(scope="session")
def tb_values(tb_scalars) -> Callable[[Path], dict[str, list[float]]]:
    """`tb_values(run_dir)`: tag -> [value, ...] of every scalar the run logged, in step order."""
    return lambda run_dir: {tag: [v for _, v in events] for tag, events in tb_scalars(run_dir).items()}


def _ddp_smoke(cwd: Path, *overrides: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "ccpo_pl.fit", "experiment=smoke", "trainer.devices=2",
                          "check_sync=true", "run_name=ddp", "threads=1", "eps.eval=[25]", *overrides],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ddp_sync_checks="))
    return out, dict(kv.split("=") for kv in line.split())


@pytest.fixture(scope="session")
def ddp_smoke() -> Callable[..., tuple[subprocess.CompletedProcess, dict[str, str]]]:
    """`ddp_smoke(cwd, *overrides)`: `python -m ccpo_pl.fit experiment=smoke` in two CPU processes with
    `check_sync=true` (every parameter and buffer compared across ranks after each update), run in `cwd` (its run
    directory: `cwd/logs/smoke/ddp`); asserts it exited 0 and returns (the process, the fields of its
    `ddp_sync_checks=` line)."""
    return _ddp_smoke
