"""The Hydra config tree of `ccpo_pl` (`config.yaml`, `evaluate.yaml`, `export.yaml` and the groups `env/`,
`algo/`, `trainer/`, `logger/`, `experiment/`), shipped inside the package. The commands find it as
`pkg://ccpo_pl.conf`; code that reads the files itself uses `CONF_DIR`. It registers the config's own resolver
(`ccpo_smoke_eval`) and imports nothing but omegaconf."""

from pathlib import Path

from omegaconf import OmegaConf

#: the directory of the config files
CONF_DIR = Path(__file__).resolve().parent
#: Hydra's search path of the config tree (`config_path` of the commands' `hydra.main`)
CONF_PATH = "pkg://ccpo_pl.conf"
#: logger name (`logger=`) -> its folder in the run directory (a run that never started may leave only these)
LOGGER_DIRS = {"tensorboard": "tb", "csv": "csv", "wandb": "wandb", "mlflow": "mlruns"}


def smoke_eval(eps_range) -> list:
    """`experiment=smoke`'s evaluation grid for any task and algorithm: the ends of the task's `eps.range` and its
    midpoint (BallCircle: [10, 40, 70]; PointCircle: [5, 27.5, 50]). A range that is not two numbers is returned as
    it is, for the config check to name it."""
    try:
        lo, hi = (float(x) for x in eps_range)
    except (TypeError, ValueError):
        return list(eps_range)
    return sorted({lo, (lo + hi) / 2, hi})


OmegaConf.register_new_resolver("ccpo_smoke_eval", smoke_eval, replace=True)
