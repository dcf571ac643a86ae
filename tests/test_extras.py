"""The optional integrations: each refused in one line naming its extra when it is not installed, before anything
is written; the repository's environment (the dev group) has every one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ccpo_pl import extras
from ccpo_pl.errors import ConfigError
from ccpo_pl.export import export_policy
from ccpo_pl.fit import _check_group_overrides, fit

REPO = Path(__file__).resolve().parents[1]


def test_the_extras_are_optional_and_the_dev_group_installs_them_all():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = " ".join(project["project"]["dependencies"])
    assert not any(name in deps for name in ("wandb", "mlflow", "onnx", "submitit"))
    assert set(project["project"]["optional-dependencies"]) == {"wandb", "mlflow", "onnx", "slurm", "all"}
    assert "ccpo_pl[all]" in project["dependency-groups"]["dev"]
    assert all(extras.installed(module) for module, _ in extras.NEEDS.values())  # uv run: all of them


@pytest.fixture
def without(monkeypatch):
    """`without(module)`: that module reads as not installed."""
    real = extras.installed

    def hide(module):
        monkeypatch.setattr(extras, "installed", lambda name: name != module and real(name))

    return hide


def test_a_missing_extra_is_refused_in_one_line_naming_it(without, tmp_path, smoke_config):
    without("wandb")
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the optional package wandb: pip install "
                                          r"'ccpo_pl\[wandb\]' \(or 'ccpo_pl\[all\]'\)$"):
        fit(smoke_config(tmp_path, "logger=wandb"))
    assert list(tmp_path.iterdir()) == []  # nothing written
    without("hydra_plugins.hydra_submitit_launcher")
    with pytest.raises(ConfigError, match=r"^hydra/launcher=submitit_slurm needs .* 'ccpo_pl\[slurm\]'"):
        _check_group_overrides(["hydra/launcher=submitit_slurm"])
    without("onnx")
    with pytest.raises(ConfigError, match=r"^format=onnx needs the optional package onnx: .*'ccpo_pl\[onnx\]'"):
        export_policy(tmp_path / "run", "onnx")
