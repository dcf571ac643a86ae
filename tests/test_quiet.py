"""`ccpo_pl.quiet`: each third-party message every run printed is silenced, and nothing else is: a smoke `fit` and
its resume print none of them while a warning of our own still shows; each filter drops its one message (those a
smoke run on this machine may not provoke: CUDA_HOME) and lets a neighbour through."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from ccpo_pl import quiet

#: what the runs printed before (a piece of each message)
SILENCED = ("AdroitHand", "litlogger", "LeafSpec)` is deprecated", "Initialized LazyTensorStorage",
            "exists and is not empty", "No CUDA runtime is found",
            "max_epochs=", "Restoring states from the checkpoint", "Restored all states")
#: `python -m ccpo_pl.fit`, with a warning of ccpo_pl's own emitted once `main()` has installed the filters
FIT_WITH_OUR_WARNING = """
import sys, warnings
import ccpo_pl.fit as f
real = f.fit
def fit(*args, **kwargs):
    warnings.warn("ccpo_pl: a genuine warning of our own", UserWarning)
    return real(*args, **kwargs)
f.fit = fit
sys.argv = ["ccpo_pl.fit", *sys.argv[1:]]
f.main()
"""


def _fit(tmp_path, *overrides):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_HOME": str(tmp_path)}  # a CUDA toolkit and no GPU
    env.pop("CCPO_PL_VERBOSE", None)
    return subprocess.run([sys.executable, "-c", FIT_WITH_OUR_WARNING, "experiment=smoke", "threads=1",
                           f"log_dir={tmp_path / 'logs'}", "collect.collects_per_epoch=1", "eps.eval=[40]",
                           "progress.every_s=1", *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_smoke_fit_and_resume_print_none_of_the_silenced_messages_but_our_own_warning(tmp_path):
    first = _fit(tmp_path, "total_frames=200")
    again = _fit(tmp_path, "total_frames=400")  # a resume: the checkpoint directory is not empty
    for run in (first, again):
        assert run.returncode == 0, run.stderr[-3000:]
        output = run.stdout + run.stderr
        assert [s for s in SILENCED if s in output] == []
        assert "ccpo_pl: a genuine warning of our own" in output
        # Lightning's other messages on the same logger still show, once each (not also through Hydra's handler)
        assert output.count("GPU available:") == 1 and output.count("TPU available:") == 1
        progress = [ln for ln in run.stdout.splitlines() if " steps/s " in ln]  # stdout is a pipe: plain lines
        assert progress and progress[-1].split()[1:3] == ["frames", "200/200" if run is first else "400/400"]
    assert "resuming run" in again.stdout


def test_each_warning_filter_drops_its_message_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        for message, category, module in (
                ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                 "lightning.pytorch.utilities._pytree"),
                ("Checkpoint directory /x/checkpoints exists and is not empty.", UserWarning,
                 "lightning.pytorch.callbacks.model_checkpoint")):
            warnings.warn_explicit(message, category, "f.py", 1, module=module)
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "g.py", 1,
                               module="ccpo_pl.nets")  # the same text from elsewhere
        warnings.warn("ccpo_pl: ours", UserWarning)
    assert [str(w.message) for w in caught] == ["`isinstance(treespec, LeafSpec)` is deprecated", "ccpo_pl: ours"]


def test_each_log_filter_drops_its_records_only():
    quiet.install()
    quiet.install()  # idempotent: one filter per logger
    shown = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())
    for name, prefixes in quiet.LOG_RECORDS.items():
        logger = logging.getLogger(name)
        assert sum(isinstance(f, quiet._DropPrefixes) for f in logger.filters) == 1
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            for prefix in prefixes:
                logger.warning(prefix + " and the rest")
            logger.warning(f"{name}: another message")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    assert shown == [f"{name}: another message" for name in quiet.LOG_RECORDS]


def test_the_adroit_notice_is_dropped_and_other_notices_kept():
    from farama_notifications import notifications

    notifications["gymnasium_robotics"]["0.0.1"] = "AdroitHand envs changed"  # as in every affected release
    notifications["another_package"] = {"1.0": "another notice"}
    try:
        quiet.install()
        assert "0.0.1" not in notifications["gymnasium_robotics"]
        assert notifications["another_package"] == {"1.0": "another notice"}
    finally:
        notifications.pop("another_package")


#: a launcher's job process (submitit): Hydra's task function runs without `main()` having run
JOB_WITHOUT_MAIN = """
import sys
import ccpo_pl.fit as f
sys.argv = ["ccpo_pl.fit", *sys.argv[1:]]
f._hydra_main()
"""


def test_a_launcher_job_running_the_task_function_alone_prints_none_of_the_silenced_messages(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CCPO_PL_VERBOSE", None)
    run = subprocess.run([sys.executable, "-c", JOB_WITHOUT_MAIN, "experiment=smoke", "threads=1",
                          f"log_dir={tmp_path / 'logs'}", "collect.collects_per_epoch=1", "eps.eval=[40]",
                          "total_frames=200"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [s for s in SILENCED if s in run.stdout + run.stderr] == []
