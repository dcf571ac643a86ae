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


def smoke_eval(eps_range, eps_behavior) -> list:
    """`experiment=smoke`'s evaluation grid for any task: the ends of the task's `eps.range` and its middle
    behaviour threshold (BallCircle: [10, 40, 70]; PointCircle: [5, 25, 50])."""
    behavior = sorted(eps_behavior)
    return sorted({eps_range[0], behavior[len(behavior) // 2], eps_range[1]})


OmegaConf.register_new_resolver("ccpo_smoke_eval", smoke_eval, replace=True)
