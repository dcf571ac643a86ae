"""`python -m ccpo_pl.export run=<run dir or checkpoint> format=onnx|torchscript [out=FILE] [std=true]` (Hydra).

Writes the policy pi(a|s, eps) of a checkpoint (any algorithm) as one self-contained file that needs neither
ccpo_pl nor TorchRL: inputs `observation [B, obs_dim]` and `eps [B]` (float32, eps in episode-cost units), output
`action [B, act_dim]`, the deterministic mean action clipped to the task's action box (`ccpo_pl.deploy.Policy`),
and with `std=true` a second output `std [B, act_dim]`. Observations go in as the env gives them: the env pipeline
has no observation normalisation. The metadata of `Policy.metadata` (task, env id, algo, sizes, trained eps range,
behaviour thresholds, action box) is stored in the file: ONNX `metadata_props` (each value JSON), TorchScript
`_extra_files["metadata.json"]`. An existing `out` is replaced only with
`overwrite=true`, and only if it is a policy exported by ccpo_pl (never the checkpoint read, a run's config or
another file); the file is written whole (`ccpo_pl.outputs`).
"""

from __future__ import annotations

import copy
import io
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import torch
from omegaconf import DictConfig

from ccpo_pl.conf import CONF_PATH
from ccpo_pl.errors import ConfigError, check_environment
from ccpo_pl.extras import require

if TYPE_CHECKING:
    from ccpo_pl.deploy import Policy

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUTS = ("observation", "eps")


def policy_bytes(policy: Policy, fmt: str, std: bool = False) -> bytes:
    """The exported file's bytes: `policy.module(std)` traced with a batch of two and saved in `fmt`
    (`onnx`: the TorchScript-based exporter with a dynamic batch axis; `torchscript`: `torch.jit.trace`)."""
    meta = policy.metadata
    low, high = meta["eps_range"]
    example = (torch.zeros(2, meta["obs_dim"], device=policy.device),
               torch.tensor([low, high], device=policy.device))
    outputs = ["action", "std"] if std else ["action"]
    module = copy.deepcopy(policy.module(std)).eval().requires_grad_(False)  # outputs without autograd history
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # both tracers are deprecated in favour of torch.export; the tracer's warnings are about values it freezes
        # (the number of behaviour thresholds): the tests hold every algorithm's file to its policy at several
        # batch sizes and thresholds
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.filterwarnings("ignore", category=category)
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, buf, _extra_files={"metadata.json": json.dumps(meta)})
            return buf.getvalue()
        torch.onnx.export(module, example, buf, input_names=list(INPUTS), output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *outputs)}, dynamo=False)
    import onnx

    model = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(model, {key: json.dumps(value) for key, value in meta.items()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_policy(run: str | Path, fmt: str, out: str | Path | None = None, *, std: bool = False,
                  overwrite: bool = False) -> Path:
    """Export the policy of a run directory or checkpoint to `out` (default `<run dir>/policy.onnx` or
    `policy.pt`); returns the path written. Bad values are one-line `ConfigError`s."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; allowed: {', '.join(FORMATS)}")
    require(f"format={fmt}")  # the onnx extra
    if not isinstance(std, bool) or not isinstance(overwrite, bool):
        raise ConfigError(f"std={std!r} and overwrite={overwrite!r} must be true or false")
    # here, not at the top: these import Lightning and TorchRL, which a refused format or flag does without
    from ccpo_pl import outputs
    from ccpo_pl.deploy import load
    from ccpo_pl.evaluation import resolve_checkpoint

    ckpt, run_dir = resolve_checkpoint(run)
    path = Path(out) if out is not None else run_dir / f"policy{FORMATS[fmt]}"
    if path.is_dir():
        raise ConfigError(f"out={str(path)!r} is a directory; pass a file name, e.g. out=policy{FORMATS[fmt]}")
    with outputs.claim(path, outputs.POLICY, overwrite=overwrite, inputs=[ckpt]) as place:
        place.write_file(policy_bytes(load(run), fmt, std))
    return path


@hydra.main(config_path=CONF_PATH, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """The command line: `export_policy` with the config's settings; errors are one line and exit status 2."""
    from ccpo_pl import quiet

    quiet.install()  # third-party messages no user acts on (each named in ccpo_pl/quiet.py)
    try:
        check_environment()
        if not cfg.run:
            raise ConfigError("run= is required: a ccpo_pl.fit run directory or a .ckpt file, e.g. run=logs/<run_name>")
        if not isinstance(cfg.run, str):
            raise ConfigError(f"run={cfg.run!r} is not allowed; run must be a ccpo_pl.fit run directory or a .ckpt "
                              f"file")
        path = export_policy(cfg.run, cfg.format, cfg.out, std=cfg.std, overwrite=cfg.overwrite)
    except ConfigError as err:
        print(f"ccpo_pl.export: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"out={path} format={cfg.format} std={cfg.std}")


if __name__ == "__main__":
    main()
