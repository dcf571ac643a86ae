"""Shared helpers of the benchmarks: compose the real config with overrides, run `fit`, print key=value lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from ccpo_pl.conf import CONF_DIR

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(defaults: list[str], argv: list[str]):
    """The project's config with the benchmark's defaults, then the command line's overrides on top."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*defaults, *argv])


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
