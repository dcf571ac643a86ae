"""The third-party messages that every run printed and no user acts on, silenced one by one.

`install()` is called first thing by the command-line entry points (`ccpo_pl.fit`, also where a launcher's job runs
its task function alone, `ccpo_pl.evaluate`, `ccpo_pl.export`); `ccpo_pl.load` drops only the import notices
(`drop_notices`); importing ccpo_pl as a library changes nothing. Each silencer matches one message by its text
and where it comes from (a warning's category and module, or the one logger that prints it): every other warning,
ours included, still shows. To see them all again, set `CCPO_PL_VERBOSE=1`.
"""

from __future__ import annotations

import logging
import os
import warnings

#: (message regex, category, module regex) for `warnings.filterwarnings("ignore", ...)`
WARNINGS = (
    # Lightning's ModelCheckpoint, on every resume: the run's own checkpoints/ is not empty, as a resume needs (a
    # different config for an existing run is refused before this point)
    (r"Checkpoint directory .* exists and is not empty", UserWarning, ""),
    # torch deprecates `LeafSpec`, which Lightning's own pytree helper still builds; nothing to do on our side
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
# Not here: DDP's "find_unused_parameters=True was specified ... but did not find any unused parameters" (once per
# rank), which the C++ reducer logs past Python's warnings and logging. `fit.make_trainer` avoids it at its cause:
# DDP searches for unused parameters only for the algorithms that have some (`SafeRLModule.ddp_unused_parameters`).

#: logger name -> message prefixes to drop (a `logging.Filter` on that one logger; its other records still show)
LOG_RECORDS = {
    # Lightning's advertisement for its cloud logger, on every Trainer
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",
                                              # the end of every run: `fit` prints its own final line
                                              "`Trainer.fit` stopped: `max_epochs=",
                                              # every resume: `fit` has said which checkpoint it resumes from
                                              "Restoring states from the checkpoint path",
                                              "Restored all states from the checkpoint"),
    # TorchRL's INFO when the replay buffer allocates (it printed into the progress bar)
    "torchrl": ("Initialized LazyTensorStorage", "Initialized LazyMemmapStorage"),
    # torch.utils.cpp_extension on a machine with a CUDA toolkit and no GPU (imported by torch.compile's helpers)
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
}

#: (package, text in its notice): notices that `farama_notifications` makes a package print to stderr on import;
#: gymnasium-robotics (a gymnasium plugin, imported with gymnasium) prints one about its AdroitHand environments'
#: rewards, which ccpo_pl does not use
NOTICES = (("gymnasium_robotics", "AdroitHand"),)

#: loggers that print their own records and must not also pass them to the root logger: `lightning` gives itself a
#: stderr handler ("INFO: GPU available: ...") on import, and its records also reached the root handler that
#: Hydra installs (stdout), so every Trainer's device lines printed twice
OWN_HANDLERS = ("lightning",)


class _DropPrefixes(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def drop_notices() -> None:
    """Drop the `NOTICES` before their packages are imported (also what `ccpo_pl.load` does, as a library call);
    nothing when `CCPO_PL_VERBOSE` is set."""
    if os.environ.get("CCPO_PL_VERBOSE"):
        return
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    for package, text in NOTICES:
        versions = notifications.get(package, {})
        for version in [v for v, notice in versions.items() if text in notice]:
            del versions[version]


def install() -> None:
    """Install the filters above (idempotent); nothing when `CCPO_PL_VERBOSE` is set to a non-empty value."""
    if os.environ.get("CCPO_PL_VERBOSE"):
        return
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefixes in LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
    for name in OWN_HANDLERS:
        logging.getLogger(name).propagate = False
    drop_notices()
