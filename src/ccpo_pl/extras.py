"""The optional integrations (`pip install 'ccpo_pl[wandb]'`, `[mlflow]`, `[onnx]`, `[slurm]`, or `[all]`): a command
that needs one that is not installed is refused in one line naming the extra, before anything is written. The
repository's own environment (`uv run`, its dev group) has them all."""

from __future__ import annotations

import importlib.util

from ccpo_pl.errors import ConfigError

#: what needs an extra -> (the module it imports, the extra that installs it)
NEEDS = {
    "logger=wandb": ("wandb", "wandb"),
    "logger=mlflow": ("mlflow", "mlflow"),
    "format=onnx": ("onnx", "onnx"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require(setting: str) -> None:
    """A one-line `ConfigError` when `setting` (a key of `NEEDS`) needs an extra that is not installed."""
    if setting not in NEEDS:
        return
    module, extra = NEEDS[setting]
    if not installed(module):
        raise ConfigError(f"{setting} needs the optional package {module.split('.')[-1].replace('_', '-')}: "
                          f"pip install 'ccpo_pl[{extra}]' (or 'ccpo_pl[all]')")
