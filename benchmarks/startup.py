"""How long do the commands take to start? `import torch` against `fit --help`, a refused fit override,
`report --help` and `evaluate` with a mistyped key, each a fresh process of this environment's Python.

Target: each command within 2.5x the time of `python -c "import torch"` on the same machine. A shared machine's
speed drifts, so the commands run in alternating rounds (torch, then each command, per round) and the figures are
medians over rounds; the ratio of each command's median to torch's is what compares.

    uv run --locked python benchmarks/startup.py [--rounds N]     # default 5 rounds

Prints each round's times, then as its last line:
torch_s=<s> fit_help_s=<s> refused_s=<s> report_s=<s> evaluate_s=<s> ratio_max=<command median / torch median>
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from _common import commit, log

#: name -> (arguments of `python`, the exit status the command must end with)
COMMANDS = {
    "torch": (["-c", "import torch"], 0),
    "fit_help": (["-m", "ccpo_pl.fit", "--help"], 0),
    "refused": (["-m", "ccpo_pl.fit", "algo.lr_actor=-1"], 2),
    "report": (["-m", "ccpo_pl.report", "--help"], 0),
    "evaluate": (["-m", "ccpo_pl.evaluate", "episode=3"], 2),
}


def wall(args: list[str], expect: int, cwd: str) -> float:
    """Seconds from start to exit of `python <args>` (output discarded); a different exit status is an error."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != expect:
        raise SystemExit(f"startup.py: python {' '.join(args)} exited {proc.returncode}, not {expect}: "
                         f"{proc.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    log(f"startup.py: commit {commit()}, {rounds} rounds, {sys.executable}")
    with tempfile.TemporaryDirectory() as cwd:  # the commands write nothing; an empty directory shows it
        wall(["-c", "import torch"], 0, cwd)  # warm the file cache once, not timed
        for i in range(rounds):
            for name, (args, expect) in COMMANDS.items():
                times[name].append(wall(args, expect, cwd))
            print(f"round {i + 1}: " + " ".join(f"{name}_s={t[-1]:.2f}" for name, t in times.items()), flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = max(median[name] / median["torch"] for name in COMMANDS if name != "torch")
    print(" ".join(f"{name}_s={median[name]:.2f}" for name in COMMANDS) + f" ratio_max={ratio:.2f}")


if __name__ == "__main__":
    main()
