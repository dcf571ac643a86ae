"""Kill a small training run with SIGKILL at a random moment, re-run the same command, check it resumes and finishes.

Each trial starts `python -m ccpo_pl.fit experiment=smoke threads=1 log_dir=<fresh temp dir> run_name=fault` (plus
the command line's overrides) and, once its first checkpoint exists, SIGKILLs it: in even trials after a delay
drawn uniformly from the time an uninterrupted run (measured first) takes from its first to its last checkpoint,
so the kill lands in collection, updates, evaluation or a save in proportion to their time; in odd trials as soon
as a checkpoint's temporary file appears, i.e. in the middle of writing a checkpoint or sidecar. A kill that comes
after the run's last checkpoint is drawn again. Then the same command runs again, without a kill.

Per trial: resumed = the re-run printed `resuming run ...` (it loaded last.ckpt); finished = the final last.ckpt
has `total_frames` frames; corrupt = a checkpoint left by the killed process does not load (`weights_only=True`)
or its last.ckpt has no loadable sidecar, or the re-run failed. frames lost = the killed process's last
`train/frames` point in TensorBoard (logged and flushed after every collection, so it is the frame count at the
kill, short by at most the collection in progress) minus the frames of the checkpoint the re-run resumed from.
The bound to expect is one checkpoint interval (an epoch: 400 frames in the smoke config).

Then damage, one run each (`--no-damage` skips them): a full disk (the run on a tmpfs with room for one checkpoint
and its sidecar but not for the next pair; skipped, saying why, where `mount` is not permitted: it needs root):
it must stop with exit status 3 and one line, keep the last pair loadable, and after the disk is enlarged the same
command must resume and finish; a damaged sidecar (a valid torch file of another structure in place of last.ckpt's):
the re-run must warn and finish; an empty config.yaml (what a power loss can leave of a file written without
fsync): the re-run must be refused with exit status 2 and one line naming the file, and once the file is restored
from the checkpoint's run config the same command must resume and finish.

    uv run --locked python benchmarks/fault_injection.py [--trials 20] [--seed 0] [--no-damage] [hydra overrides]

Last line: trials=<n> resumed=<n> finished=<n> corrupt=<n> max_frames_lost=<x> disk_full=<ok>/<n> damaged=<ok>/<n>
(disk_full=skipped where no tmpfs can be mounted)
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import commit, log
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ccpo_pl.checkpointing import safe_load, training_state

RUN_NAME = "fault"
DEFAULTS = ("experiment=smoke", "threads=1", "total_frames=1600")
POLL_S = 0.002


def fit_args(log_dir: Path, overrides: list[str]) -> list[str]:
    """The `ccpo_pl.fit` overrides of every process of a trial (the command line's win over `DEFAULTS`)."""
    given = {o.split("=")[0] for o in overrides}
    return [*(d for d in DEFAULTS if d.split("=")[0] not in given), f"log_dir={log_dir}", f"run_name={RUN_NAME}",
            *overrides]


def launch_cli(args: list[str], output: Path) -> subprocess.Popen:
    """Start `python -m ccpo_pl.fit <args>` with stdout and stderr into `output`."""
    with open(output, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "ccpo_pl.fit", *args], stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], proc, timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `proc` exits or `timeout` passes (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if condition():
            return True
        time.sleep(POLL_S)
    return condition()


def ckpt_dir(log_dir: Path) -> Path:
    return log_dir / RUN_NAME / "checkpoints"


def temp_files(log_dir: Path) -> list[Path]:
    """Temporary files of atomic writes in progress (or left by a kill) in the checkpoint folder."""
    return list(ckpt_dir(log_dir).rglob(".*.tmp"))


def logged_frames(log_dir: Path) -> int:
    """The largest `train/frames` value in the run's TensorBoard events, 0 if none."""
    acc = EventAccumulator(str(log_dir / RUN_NAME / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/frames" not in acc.Tags()["scalars"]:
        return 0
    return int(max(e.value for e in acc.Scalars("train/frames")))


def check_checkpoints(log_dir: Path) -> tuple[list[str], int]:
    """(problems, frames of last.ckpt or 0): every checkpoint loads safely, last.ckpt's sidecar exists and loads."""
    problems, frames = [], 0
    for path in sorted(ckpt_dir(log_dir).glob("*.ckpt")):
        try:
            state = training_state(safe_load(path))
        except Exception as err:  # noqa: BLE001 - any failure to load is what this benchmark counts
            problems.append(f"{path.name}: {type(err).__name__}")
            continue
        if state is None:
            problems.append(f"{path.name}: no training state")
            continue
        if path.name == "last.ckpt":
            frames = int(state["stream"]["frames"]) * int(state["world_size"])
            sidecar = ckpt_dir(log_dir) / "sidecars" / "rank0" / f"{state['sidecar']}.pt"
            try:
                safe_load(sidecar)
            except Exception as err:  # noqa: BLE001
                problems.append(f"sidecar {sidecar.name} of last.ckpt: {type(err).__name__}")
    return problems, frames


def calibrate(launch, work: Path, overrides: list[str], timeout: float) -> tuple[float, int]:
    """One uninterrupted run: (seconds from its first to its last checkpoint, its final frames)."""
    log_dir = work / "calibration"
    last = ckpt_dir(log_dir) / "last.ckpt"
    proc = launch(fit_args(log_dir, overrides), work / "calibration.out")
    if not wait_for(last.is_file, proc, timeout):
        raise RuntimeError(f"the uninterrupted run wrote no checkpoint; see {work / 'calibration.out'}")
    first = written = time.monotonic()
    mtime = last.stat().st_mtime_ns
    while proc.poll() is None:  # the time of the last change of last.ckpt
        time.sleep(POLL_S)
        if last.stat().st_mtime_ns != mtime:
            mtime, written = last.stat().st_mtime_ns, time.monotonic()
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {work / 'calibration.out'}")
    return written - first, check_checkpoints(log_dir)[1]


def trial(launch, work: Path, overrides: list[str], delay: float | None, total: int, timeout: float) -> dict:
    """Start, SIGKILL (after `delay` s past the first checkpoint, or mid-save if None), re-run, check.
    Returns {"killed": False} when the kill came after the run's final checkpoint (nothing left to resume)."""
    log_dir = work / "logs"
    first = launch(fit_args(log_dir, overrides), work / "killed.out")
    if not wait_for(lambda: (ckpt_dir(log_dir) / "last.ckpt").is_file(), first, timeout):
        raise RuntimeError(f"the run wrote no checkpoint; see {work / 'killed.out'}")
    if delay is None:  # right after the next temporary checkpoint file appears
        wait_for(lambda: bool(temp_files(log_dir)), first, timeout)
    else:
        wait_for(lambda: False, first, delay)
    if first.poll() is not None:
        return {"killed": False}
    first.kill()
    first.wait()
    mid_write = bool(temp_files(log_dir))
    killed_at = logged_frames(log_dir)
    problems, ckpt_frames = check_checkpoints(log_dir)
    if ckpt_frames >= total and not problems:
        return {"killed": False}
    rerun = launch(fit_args(log_dir, overrides), work / "rerun.out")
    code = rerun.wait(timeout=timeout)
    output = (work / "rerun.out").read_text(errors="replace")
    if code != 0:
        problems.append(f"re-run exited with {code}")
    final_frames = check_checkpoints(log_dir)[1]
    return {"killed": True, "mid_write": mid_write, "resumed": "ccpo_pl.fit: resuming run" in output,
            "finished": code == 0 and final_frames > 0, "final_frames": final_frames, "problems": problems,
            "killed_at": killed_at, "resumed_from": ckpt_frames, "lost": max(0, killed_at - ckpt_frames)}


def run_trials(trials: int, seed: int, overrides: list[str], launch=launch_cli, timeout: float = 600.0) -> dict:
    """The whole benchmark; returns the summary counts (the keys of the last line)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ccpo-fault-") as tmp:
        work = Path(tmp)
        window, total = calibrate(launch, work, overrides, timeout)
        log(f"benchmark: fault injection, {trials} trials, kill window {window:.1f} s after the first checkpoint, "
            f"total {total} frames")
        summary = {"trials": 0, "resumed": 0, "finished": 0, "corrupt": 0, "max_frames_lost": 0, "mid_write": 0}
        for i in range(trials):
            for attempt in range(5):  # a draw past the end of the run kills nothing: draw again
                trial_dir = work / f"trial{i}-{attempt}"
                trial_dir.mkdir()
                mode = None if i % 2 else rng.uniform(0.0, window)
                result = trial(launch, trial_dir, overrides, mode, total, timeout)
                if result["killed"]:
                    break
            else:
                raise RuntimeError(f"trial {i}: the run always reached its last checkpoint before the kill")
            finished = result["finished"] and result["final_frames"] >= total
            summary["trials"] += 1
            summary["resumed"] += result["resumed"]
            summary["finished"] += finished
            summary["corrupt"] += bool(result["problems"])
            summary["mid_write"] += result["mid_write"]
            summary["max_frames_lost"] = max(summary["max_frames_lost"], result["lost"])
            kill = "mid-save" if mode is None else f"{mode:.2f} s"
            log(f"trial {i}: kill {kill} (temporary file left: {result['mid_write']}), frames at kill "
                f"{result['killed_at']}, resumed from {result['resumed_from']} ({result['resumed']}), final frames "
                f"{result['final_frames']}, problems {result['problems'] or 'none'}")
    return summary


def _error_lines(output: Path) -> list[str]:
    return [ln for ln in output.read_text(errors="replace").splitlines() if ln.startswith("ccpo_pl.fit: error:")]


def _finishes(launch, log_dir: Path, overrides: list[str], output: Path, total: int, timeout: float) -> bool:
    """The same command again: exit 0 and a final last.ckpt of `total` frames with a loadable sidecar."""
    code = launch(fit_args(log_dir, overrides), output).wait(timeout=timeout)
    problems, frames = check_checkpoints(log_dir)
    return code == 0 and not problems and frames >= total


def _first_checkpoint_then_kill(launch, log_dir: Path, overrides: list[str], output: Path, timeout: float) -> None:
    proc = launch(fit_args(log_dir, overrides), output)
    wait_for(lambda: (ckpt_dir(log_dir) / "last.ckpt").is_file() and not temp_files(log_dir), proc, timeout)
    proc.kill()
    proc.wait()


def disk_full_trial(launch, work: Path, overrides: list[str], total: int, timeout: float) -> bool | None:
    """A run on a tmpfs with room for ~1.75 checkpoint pairs; None if no tmpfs can be mounted here."""
    pair = sum(p.stat().st_size for p in ckpt_dir(work / "calibration").rglob("*") if p.is_file()
               and (p.name == "last.ckpt" or p.suffix == ".pt")) // 2
    mount = work / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(1.75 * pair)}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        log(f"disk-full trial skipped: cannot mount a tmpfs ({done.stderr.strip() or done.returncode}; needs root)")
        return None
    try:
        code = launch(fit_args(mount, overrides), work / "full.out").wait(timeout=timeout)
        errors = _error_lines(work / "full.out")
        problems, frames = check_checkpoints(mount)
        stopped = (code == 3 and len(errors) == 1 and "cannot write" in errors[0] and not problems and frames > 0
                   and "Traceback" not in (work / "full.out").read_text(errors="replace"))
        subprocess.run(["mount", "-o", f"remount,size={8 * pair}", str(mount)], check=True)
        resumed = _finishes(launch, mount, overrides, work / "full-rerun.out", total, timeout)
        log(f"disk full: exit {code}, {errors or 'no error line'}, checkpoint at {frames} frames, problems "
            f"{problems or 'none'}; resumed and finished after the disk was enlarged: {resumed}")
        return stopped and resumed
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def damaged_sidecar_trial(launch, work: Path, overrides: list[str], total: int, timeout: float) -> bool:
    log_dir = work / "logs"
    _first_checkpoint_then_kill(launch, log_dir, overrides, work / "killed.out", timeout)
    state = training_state(safe_load(ckpt_dir(log_dir) / "last.ckpt"))
    sidecar = ckpt_dir(log_dir) / "sidecars" / "rank0" / f"{state['sidecar']}.pt"
    torch.save({"rng": safe_load(sidecar)["rng"]}, sidecar)  # loads, but holds no buffer
    finished = _finishes(launch, log_dir, overrides, work / "rerun.out", total, timeout)
    warned = "replay-buffer sidecar of another structure" in (work / "rerun.out").read_text(errors="replace")
    log(f"damaged sidecar: warned {warned}, finished {finished}")
    return finished and warned


def damaged_config_trial(launch, work: Path, overrides: list[str], total: int, timeout: float) -> bool:
    log_dir = work / "logs"
    _first_checkpoint_then_kill(launch, log_dir, overrides, work / "killed.out", timeout)
    config = log_dir / RUN_NAME / "config.yaml"
    config.write_text("")
    code = launch(fit_args(log_dir, overrides), work / "refused.out").wait(timeout=timeout)
    errors = _error_lines(work / "refused.out")
    refused = code == 2 and len(errors) == 1 and str(config) in errors[0] and config.read_text() == ""
    run_config = safe_load(ckpt_dir(log_dir) / "last.ckpt")["hyper_parameters"]["run_config"]
    OmegaConf.save(OmegaConf.create(run_config), config)  # what the message says to do
    finished = _finishes(launch, log_dir, overrides, work / "rerun.out", total, timeout)
    log(f"empty config.yaml: exit {code}, {errors or 'no error line'}; restored from the checkpoint, finished "
        f"{finished}")
    return refused and finished


def run_damage_trials(overrides: list[str], launch=launch_cli, timeout: float = 600.0) -> dict:
    """A full disk, a damaged sidecar, an empty config.yaml: {"disk_full": (ok, n) or None, "damaged": (ok, n)}."""
    with tempfile.TemporaryDirectory(prefix="ccpo-damage-") as tmp:
        work = Path(tmp)
        total = calibrate(launch, work, overrides, timeout)[1]
        disk = disk_full_trial(launch, work, overrides, total, timeout)
        damaged = []
        for name, trial_fn in (("sidecar", damaged_sidecar_trial), ("config", damaged_config_trial)):
            (work / name).mkdir()
            damaged.append(trial_fn(launch, work / name, overrides, total, timeout))
        shutil.rmtree(work / "calibration", ignore_errors=True)
    return {"disk_full": None if disk is None else (int(disk), 1), "damaged": (sum(damaged), len(damaged))}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to each process")
    parser.add_argument("--no-damage", action="store_true", help="only the kills: no full disk, damaged files")
    args, overrides = parser.parse_known_args(argv)
    s = run_trials(args.trials, args.seed, overrides, timeout=args.timeout)
    line = (f"trials={s['trials']} resumed={s['resumed']} finished={s['finished']} corrupt={s['corrupt']} "
            f"max_frames_lost={s['max_frames_lost']}")
    if not args.no_damage:
        d = run_damage_trials(overrides, timeout=args.timeout)
        disk = "skipped" if d["disk_full"] is None else "{}/{}".format(*d["disk_full"])
        line += f" disk_full={disk} damaged={d['damaged'][0]}/{d['damaged'][1]}"
    print(f"bench=fault_injection mid_write_kills={s['mid_write']} seed={args.seed} commit={commit()}")
    print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
