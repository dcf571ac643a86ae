"""The Hydra config tree of `ccpo_pl` (`config.yaml`, `evaluate.yaml`, `export.yaml` and the groups `env/`,
`algo/`, `trainer/`, `logger/`, `experiment/`), shipped inside the package. The commands find it as
`pkg://ccpo_pl.conf`; code that reads the files itself uses `CONF_DIR`. This module imports nothing else."""

from pathlib import Path

#: the directory of the config files
CONF_DIR = Path(__file__).resolve().parent
#: Hydra's search path of the config tree (`config_path` of the commands' `hydra.main`)
CONF_PATH = "pkg://ccpo_pl.conf"
#: logger name (`logger=`) -> its folder in the run directory (a run that never started may leave only these)
LOGGER_DIRS = {"tensorboard": "tb", "csv": "csv", "wandb": "wandb", "mlflow": "mlruns"}
