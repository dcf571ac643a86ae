"""Compatibility shims for the two safe-RL simulators on Python 3.11.

Two third-party packages fail in ways no version pin fixes:

1. ``import safety_gymnasium`` (1.0.0, the only release) raises on Python 3.11+: its asset dataclasses declare
   ``color: np.array = COLOR[...]``, a numpy-array default, and 3.11's ``dataclasses`` rejects every unhashable
   default. :func:`install` puts a meta-path finder in front of the normal one. While, and only while, the
   ``safety_gymnasium`` package executes its import, ``dataclasses.dataclass`` is wrapped so that classes of that
   package get ``field(default_factory=array.copy)`` instead of the array default. The original decorator is put
   back afterwards, and other packages' dataclasses are never touched. The arrays are only read, so a copy per
   instance changes no behaviour. Editing the installed files is not an option: uv hard-links ``.venv`` files
   to its shared cache.
2. ``bullet_safety_gym`` (1.4.0) looks up C's ``stdout``/``stderr`` symbol from the *name* of ``sys.stdout`` /
   ``sys.stderr`` to silence pybullet; under pytest's capture (or Jupyter) the name is not ``<stdout>`` and the
   import and every env constructor fail with ``undefined symbol: _io.FileIO ...``. Run both inside
   :func:`process_std_streams`.

One shim is about speed, not import: :func:`cuda_check_without_nvml` (called by ``ccpo_pl.fit``; see its docstring).

``ccpo_pl/__init__.py`` calls :func:`install`, so any module importing ``ccpo_pl`` (including spawn-started
``ParallelEnv`` workers whose env factory lives in ``ccpo_pl``) can import ``safety_gymnasium``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator

_PACKAGE = "safety_gymnasium"


def _array_defaults_to_factories(cls: type) -> None:
    """Replaces numpy-array class attributes that are annotated fields by ``field(default_factory=copy)``."""
    import numpy as np

    for name in cls.__dict__.get("__annotations__", {}):
        default = cls.__dict__.get(name)
        if isinstance(default, np.ndarray):
            setattr(cls, name, dataclasses.field(default_factory=default.copy))


@contextlib.contextmanager
def array_defaults_as_factories(package: str = _PACKAGE) -> Iterator[None]:
    """Context manager: ``dataclasses.dataclass`` accepts numpy-array defaults for classes of ``package``.

    Args:
        package: top-level package whose classes are rewritten; all other classes pass through unchanged.
    """
    real_dataclass = dataclasses.dataclass

    def dataclass(cls=None, /, **kwargs):
        def wrap(c):
            if c.__module__.partition(".")[0] == package:
                _array_defaults_to_factories(c)
            return real_dataclass(c, **kwargs)

        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = dataclass
    try:
        yield
    finally:
        dataclasses.dataclass = real_dataclass


class _SafetyGymnasiumFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that runs the ``safety_gymnasium`` package import under the dataclass shim."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _PACKAGE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module  # PathFinder builds a fresh loader for this spec only

        def exec_module_with_shim(module):
            with array_defaults_as_factories():
                exec_module(module)

        spec.loader.exec_module = exec_module_with_shim
        return spec


def install() -> None:
    """Makes ``import safety_gymnasium`` work on Python 3.11+; idempotent, a no-op on older Pythons."""
    if sys.version_info < (3, 11) or _PACKAGE in sys.modules:
        return
    if not any(isinstance(finder, _SafetyGymnasiumFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SafetyGymnasiumFinder())


@contextlib.contextmanager
def process_std_streams() -> Iterator[None]:
    """Context manager: ``sys.stdout``/``sys.stderr`` are the process streams (for bullet-safety-gym).

    Wrap ``import bullet_safety_gym`` and every bullet env construction in it, so that the package finds the C
    symbols it derives from the stream names even under pytest's output capture.
    """
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        yield


#: Lightning sets it to "1" when imported: `torch.cuda.is_available()` asks NVML first (it does not poison fork).
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def cuda_check_without_nvml(load_nvml=ctypes.CDLL) -> bool:
    """Where NVML cannot be loaded, switch torch's CUDA availability check from NVML to the CUDA runtime; True if
    switched.

    ``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``. On a machine without ``libnvidia-ml`` (a CUDA
    build of torch on a CPU-only machine, the common case for CPU training), torch then retries loading the library
    on every ``torch.cuda.is_available()`` and, when that fails, asks the CUDA runtime anyway. ``torch.optim.Adam``
    calls it on every step, two steps per CCPO update (its cost: docs/performance.md). With the library missing, the
    runtime check gives the same answer with the same fork behaviour (torch falls back to it every time), without
    the failed load. Nothing changes where NVML loads.
    """
    if os.environ.get(NVML_CHECK) != "1":
        return False
    try:
        load_nvml("libnvidia-ml.so.1")
    except OSError:
        os.environ[NVML_CHECK] = "0"
        return True
    return False
