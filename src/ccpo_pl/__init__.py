"""ccpo_pl: one policy pi(a|s, eps) for every cost threshold eps. Heavy modules are imported on first use."""

from ccpo_pl import compat

compat.install()


def train(overrides=()):
    """Train as `python -m ccpo_pl.fit <overrides>` does, e.g. `ccpo_pl.train(["env=car_circle", "seed=3"])`:
    `ccpo_pl.fit.train`, returning the run directory (`.run_dir`), the metrics and the policy (`.policy`)."""
    from ccpo_pl.fit import train

    return train(overrides)


def load(run, device="cpu"):
    """The policy of a run directory or checkpoint: `ccpo_pl.deploy.load` (`predict`, `metadata`)."""
    from ccpo_pl.deploy import load

    return load(run, device)


def __getattr__(name):
    """`ccpo_pl.deploy`, imported on first use."""
    if name != "deploy":
        raise AttributeError(f"module 'ccpo_pl' has no attribute {name!r}")
    import importlib

    return importlib.import_module("ccpo_pl.deploy")
