"""The package as users install it: the wheel carries the whole config tree, and in a fresh environment outside the
repository its console scripts train; the lighter commands load without the trainer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ccpo_pl.conf import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("ccpo-fit", "ccpo-evaluate", "ccpo-report", "ccpo-plot", "ccpo-export")


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is not on PATH (the README installs everything through it)"
    return uv


def _outside_env() -> dict[str, str]:
    """This process's environment without what points Python or uv at the repository's own environment."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def build_wheel(out: Path) -> Path:
    subprocess.run([_uv(), "build", "--wheel", "--out-dir", str(out), str(REPO)], cwd=out, check=True,
                   capture_output=True, timeout=300)
    (wheel,) = out.glob("ccpo_pl-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh environment at `venv` with the lock's packages (from uv's cache) and the wheel; its bin directory."""
    env = _outside_env() | {"UV_PROJECT_ENVIRONMENT": str(venv)}
    subprocess.run([_uv(), "sync", "--project", str(REPO), "--locked", "--offline", "--no-dev",
                    "--no-install-project", "--quiet"], cwd=venv.parent, env=env, check=True, timeout=600)
    python = venv / "bin" / "python"
    subprocess.run([_uv(), "pip", "install", "--python", str(python), "--offline", "--no-deps", "--quiet",
                    str(wheel)], cwd=venv.parent, env=_outside_env(), check=True, timeout=300)
    return venv / "bin"


@pytest.mark.slow
def test_wheel_has_the_config_tree_and_its_ccpo_fit_trains_outside_the_repository(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = sorted(f"ccpo_pl/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml"))
    assert len(tree) > 30 and "ccpo_pl/conf/experiment/smoke.yaml" in tree
    assert [n for n in tree if n not in names] == []
    assert "ccpo_pl/conf/__init__.py" in names

    bin_dir = install(wheel, tmp_path / "venv")
    assert all((bin_dir / script).is_file() for script in SCRIPTS)
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import ccpo_pl.conf as c; print(c.CONF_DIR)"], cwd=work,
                           env=_outside_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv")  # the installed package, not the repository's source

    logs = tmp_path / "logs"
    proc = subprocess.run([str(bin_dir / "ccpo-fit"), "experiment=smoke", f"log_dir={logs}", "threads=1"], cwd=work,
                          env=_outside_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train/frames=1600" in proc.stdout
    run_dir = logs / "ball_circle-ccpo-s0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in work.iterdir()) == []  # nothing written in the working directory


def test_evaluate_and_export_load_without_the_trainer():
    code = ("import sys, ccpo_pl.evaluate, ccpo_pl.export, ccpo_pl.report, ccpo_pl.conf; "
            "print(sorted(m for m in sys.modules if m in ('ccpo_pl.fit', 'ccpo_pl.callbacks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_console_scripts_are_the_module_commands():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ccpo-fit": "ccpo_pl.fit:main", "ccpo-evaluate": "ccpo_pl.evaluate:main",
                       "ccpo-report": "ccpo_pl.report:main", "ccpo-plot": "ccpo_pl.plot:main",
                       "ccpo-export": "ccpo_pl.export:main"}
