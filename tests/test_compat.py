"""Tests for ccpo_pl.compat: the safety-gymnasium dataclass shim and the bullet std-stream shim."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from ccpo_pl import compat


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_install_makes_safety_gymnasium_importable_and_restores_dataclass():
    result = _run(
        "import dataclasses; real = dataclasses.dataclass\n"
        "import ccpo_pl, safety_gymnasium\n"
        "from safety_gymnasium.assets.geoms import Hazards\n"
        "a, b = Hazards(), Hazards()\n"
        "assert a.color is not b.color and (a.color == b.color).all(), 'each instance owns a copy of color'\n"
        "assert dataclasses.dataclass is real, 'dataclass not restored'\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_safety_gymnasium_import_fails_without_the_shim():
    result = _run("import safety_gymnasium")
    assert result.returncode != 0
    assert "mutable default" in result.stderr


def test_array_defaults_as_factories_acts_only_on_the_package_and_only_inside():
    real = dataclasses.dataclass

    def make_class(module: str) -> type:
        return type("C", (), {"__module__": module, "__annotations__": {"color": np.ndarray}, "color": np.ones(3)})

    with compat.array_defaults_as_factories("fakepkg"):
        shimmed = dataclasses.dataclass(make_class("fakepkg.assets"))
        with pytest.raises(ValueError, match="mutable default"):
            dataclasses.dataclass(make_class("otherpkg"))
    assert dataclasses.dataclass is real
    first, second = shimmed(), shimmed()
    assert np.array_equal(first.color, np.ones(3)) and first.color is not second.color
    with pytest.raises(ValueError, match="mutable default"):
        dataclasses.dataclass(make_class("fakepkg.assets"))


def test_install_is_idempotent():
    before = sum(isinstance(f, compat._SafetyGymnasiumFinder) for f in sys.meta_path)
    compat.install()
    compat.install()
    after = sum(isinstance(f, compat._SafetyGymnasiumFinder) for f in sys.meta_path)
    assert after == before <= 1


def test_bullet_env_builds_under_pytest_capture():
    import gymnasium

    with compat.process_std_streams():
        import bullet_safety_gym  # noqa: F401

        env = gymnasium.make("SafetyBallCircle-v0")
    obs, _ = env.reset()
    assert obs.shape == (8,)
    env.close()


def _nvml_missing(name):
    raise OSError(f"{name}: cannot open shared object file")


def test_cuda_check_leaves_nvml_where_it_loads_and_switches_to_the_runtime_where_it_is_missing(monkeypatch):
    monkeypatch.setenv(compat.NVML_CHECK, "1")
    assert compat.cuda_check_without_nvml(load_nvml=lambda name: object()) is False
    assert os.environ[compat.NVML_CHECK] == "1"
    assert compat.cuda_check_without_nvml(load_nvml=_nvml_missing) is True
    assert os.environ[compat.NVML_CHECK] == "0"
    assert compat.cuda_check_without_nvml(load_nvml=_nvml_missing) is False  # only Lightning's "1" is switched


def test_cuda_availability_is_the_same_through_nvml_and_the_runtime(monkeypatch):
    """The switch must not change the answer on this machine (with or without a GPU)."""
    import torch

    monkeypatch.setenv(compat.NVML_CHECK, "1")
    through_nvml = (torch.cuda.is_available(), torch.cuda.device_count())
    monkeypatch.setenv(compat.NVML_CHECK, "0")
    assert (torch.cuda.is_available(), torch.cuda.device_count()) == through_nvml
