"""Shared helpers of the benchmarks: compose the real config with overrides, run `fit`, print key=value lines, load
a checkpoint's networks and replay buffer."""

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


def load_networks(ckpt_path: Path, actor_prefix: str = "actor.", critic_prefix: str = "critic."):
    """(checkpoint, run config, actor, critic, replay storage or None) of a CCPO checkpoint: the actor and critic
    whose `state_dict` keys start with the prefixes (e.g. "actor_old.", "critic_target."), and the replay buffer's
    storage dict of rank 0's newest sidecar (keys `_storage`, `_len`), where the sidecar is there."""
    from omegaconf import OmegaConf

    from ccpo_pl.checkpointing import safe_load, training_state
    from ccpo_pl.nets import make_actor, make_critic

    ckpt = safe_load(ckpt_path)
    hp = ckpt["hyper_parameters"]
    cfg = OmegaConf.create(hp["run_config"])
    obs_dim, act_dim = int(hp["obs_dim"]), int(hp["act_dim"])
    actor = make_actor(cfg.algo, obs_dim, act_dim, cfg.eps.range)
    critic = make_critic(cfg.algo, obs_dim, act_dim, cfg.eps.range)
    sd = ckpt["state_dict"]
    for net, prefix in ((actor, actor_prefix), (critic, critic_prefix)):
        net.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    sidecar = ckpt_path.parent / "sidecars" / "rank0" / f"{(training_state(ckpt) or {}).get('sidecar')}.pt"
    storage = safe_load(sidecar)["buffer"]["_storage"] if sidecar.is_file() else None
    return ckpt, cfg, actor, critic, storage
