"""Fault tolerance on the smoke config: kills, preemption, reproducibility, numerical faults, safe loading, disk.

Runs that must die (SIGKILL, signals, the command line's exit codes) are forked from this process and run the
command line's `main()` (no 10 s of imports per process); everything else calls `fit` in this process. All runs
use one torch thread, so that they are fast and bit-reproducible.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from torchrl.envs.transforms import Transform

import ccpo_pl.algos.ccpo.equations as eq
import ccpo_pl.algos.ccpo.module as ccpo_module
import ccpo_pl.checkpointing as checkpointing
import ccpo_pl.fit as fit_module
from ccpo_pl.algos.ccpo.module import CCPO
from ccpo_pl.algos.lagrange import gradient_step
from ccpo_pl.callbacks import Preemption, requeue_slurm_job
from ccpo_pl.checkpointing import Sidecars, safe_load
from ccpo_pl.data import OffPolicyStream
from ccpo_pl.errors import ConfigError
from ccpo_pl.faults import NumericalFault, StorageError, all_finite, finite_now
from ccpo_pl.fit import check_checkpoint, fit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import fault_injection  # noqa: E402 - the benchmark's trials, run here with forked processes

#: 2 epochs x 2 collections x 200 frames, 40 updates per collection
BASE = ("threads=1", "total_frames=800", "run_name=r")  # on experiment=smoke


def last_ckpt(run_dir: Path) -> dict:
    return safe_load(run_dir / "checkpoints" / "last.ckpt")


def _run_main(args: list[str], output: str, before) -> None:
    out = open(output, "w", buffering=1)  # noqa: SIM115 - lives as long as the forked process
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out
    if before is not None:
        before()
    sys.argv = ["ccpo_pl.fit", *args]
    fit_module.main()


class ForkedFit:
    """`python -m ccpo_pl.fit <args>` as a forked child running `main()`, output into a file; the parts of
    `subprocess.Popen` the fault-injection benchmark uses (`poll`, `wait`, `kill`)."""

    def __init__(self, args: list[str], output: Path, before=None):
        self.output = Path(output)
        self.proc = multiprocessing.get_context("fork").Process(target=_run_main, args=(list(args), str(output),
                                                                                         before))
        self.proc.start()

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = 120) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            raise subprocess.TimeoutExpired("ccpo_pl.fit", timeout)
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()

    def send_signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def forked_cli(log_dir: Path, *overrides: str, before=None) -> ForkedFit:
    return ForkedFit(["experiment=smoke", *BASE, f"log_dir={log_dir}", *overrides],
                     log_dir.parent / f"{log_dir.name}.out", before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smoke_config):
    """An uninterrupted run, recording the thresholds drawn for every update."""
    log_dir = tmp_path_factory.mktemp("reference")
    draws = []
    with pytest.MonkeyPatch.context() as mp:
        original = CCPO.sample_train_eps
        mp.setattr(CCPO, "sample_train_eps", lambda self: draws.append(original(self)) or draws[-1])
        fit(smoke_config(log_dir, *BASE))
    return log_dir / "r", draws


# ---------------------------------------------------------------- 3. reproducibility
def test_same_config_and_seed_give_identical_parameters_and_metrics(reference, tmp_path, smoke_config, tb_scalars):
    run_dir, _ = reference
    fit(smoke_config(tmp_path, *BASE))
    ours, theirs = last_ckpt(tmp_path / "r"), last_ckpt(run_dir)
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in ours["state_dict"])
    mine, ref = tb_scalars(tmp_path / "r"), tb_scalars(run_dir)
    timing = [t for t in ref if t.startswith("time/")]
    assert mine.keys() == ref.keys() and len(ref) > 40
    assert {t: v for t, v in mine.items() if t not in timing} == {t: v for t, v in ref.items() if t not in timing}


# ---------------------------------------------------------------- 2. preemption (and 3. what a resume keeps)
def _train_frames_logged(run_dir: Path, tb_scalars) -> bool:
    events = list((run_dir / "tb").glob("events.*"))
    return bool(events) and "train/frames" in tb_scalars(run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_a_collection_boundary_and_the_same_command_resumes(reference, tmp_path, monkeypatch,
                                                                             signum, smoke_config, tb_scalars):
    ref_dir, ref_draws = reference
    run = forked_cli(tmp_path / "logs")
    run_dir = tmp_path / "logs" / "r"
    deadline = time.monotonic() + 120
    while not _train_frames_logged(run_dir, tb_scalars) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)  # the first collection's metrics are flushed: training has started
    run.send_signal(signum)
    assert run.wait() == 0, run.text()[-3000:]
    lines = [ln for ln in run.text().splitlines() if ln.startswith("ccpo_pl.fit: stopped by")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0]
    assert "re-run the same command to resume" in lines[0] and "Traceback" not in run.text()
    stopped = last_ckpt(run_dir)
    frames = stopped["training_state"]["stream"]["frames"]
    assert frames in (200, 400, 600) and f"at frame {frames};" in lines[0]  # a collection boundary, not the end
    assert stopped["global_step"] == 2 * 40 * frames // 200  # every collection's 40 updates (2 optimizer steps)
    shutil.copytree(tmp_path / "logs", tmp_path / "again")

    draws = []
    original = CCPO.sample_train_eps
    monkeypatch.setattr(CCPO, "sample_train_eps", lambda self: draws.append(original(self)) or draws[-1])
    assert fit(smoke_config(tmp_path / "logs", *BASE))["train/frames"] == 800
    monkeypatch.undo()
    done, ref = last_ckpt(run_dir), last_ckpt(ref_dir)
    for key in ("global_step", "epoch"):
        assert done[key] == ref[key]
    assert done["training_state"]["stream"] == ref["training_state"]["stream"] == {"frames": 800, "collects": 4}
    # bit-identical after the resume: the thresholds drawn for every update, and the update metrics of the
    # collection before the stop (logged after the next one)
    updates_before = 40 * frames // 200
    assert len(draws) == len(ref_draws) - updates_before
    assert all(torch.equal(a, b) for a, b in zip(draws, ref_draws[updates_before:]))
    tags, ref_tags = tb_scalars(run_dir), tb_scalars(ref_dir)
    assert [s for s, _ in tags["train/frames"]] == [200, 400, 600, 800]  # no gap, no duplicate
    assert [s for s, _ in tags["loss/critic"]] == [s for s, _ in ref_tags["loss/critic"]]
    if frames < 800:
        first_after = frames + 200
        assert dict(tags["loss/critic"])[first_after] == dict(ref_tags["loss/critic"])[first_after]
    # a resume is deterministic: resuming the same checkpoint again gives the same run
    fit(smoke_config(tmp_path / "again", *BASE))
    twin = last_ckpt(tmp_path / "again" / "r")
    assert all(torch.equal(twin["state_dict"][k], done["state_dict"][k]) for k in done["state_dict"])


def test_preemption_watches_slurms_requeue_signal_and_requeues_through_scontrol(tmp_path, monkeypatch):
    class Connector:
        cluster_environment = SLURMEnvironment(auto_requeue=True)

    class Trainer:
        _accelerator_connector = Connector()

    assert Preemption(tmp_path / "last.ckpt").watched_signals(Trainer()) == [signal.SIGTERM, signal.SIGINT,
                                                                              signal.SIGUSR1]
    Connector.cluster_environment = SLURMEnvironment(auto_requeue=False)
    assert signal.SIGUSR1 not in Preemption(tmp_path / "last.ckpt").watched_signals(Trainer())
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert requeue_slurm_job() == "SLURM job 4242 requeued"
    assert (tmp_path / "called").read_text().strip() == "requeue 4242"


# ---------------------------------------------------------------- 1. kill at any moment
def test_fault_injection_kills_resume_and_finish():
    summary = fault_injection.run_trials(2, seed=1, overrides=["threads=1", "total_frames=800"], launch=ForkedFit,
                                         timeout=120)
    assert summary["trials"] == summary["resumed"] == summary["finished"] == 2
    assert summary["corrupt"] == 0
    assert 0 <= summary["max_frames_lost"] <= 400  # one checkpoint interval (an epoch)


def _die_while_writing_the_second_last_ckpt() -> None:
    """In the forked run: after the sidecar of epoch 2 is written, SIGKILL half-way through writing last.ckpt."""
    original, calls = checkpointing.atomic_torch_save, []

    def dying(obj, path):
        if Path(path).name == "last.ckpt":
            calls.append(path)
            if len(calls) == 2:
                (Path(path).parent / ".last.ckpt.half.tmp").write_bytes(b"PK\x03\x04" + bytes(1000))
                os.kill(os.getpid(), signal.SIGKILL)
        original(obj, path)

    checkpointing.atomic_torch_save = dying


def test_kill_while_writing_a_checkpoint_keeps_the_previous_pair_and_the_rerun_resumes(tmp_path, capsys, smoke_config):
    run = forked_cli(tmp_path / "logs", "checkpoint.keep_buffers=1", before=_die_while_writing_the_second_last_ckpt)
    assert run.wait() == -signal.SIGKILL
    ckpt_dir = tmp_path / "logs" / "r" / "checkpoints"
    state = safe_load(ckpt_dir / "last.ckpt")["training_state"]
    assert state["stream"]["frames"] == 400
    sidecars = sorted(p.name for p in (ckpt_dir / "sidecars" / "rank0").iterdir())
    assert sidecars == [f"{400:013d}.pt", f"{800:013d}.pt"]  # the pair, and a newer unreferenced sidecar
    assert (ckpt_dir / ".last.ckpt.half.tmp").exists()
    assert fit(smoke_config(tmp_path / "logs", *BASE, "checkpoint.keep_buffers=1"))["train/frames"] == 800
    assert "resuming run" in capsys.readouterr().out
    assert not list(ckpt_dir.rglob("*.tmp"))
    assert safe_load(ckpt_dir / "last.ckpt")["training_state"]["stream"]["frames"] == 800


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("sidecar", ["missing", "malicious", "another structure", "another buffer"])
def test_a_missing_or_unreadable_sidecar_warns_and_the_run_continues(reference, tmp_path, sidecar, smoke_config):
    run_dir, _ = reference
    shutil.copytree(run_dir, tmp_path / "r")
    token = last_ckpt(tmp_path / "r")["training_state"]["sidecar"]
    path = tmp_path / "r" / "checkpoints" / "sidecars" / "rank0" / f"{token}.pt"
    marker = tmp_path / "pwned"
    if sidecar == "missing":
        path.unlink()
    elif sidecar == "malicious":
        torch.save({"buffer": _RunsCode(str(marker)), "rng": {}}, path)
    elif sidecar == "another structure":  # a valid torch file: another run's RNG states alone, say
        torch.save({"rng": safe_load(path)["rng"]}, path)
    else:  # the right structure, a buffer of other sizes
        good = safe_load(path)
        good["buffer"]["_storage"]["_storage"]["observation"] = torch.zeros(3, 5)
        torch.save(good, path)
    match = {"missing": "no replay-buffer sidecar", "malicious": r"unreadable replay-buffer sidecar \(Unpickl",
             "another structure": "a replay-buffer sidecar of another structure",
             "another buffer": "a replay-buffer sidecar that does not fit this run"}[sidecar]
    with pytest.warns(UserWarning, match=match):
        assert fit(smoke_config(tmp_path, *BASE, "total_frames=1200"))["train/frames"] == 1200
    assert not marker.exists()
    token = last_ckpt(tmp_path / "r")["training_state"]["sidecar"]
    final = tmp_path / "r" / "checkpoints" / "sidecars" / "rank0" / f"{token}.pt"
    assert int(safe_load(final)["buffer"]["_storage"]["_len"]) == 400  # an empty buffer, then 400 new frames


def test_sidecar_pruning_spares_the_previous_checkpoints_pair_and_newer_leftovers(tmp_path):
    sidecars = Sidecars(tmp_path, rank=0, keep=1)
    sidecars.save(f"{400:013d}", {"f": torch.tensor(400)})
    checkpointing.atomic_torch_save({"f": torch.tensor(1200)}, sidecars.path(f"{1200:013d}"))  # a killed run's
    sidecars.save(f"{800:013d}", {"f": torch.tensor(800)}, protect=f"{400:013d}")
    assert sorted(p.stem for p in (tmp_path / "rank0").iterdir()) == [f"{f:013d}" for f in (400, 800, 1200)]
    sidecars.save(f"{1200:013d}", {"f": torch.tensor(1200)}, protect=f"{800:013d}")
    assert sorted(p.stem for p in (tmp_path / "rank0").iterdir()) == [f"{f:013d}" for f in (800, 1200)]


# ---------------------------------------------------------------- 4. numerical faults
class InjectNaN(Transform):
    """A faulty simulator: NaN in `key` of the first sub-env at the `at`-th step of the batched env (as the first
    transform, i.e. in what the simulator returned)."""

    def __init__(self, key: str, at: int):
        super().__init__(in_keys=[], out_keys=[])
        self.key, self.at, self.steps = key, at, 0

    def _step(self, tensordict, next_tensordict):
        self.steps += 1
        if self.steps == self.at:
            value = next_tensordict.get(self.key).clone()
            value[0] = float("nan")
            next_tensordict.set(self.key, value)
        return next_tensordict


def faulty_train_env(monkeypatch, key: str, at: int) -> None:
    make_env = fit_module.make_env

    def make(*args, **kwargs):
        env = make_env(*args, **kwargs)
        if kwargs.get("eps_mode", "sample") == "sample":
            env.insert_transform(0, InjectNaN(key, at))
        return env

    monkeypatch.setattr(fit_module, "make_env", make)


#: 1 collection of 200 frames per epoch: last.ckpt at 200, a fault in the second collection is found at frame 400
SHORT = ("collect.collects_per_epoch=1", "total_frames=400")


@pytest.mark.parametrize("key", ["observation", "reward", "cost"])
def test_nan_from_the_env_stops_the_run_naming_it_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, key,
                                                                                 smoke_config):
    faulty_train_env(monkeypatch, key, at=150)  # env step 150 of 2 sub-envs: frame 300, in the 2nd collection
    with pytest.raises(NumericalFault) as err:
        fit(smoke_config(tmp_path, *BASE, *SHORT))
    message = str(err.value)
    assert message.startswith(f"non-finite env {key} (1 transitions) at frame 300, in the collection ending at frame "
                              f"400;") and "\n" not in message
    assert last_ckpt(tmp_path / "r")["training_state"]["stream"]["frames"] == 200  # the last good one, not overwritten
    assert not (tmp_path / "r" / "checkpoints" / "sidecars" / "rank0" / f"{400:013d}.pt").exists()


def test_nan_from_the_env_with_on_nan_skip_is_dropped_and_counted(tmp_path, monkeypatch, smoke_config, tb_scalars):
    faulty_train_env(monkeypatch, "reward", at=150)
    assert fit(smoke_config(tmp_path, *BASE, *SHORT, "faults.on_nan=skip"))["train/frames"] == 400
    ckpt = last_ckpt(tmp_path / "r")
    assert ckpt["training_state"]["faults"] == {"skipped_updates": 0, "dropped_transitions": 1}
    sidecar = safe_load(tmp_path / "r" / "checkpoints" / "sidecars" / "rank0"
                        / f"{ckpt['training_state']['sidecar']}.pt")
    assert int(sidecar["buffer"]["_storage"]["_len"]) == 399
    assert tb_scalars(tmp_path / "r")["faults/dropped_transitions"] == [(400, 1.0)]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def poison_batches(monkeypatch, index: int) -> None:
    """The `index`-th replay batch of every epoch gets a NaN observation."""
    original = OffPolicyStream.__iter__

    def poisoned(self):
        for i, batch in enumerate(original(self)):
            if i == index:
                batch = batch.clone()
                batch["observation"][0, 0] = float("nan")
            yield batch

    monkeypatch.setattr(OffPolicyStream, "__iter__", poisoned)


def test_a_poisoned_batch_stops_the_run_naming_it(tmp_path, monkeypatch, smoke_config):
    poison_batches(monkeypatch, 5)
    with pytest.raises(NumericalFault, match=r"^non-finite batch observation at frame 200;"):
        fit(smoke_config(tmp_path, *BASE, *SHORT))
    assert not (tmp_path / "r" / "checkpoints" / "last.ckpt").exists()


def test_a_poisoned_batch_with_on_nan_skip_is_skipped_and_counted(tmp_path, monkeypatch, smoke_config, tb_scalars):
    poison_batches(monkeypatch, 5)
    assert fit(smoke_config(tmp_path, *BASE, *SHORT, "faults.on_nan=skip"))["train/frames"] == 400
    ckpt = last_ckpt(tmp_path / "r")
    assert ckpt["training_state"]["faults"] == {"skipped_updates": 2, "dropped_transitions": 0}  # one per epoch
    assert tb_scalars(tmp_path / "r")["faults/skipped_updates"] == [(400, 1.0)]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_nan_dual_stops_the_run_naming_it(tmp_path, monkeypatch, smoke_config):
    original, calls = eq.solve_estep_dual, []

    def faulty(*args, **kwargs):
        calls.append(1)
        eta, lam = original(*args, **kwargs)
        return (torch.full_like(eta, float("nan")) if len(calls) == 3 else eta), lam

    monkeypatch.setattr(eq, "solve_estep_dual", faulty)
    with pytest.raises(NumericalFault, match=r"^non-finite E-step dual eta at frame 200;"):
        fit(smoke_config(tmp_path, *BASE, *SHORT))


def test_a_non_finite_parameter_stops_the_run_even_with_on_nan_skip(tmp_path, monkeypatch, smoke_config):
    original, calls = ccpo_module.polyak, []

    def faulty(target, source, tau):
        original(target, source, tau)
        calls.append(1)
        if len(calls) == 3:
            next(target.parameters()).data[0] = float("inf")

    monkeypatch.setattr(ccpo_module, "polyak", faulty)
    with pytest.raises(NumericalFault, match=r"^non-finite parameter critic_target\.\S+ at frame 200;"):
        fit(smoke_config(tmp_path, *BASE, *SHORT, "faults.on_nan=skip"))


def test_duals_and_multipliers_stay_within_their_bounds(reference):
    q_r = torch.randn(3, 16, 8) * 1e6
    q_c = torch.randn(3, 16, 8).abs() * 1e6
    for start in (1e-9, -5.0), (1e9, 1e9):  # warm starts outside the box
        eta0, lam0 = torch.full((3,), start[0]), torch.full((3,), start[1])
        eta, lam = eq.solve_estep_dual(q_r, q_c, torch.tensor([0.0, 1.0, 1e9]), 0.02, eta0, lam0, lam_max=100.0)
        assert torch.all((eta >= 1e-3) & (eta <= 1e3)) and torch.all((lam >= 0) & (lam <= 100.0))
    kl = torch.tensor([float("inf"), -1e9, 0.3])
    assert eq.kl_multiplier_update(torch.zeros(3), kl, 0.005, 1.0, 1.0).tolist() == [1.0, 0.0, pytest.approx(0.295)]
    lam = gradient_step(torch.zeros(3), torch.tensor([1e12, -1e12, 0.0]), torch.zeros(3), 0.01, 100.0)
    assert lam.tolist() == [100.0, 0.0, 0.0]
    ckpt = last_ckpt(reference[0])
    state, dual, kl_max = ckpt["state_dict"], ckpt["hyper_parameters"]["dual"], ckpt["hyper_parameters"]["kl_max"]
    assert torch.all((state["eta"] >= 1e-3) & (state["eta"] <= 1e3))
    assert torch.all((state["lam"] >= 0) & (state["lam"] <= dual["lam_max"]))
    for name, cap in zip(("alpha_mu", "alpha_sigma"), kl_max):
        assert torch.all((state[name] >= 0) & (state[name] <= cap))


# ---------------------------------------------------------------- 5. safe loading
def _write_malicious(path: Path, marker: Path, as_torch_file: bool) -> None:
    if as_torch_file:  # a real checkpoint layout with code hidden inside
        torch.save({"state_dict": {}, "ccpo": {"sidecar": _RunsCode(str(marker))}}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"state_dict": _RunsCode(str(marker))}, f)


@pytest.mark.parametrize("where", ["ckpt_path", "last.ckpt"])
def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_by_the_command_line(reference, tmp_path, where):
    marker = tmp_path / "pwned"
    if where == "ckpt_path":
        evil, args = tmp_path / "evil.ckpt", [f"ckpt_path={tmp_path / 'evil.ckpt'}"]
        _write_malicious(evil, marker, as_torch_file=False)
    else:
        shutil.copytree(reference[0], tmp_path / "logs" / "r")
        evil, args = tmp_path / "logs" / "r" / "checkpoints" / "last.ckpt", ["total_frames=1200"]
        _write_malicious(evil, marker, as_torch_file=True)
    run = forked_cli(tmp_path / "logs", *args)
    assert run.wait() == 2
    errors = [ln for ln in run.text().splitlines() if "error" in ln.lower()]
    assert errors == [f"ccpo_pl.fit: error: ckpt_path={str(evil)!r} is not a readable checkpoint (UnpicklingError); "
                      f"give a checkpoint written by ccpo_pl.fit (e.g. <run dir>/checkpoints/last.ckpt)"]
    assert not marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["training_state"].__setitem__("format_version", 99),
     "has checkpoint format 99; this ccpo_pl reads format 1"),
    (lambda c: c["hyper_parameters"]["run_config"]["env"].__setitem__("id", "SafetyCarRun-v0"),
     "is a env.id='SafetyCarRun-v0' checkpoint, this run has env.id='SafetyBallCircle-v0'"),
    (lambda c: c["hyper_parameters"]["run_config"]["algo"].__setitem__("name", "cvpo"),
     "is a algo.name='cvpo' checkpoint, this run has algo.name='ccpo'"),
])
def test_checkpoints_of_another_format_env_or_algorithm_are_refused_in_one_line(reference, tmp_path, change,
                                                                                 message, smoke_config):
    ckpt = last_ckpt(reference[0])
    assert ckpt["training_state"]["format_version"] == 1
    change(ckpt)
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError) as err:
        check_checkpoint(str(tmp_path / "other.ckpt"), smoke_config(tmp_path, *BASE))
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- 6. disk
def test_an_unwritable_log_dir_is_refused_before_training(tmp_path, smoke_config):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot write in .*a_file/r.*; choose a writable log_dir") as err:
        fit(smoke_config(tmp_path / "a_file", *BASE))
    assert "\n" not in str(err.value)


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch, smoke_config):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ConfigError, match="No space left on device"):
        fit(smoke_config(tmp_path, *BASE))
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_a_failed_save_stops_the_run_and_keeps_the_previous_checkpoint_and_sidecar(tmp_path, monkeypatch, smoke_config):
    original, calls = checkpointing.atomic_torch_save, []

    def disk_full_at_second_last_ckpt(obj, path):
        calls.append(Path(path).name)
        if calls.count("last.ckpt") == 2 and Path(path).name == "last.ckpt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(obj, path)

    monkeypatch.setattr(checkpointing, "atomic_torch_save", disk_full_at_second_last_ckpt)
    with pytest.raises(StorageError) as err:
        fit(smoke_config(tmp_path, *BASE, *SHORT, "checkpoint.keep_buffers=1"))
    assert "cannot write checkpoint" in str(err.value) and "No space left on device" in str(err.value)
    assert "the previous one is kept" in str(err.value) and "\n" not in str(err.value)
    state = last_ckpt(tmp_path / "r")["training_state"]
    assert state["stream"]["frames"] == 200
    assert (tmp_path / "r" / "checkpoints" / "sidecars" / "rank0" / f"{state['sidecar']}.pt").exists()


def test_a_run_resumed_from_another_runs_checkpoint_leaves_that_run_untouched(reference, tmp_path, smoke_config):
    parent = reference[0]
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in parent.rglob("*") if p.is_file()}
    fit(smoke_config(tmp_path, *BASE, "total_frames=1200", "run_name=child",
                     f"ckpt_path={parent}/checkpoints/last.ckpt"))
    assert last_ckpt(tmp_path / "child")["training_state"]["stream"]["frames"] == 1200
    assert before == {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in parent.rglob("*") if p.is_file()}


def test_a_run_being_trained_by_another_process_is_refused(reference, tmp_path, smoke_config):
    (tmp_path / "r").mkdir()
    shutil.copy(reference[0] / "config.yaml", tmp_path / "r" / "config.yaml")  # a run that has not saved yet
    fd = os.open(tmp_path / "r" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what another process training this run holds
        with pytest.raises(ConfigError, match="is being trained by another process"):
            fit(smoke_config(tmp_path, *BASE))
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the final evaluation
FINAL = ("eval.final_episodes=1",)  # a finished run's final evaluation: one episode per threshold


def finished_copy(reference, tmp_path) -> Path:
    """A copy of the finished reference run (trained without a final evaluation)."""
    shutil.copytree(reference[0], tmp_path / "logs" / "r")
    return tmp_path / "logs" / "r"


def test_a_finished_run_without_its_final_evaluation_gets_it_when_the_same_command_is_rerun(reference, tmp_path,
                                                                                           capsys, smoke_config):
    run_dir = finished_copy(reference, tmp_path)
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "per_eps.csv").write_text("policy,eps\n")  # what an interrupted evaluation could leave
    ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    metrics = fit(smoke_config(tmp_path / "logs", *BASE, *FINAL))
    assert "no complete final evaluation (eval/summary.json); running it" in capsys.readouterr().out
    assert (run_dir / "eval" / "summary.json").is_file() and "final/avg_reward" in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == ckpt
    again = fit(smoke_config(tmp_path / "logs", *BASE, *FINAL))  # evaluated: the same command does nothing more
    assert "already has 800 frames" in capsys.readouterr().out and "final/avg_reward" not in again


def _sigterm_in_the_final_evaluation() -> None:
    import ccpo_pl.evaluation as evaluation

    original = evaluation._evaluate

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        return original(*args, **kwargs)

    evaluation._evaluate = stopped


def test_sigterm_during_the_final_evaluation_exits_0_saying_how_to_finish_it(reference, tmp_path, smoke_config):
    run_dir = finished_copy(reference, tmp_path)
    before = files_of(run_dir)
    run = forked_cli(tmp_path / "logs", *FINAL, before=_sigterm_in_the_final_evaluation)
    assert run.wait() == 0, run.text()[-3000:]
    lines = [ln for ln in run.text().splitlines() if ln.startswith("ccpo_pl.fit: stopped by")]
    assert len(lines) == 1 and "SIGTERM during the final evaluation" in lines[0], run.text()[-2000:]
    assert "re-run the same command" in lines[0] and "Traceback" not in run.text()
    assert files_of(run_dir) == before and not (run_dir / "eval").exists()  # no lock or temporary files left
    fit(smoke_config(tmp_path / "logs", *BASE, *FINAL))
    assert (run_dir / "eval" / "summary.json").is_file()


def test_a_full_disk_during_the_final_evaluation_stops_in_one_line_and_the_rerun_finishes_it(reference, tmp_path,
                                                                                            monkeypatch, smoke_config):
    import ccpo_pl.outputs as outputs

    run_dir = finished_copy(reference, tmp_path)
    before = files_of(run_dir)
    monkeypatch.setattr(outputs.Claim, "_tmp", lambda self, folder: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StorageError, match="final evaluation was not written.*No space left on device.*re-run the "
                                           "same command") as err:
        fit(smoke_config(tmp_path / "logs", *BASE, *FINAL))
    assert "\n" not in str(err.value)
    assert files_of(run_dir) == before and not (run_dir / "eval").exists()
    monkeypatch.undo()
    fit(smoke_config(tmp_path / "logs", *BASE, *FINAL))
    assert (run_dir / "eval" / "summary.json").is_file()


@pytest.mark.parametrize(("values", "finite"), [
    ([1.0, -2.0], True),
    ([1.0, float("nan")], False),
    ([float("inf"), 1.0], False),
    ([float("inf"), float("-inf")], False),  # the sum is nan
    ([3e38, 3e38], True),  # finite values whose sum overflows: checked element by element
])
def test_the_fast_finiteness_check_agrees_with_the_elementwise_one(values, finite):
    tensors = {"a": torch.tensor(values[:1]), "b": torch.tensor(values[1:]).view(1, 1)}
    assert finite_now(tensors) is finite
    assert bool(all_finite(tensors)) is finite


# ---------------------------------------------------------------- 7. refused before anything is written
def files_of(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


LONG_NAME = "x" * 300
#: (overrides, what the one-line message must contain: the bad value, and what is allowed)
BAD_INPUTS = [
    (["trainer.num_nodes=0"], "trainer.num_nodes=0", "an integer >= 1"),
    (["eps.range=[10,inf]"], "eps.range=[10, inf]", "both finite"),
    (["eps.range=[70,10]"], "eps.range=[70, 10]", "0 < low < high"),
    (["eps.bin=0"], "eps.bin=0", "a finite number > 0"),
    (["trainer.devices=-1"], "trainer.devices=-1", "give a number of processes"),
    (["trainer.devices=[0,1]"], "trainer.devices=[0, 1]", "give a number of processes"),
    (["trainer.devices=4096"], "trainer.devices=4096", "use at most"),
    (["seed=-1"], "seed=-1", "an integer in [0, 4294967295]"),
    (["seed=abc"], "seed='abc'", "an integer in [0, 4294967295]"),
    (["threads=-1"], "threads=-1", "null or an integer >= 1"),
    (["+trainer.max_epochs=3"], "trainer.max_epochs=3", "left unset: ccpo_pl.fit sets it"),
    (["algo=c_ppo_lag", "eps.behavior=[60,20]"], "eps.behavior=[60, 20]", "strictly increasing"),
    (["algo=cpo", "eps.behavior=[20,40]"], "eps.behavior=[20.0, 40.0]", "must hold one value"),
    (["collect.updates_per_frame=nan"], "collect.updates_per_frame=nan", "a finite number >= 0"),
    (["collect.updates_per_frame=0.001"], "collect.updates_per_frame=0.001", "gives no update"),
    ([f"run_name={LONG_NAME}"], f"run_name='{LONG_NAME}'", "at most 255 bytes"),
    (["run_name=a/b"], "run_name='a/b'", "no path separators"),
    (["log_dir=null"], "log_dir=None", "a non-empty string"),
    (["+algo.kapa=0.1"], "unknown key algo.kapa", "did you mean algo.kappa?"),
    (["eps.behavior=[]"], "eps.behavior is empty", "finite thresholds > 0"),
    (["eps.eval=[0,20]"], "eps.eval has [0]", "finite thresholds > 0"),
    (["eps.behavior=[5,20]"], "eps.behavior has [5] outside eps.range", "widen eps.range"),
    (["total_frames=0"], "total_frames=0", "an integer >= 1"),
    (["total_frames=1.5"], "total_frames=1.5", "an integer >= 1"),
    (["collect.num_envs=0"], "collect.num_envs=0", "an integer >= 1"),
    (["checkpoint.keep_buffers=0"], "checkpoint.keep_buffers=0", "an integer >= 1"),
    (["eval.final_episodes=-1"], "eval.final_episodes=-1", "an integer >= 0"),
    (["faults.on_nan=ignore"], "faults.on_nan='ignore'", "one of stop, skip"),
    (["check_sync=maybe"], "check_sync='maybe'", "true or false"),
    (["algo.gamma=1.5"], "algo.gamma=1.5", "a number in (0, 1)"),
    (["algo.kappa=-0.1"], "algo.kappa=-0.1", "a finite number > 0"),
    (["algo.hidden=[64,0]"], "algo.hidden=[64, 0]", "positive integers"),
    (["algo.z.kind=cubic"], "algo.z.kind='cubic'", "one of poly, mlp"),
    (["algo.estep_precision=fp16"], "algo.estep_precision='fp16'", "one of auto, fp32, bf16"),
    (["algo.lagrange.method=adam"], "algo.lagrange.method='adam'", "one of gradient, pid"),
    (["algo.name=nope"], "unknown algo 'nope'", "ccpo, ccpo_wo_cvi"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu'", "one of cpu, gpu"),
    (["trainer.strategy=fsdp"], "trainer.strategy='fsdp'", "one of auto, ddp"),
    (["env.max_episode_steps=0"], "env.max_episode_steps=0", "an integer >= 1"),
]


@pytest.mark.parametrize(("overrides", "value", "allowed"), BAD_INPUTS,
                         ids=[" ".join(o)[:40] for o, _, _ in BAD_INPUTS])
def test_bad_inputs_are_refused_in_one_line_before_anything_is_written(reference, overrides, value, allowed,
                                                                       smoke_config):
    run_dir = reference[0]
    before = files_of(run_dir)
    with pytest.raises(ConfigError) as err:
        # run_name=r: the reference run, unless the overrides change it
        fit(smoke_config(run_dir.parent, *BASE, *overrides))
    message = str(err.value)
    assert value in message and allowed in message and "\n" not in message
    assert files_of(run_dir) == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["r"]  # no other run directory made


def test_a_refused_command_leaves_no_trace_and_the_corrected_one_runs(tmp_path, capsys, smoke_config):
    run = forked_cli(tmp_path / "logs", "run_name=new", "trainer.num_nodes=0")
    assert run.wait() == 2
    assert run.text().splitlines() == ["ccpo_pl.fit: error: trainer.num_nodes=0 is not allowed; "
                                       "trainer.num_nodes must be an integer >= 1"]
    assert not (tmp_path / "logs").exists()
    assert fit(smoke_config(tmp_path / "logs", *BASE, "run_name=new", *SHORT))["train/frames"] == 400


def test_a_run_that_fails_before_training_does_not_block_its_name(tmp_path, monkeypatch, smoke_config):
    def broken_trainer(*args, **kwargs):
        raise RuntimeError("no trainer")

    monkeypatch.setattr(fit_module, "make_trainer", broken_trainer)
    with pytest.raises(RuntimeError, match="no trainer"):
        fit(smoke_config(tmp_path, *BASE))
    assert not (tmp_path / "r").exists()
    # a directory left by a process killed before training started (lock, TensorBoard folder) is no run either
    (tmp_path / "r" / "tb").mkdir(parents=True)
    (tmp_path / "r" / ".lock").touch()
    fit_module.check_resumable(tmp_path / "r", {"seed": 1})


@pytest.mark.parametrize("form", ["algo.kapa=0.1", "+algo.kapa=0.1"])
def test_a_mistyped_key_is_refused_by_the_command_line_naming_the_nearest(tmp_path, form):
    run = forked_cli(tmp_path / "logs", form)
    assert run.wait() == 2
    assert run.text().splitlines() == ["ccpo_pl.fit: error: unknown key algo.kapa; did you mean algo.kappa?"]
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- 8. checkpoints checked before use
@pytest.mark.parametrize(("change", "overrides", "message"), [
    (None, ["algo.hidden=[32,32]"], "has actor.log_std.weight of shape [2, 64], this run's network needs [2, 32]"),
    (None, ["algo.critic_trunk=separate"], "another network variant"),
    (lambda c: c["training_state"].__setitem__("world_size", 2), [], "was written by 2 ranks, this run has 1"),
    (lambda c: c["state_dict"]["actor.mu.weight"].__setitem__((0, 0), float("nan")), [],
     "holds NaN or inf in actor.mu.weight"),
    (lambda c: c["optimizer_states"][0]["state"][0]["exp_avg"].fill_(float("inf")), [],
     "holds NaN or inf in optimizer 0 state 0 exp_avg"),
])
def test_a_checkpoint_that_does_not_fit_the_run_is_refused_before_anything_is_written(reference, tmp_path, change,
                                                                                       overrides, message,
                                                                                       smoke_config):
    ckpt = last_ckpt(reference[0])
    if change is not None:
        change(ckpt)
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError) as err:
        fit(smoke_config(tmp_path / "logs", *BASE, f"ckpt_path={tmp_path / 'other.ckpt'}", *overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- 9. the run's own files
def test_a_second_process_is_refused_before_it_writes_anything(reference, tmp_path, smoke_config):
    shutil.copytree(reference[0], tmp_path / "r")
    before = files_of(tmp_path / "r")
    fd = os.open(tmp_path / "r" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the live run
        with pytest.raises(ConfigError, match="is being trained by another process"):
            fit(smoke_config(tmp_path, *BASE, "total_frames=1200"))  # a setting a resume may change
    finally:
        os.close(fd)
    assert files_of(tmp_path / "r") == before  # config.yaml still says total_frames=800


@pytest.mark.parametrize(("content", "problem"), [
    ("", "is empty or incomplete"),
    ("seed: [unclosed\n", "is unreadable: "),
    ("algo: {name: ccpo}\n", "is empty or incomplete"),
])
def test_a_damaged_config_yaml_is_refused_naming_the_file_and_what_to_do(reference, tmp_path, content, problem,
                                                                         smoke_config):
    shutil.copytree(reference[0], tmp_path / "r")
    (tmp_path / "r" / "config.yaml").write_text(content)
    before = files_of(tmp_path / "r")
    with pytest.raises(ConfigError) as err:
        fit(smoke_config(tmp_path, *BASE, "total_frames=1200"))
    message = str(err.value)
    assert f"{str(tmp_path / 'r' / 'config.yaml')!r} {problem}" in message and "\n" not in message
    assert "restore the file from there or a backup" in message
    assert files_of(tmp_path / "r") == before


def test_config_yaml_is_written_atomically_when_training_starts(tmp_path, monkeypatch, smoke_config):
    written, original = [], checkpointing.atomic_write_text

    def recording(text, path):
        written.append((Path(path).name, (tmp_path / "r" / "checkpoints").exists()))
        original(text, path)

    monkeypatch.setattr(checkpointing, "atomic_write_text", recording)
    fit(smoke_config(tmp_path, *BASE, *SHORT))
    assert written == [("config.yaml", False)]  # once, through the fsync-and-rename path, before any checkpoint
    assert (tmp_path / "r" / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~checkpointing.umask()


# ---------------------------------------------------------------- 10. a full disk, a second Ctrl-C
def test_a_zip_writer_error_from_a_full_disk_is_a_storage_error(tmp_path, monkeypatch):
    def zip_writer(obj, f):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    (tmp_path / "x.pt").write_bytes(b"previous")
    monkeypatch.setattr(torch, "save", zip_writer)
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*\(No space left on device\); the previous"):
        checkpointing.save_or_stop({}, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a directory on a file system of that size (e.g. "2m"). Skips only where mounting is not
    permitted (no root, a container without the capability, no `mount`); any other failure fails the test."""
    mounts = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{size}"
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command here")
        if done.returncode != 0:
            why = done.stderr.strip()
            if os.geteuid() != 0 or any(s in why.lower() for s in ("permission denied", "not permitted",
                                                                    "must be superuser", "only root")):
                pytest.skip(f"mounting a tmpfs is not permitted here ({why or done.returncode})")
            pytest.fail(f"mount -t tmpfs failed: {why or done.returncode}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=False)


def test_a_disk_too_small_for_a_checkpoint_is_refused_before_training(tmpfs, smoke_config):
    small = tmpfs("1m")  # a checkpoint and its sidecar take ~1.2 MB in the smoke config
    with pytest.raises(ConfigError, match=r"cannot write 1\.\d MiB \(a checkpoint and its sidecar\) .*No space"):
        fit(smoke_config(small, *BASE))
    assert list(small.iterdir()) == []


def test_a_disk_that_fills_during_training_stops_it_in_one_line_keeping_the_last_pair(tmpfs):
    full = tmpfs("2m")  # room for the first checkpoint and sidecar, not for the second sidecar beside them
    run = forked_cli(full, "checkpoint.keep_buffers=1")
    assert run.wait() == 3
    assert run.text().splitlines()[-1].startswith("ccpo_pl.fit: error: cannot write replay-buffer sidecar")
    assert "Traceback" not in run.text() and "Exception" not in run.text()
    state = last_ckpt(full / "r")["training_state"]
    assert state["stream"]["frames"] == 400
    safe_load(full / "r" / "checkpoints" / "sidecars" / "rank0" / f"{state['sidecar']}.pt")
    assert not list((full / "r").rglob("*.tmp"))


def test_a_second_ctrl_c_stops_at_once_with_status_130_keeping_the_last_checkpoint(tmp_path):
    # collections of 4000 frames (2000 steps, seconds even on a quiet machine): the first SIGINT waits for the
    # collection's end to save, so the second one, 0.1 s later, always arrives while it waits
    run = forked_cli(tmp_path / "logs", "total_frames=40000", "collect.frames_per_collect=4000")
    run_dir = tmp_path / "logs" / "r"
    deadline = time.monotonic() + 120
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # into the next epoch's first collection
    run.send_signal(signal.SIGINT)
    time.sleep(0.1)  # two signals before Python's handler runs count as one
    run.send_signal(signal.SIGINT)
    assert run.wait() == 130
    lines = [ln for ln in run.text().splitlines() if ln.startswith("ccpo_pl.fit:")]
    assert len(lines) == 1 and lines[0].startswith("ccpo_pl.fit: stopped at once by a second SIGINT at frame ")
    assert "nothing saved; the last complete checkpoint" in lines[0] and "Traceback" not in run.text()
    assert last_ckpt(run_dir)["training_state"]["stream"]["frames"] % 400 == 0  # an epoch's checkpoint, not the stop's
