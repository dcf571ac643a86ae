"""`python -m ccpo_pl.report <sweep dir> ... [--out FILE.md] [--notes FILE] [--section]`: the CCPO paper's Table 1.

Collects every evaluated run under the given directories (each `<run>/eval/summary.json`: the final evaluation
written at the end of `ccpo_pl.fit`, or by `python -m ccpo_pl.evaluate out=<run>/eval`; a run without one, e.g.
trained with `eval.final_episodes=0` as `experiment=smoke` is, by its newest `python -m ccpo_pl.evaluate` output
`<run>/eval-<date-time>/`, saying so) and aggregates them per task and per run label
(`label`, by default the algorithm's name): Avg. R, Avg. CV, Avg. R-G and Avg. CV-G as mean ± std over seeds, one
column per label, the lowest CV of each row in bold. CV both of the mean episode cost and per episode (`ccpo_pl.
metrics`), for the deterministic policy (the paper's protocol) and, where it was evaluated, the stochastic one.
Thresholds outside a run's trained range (`eps.range`: extrapolation) are left out of its averages, recomputed
from its `per_eps.csv`, unless `--extrapolated` is given.
With `--paper`, the paper's CCPO column and its safest baseline per task (lowest Avg. CV) stand beside them.
One seed shows its value alone (no "± 0.00"). Writes a Markdown report (the table, then one line per run with its
frames, wall time and command) and a CSV beside it, never into a run directory; prints the table and where it
wrote. A run without an evaluation, or evaluated before its last checkpoint, gets a warning. With `--section`, the
report is one section of `--out` instead: written between markers named by its title, replacing that section if it
is there and leaving the rest of the file as it is (one results file built from several generated tables); its CSV is
`<out stem>-<title slug>.csv`. Without it, the main part (everything before the first section) is replaced and
the sections are kept.

Over 300 lines: the paper's Table 1 figures (the comparison columns) and the Markdown layout of the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ccpo_pl import outputs
from ccpo_pl.errors import ConfigError, OneLineParser, check_writable
from ccpo_pl.metrics import mean_std, outside_range, summarize
from ccpo_pl.outputs import is_run_dir

#: the CCPO paper's task order (Table 1); other tasks follow alphabetically
PAPER_TASKS = ("ball_circle", "car_circle", "drone_circle", "drone_run", "ant_run")
#: (summary key, row name, lower is better, the paper's statistic on that row); "stochastic:<key>" reads
#: `by_policy.stochastic.<key>` of the summary
_AVERAGES = (("avg_reward", "Avg. R ↑", False, "R"), ("avg_cv", "Avg. CV ↓", True, "CV"),
             ("avg_cv_per_episode", "Avg. CV per episode ↓", True, "CV"),
             ("avg_reward_unseen", "Avg. R-G ↑", False, "R-G"), ("avg_cv_unseen", "Avg. CV-G ↓", True, "CV-G"),
             ("avg_cv_per_episode_unseen", "Avg. CV-G per episode ↓", True, "CV-G"))
STATS = _AVERAGES + tuple((f"stochastic:{k}", f"{name} (stochastic)", low, None) for k, name, low, _ in _AVERAGES)

#: CCPO paper Table 1 (mean, std over 5 seeds; deterministic evaluation): task -> algo -> stat -> (mean, std)
_PAPER_ROWS = {
    "ball_circle": ((710.86, 20.47, 0.59, 0.31, 699.04, 20.48, 0.83, 0.42),
                    (774.16, 20.34, 5.32, 5.00, 766.52, 22.59, 6.29, 5.72),
                    (762.61, 58.65, 2.81, 1.12, 756.67, 58.48, 3.53, 1.26),
                    (637.85, 14.03, 3.11, 1.64, 667.89, 12.17, 3.40, 1.75),
                    (699.38, 1.94, 4.50, 0.08, 699.14, 2.05, 5.59, 0.25)),
    "car_circle": ((406.06, 6.30, 1.60, 0.91, 401.53, 5.59, 1.49, 0.38),
                   (331.80, 11.57, 12.18, 4.65, 331.19, 11.00, 12.74, 4.32),
                   (448.82, 18.65, 14.48, 8.14, 445.32, 17.42, 14.63, 8.69),
                   (440.01, 2.59, 9.09, 1.52, 438.31, 3.03, 11.07, 1.58),
                   (461.14, 1.39, 7.84, 1.71, 460.72, 1.15, 9.14, 2.01)),
    "drone_circle": ((630.55, 40.03, 0.32, 0.38, 625.51, 40.12, 0.47, 0.55),
                     (693.69, 22.37, 13.24, 8.80, 699.14, 24.88, 14.97, 10.10),
                     (734.58, 49.69, 19.62, 11.15, 730.29, 48.43, 19.44, 10.36),
                     (392.64, 23.13, 0.45, 0.38, 342.77, 19.06, 0.21, 0.09),
                     (380.77, 18.62, 6.55, 1.95, 291.87, 19.88, 7.23, 2.03)),
    "drone_run": ((458.69, 12.98, 0.23, 0.25, 455.64, 11.83, 0.33, 0.37),
                  (355.61, 35.44, 8.66, 4.30, 354.61, 33.34, 9.96, 4.54),
                  (244.60, 48.29, 11.33, 9.63, 236.61, 43.49, 12.72, 9.91),
                  (398.88, 21.53, 9.46, 5.63, 386.77, 30.09, 11.18, 7.46),
                  (461.70, 4.91, 47.97, 3.49, 464.07, 6.61, 60.39, 4.32)),
    "ant_run": ((660.88, 4.82, 3.13, 1.67, 660.07, 5.26, 3.25, 1.48),
                (615.73, 91.99, 8.47, 3.55, 626.27, 84.61, 7.76, 11.83),
                (594.75, 172.35, 23.69, 30.42, 592.50, 173.01, 22.90, 9.39),
                (636.06, 6.78, 5.16, 1.59, 620.46, 9.99, 6.73, 2.32),
                (629.83, 7.84, 0.22, 0.17, 605.07, 10.63, 0.03, 0.06)),
}
_PAPER_ALGOS = ("CCPO", "V-SAC-Lag", "V-DDPG-Lag", "C-PPO-Lag", "C-TRPO-Lag")
PAPER_TABLE1 = {task: {algo: {stat: (row[2 * i], row[2 * i + 1]) for i, stat in enumerate(("R", "CV", "R-G", "CV-G"))}
                       for algo, row in zip(_PAPER_ALGOS, rows)} for task, rows in _PAPER_ROWS.items()}


def paper_columns(task: str) -> list[tuple[str, dict]]:
    """The paper's CCPO and its safest baseline on `task` (lowest Avg. CV) as (column name, stat -> (mean, std));
    empty for a task the paper does not report."""
    if task not in PAPER_TABLE1:
        return []
    row = PAPER_TABLE1[task]
    safest = min(_PAPER_ALGOS[1:], key=lambda a: row[a]["CV"][0])
    return [("paper CCPO", row["CCPO"]), (f"paper safest baseline ({safest})", row[safest])]


def metric_value(summary: dict, key: str):
    """A summary's value of a `STATS` key (None where the run has none)."""
    if ":" in key:
        policy, key = key.split(":", 1)
        return ((summary.get("by_policy") or {}).get(policy) or {}).get(key)
    return summary.get(key)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summary_problem(summary) -> str | None:
    """Why `summary` (a parsed `eval/summary.json`) cannot be reported, or None: it must be an object with the
    task, the algorithm or label, the seed, the episodes and thresholds, and finite numbers (or null) for the
    averages the report reads; the field is named."""
    if not isinstance(summary, dict):
        return f"not a JSON object but {type(summary).__name__}"
    missing = [k for k in ("task", "seed", "episodes", "eps") if k not in summary]
    if not (summary.get("label") or summary.get("algo")):
        missing.append("label or algo")
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(summary["task"], str) or not isinstance(summary.get("label") or summary.get("algo"), str):
        return "task, label and algo must be strings"
    if not isinstance(summary["eps"], list) or not isinstance(summary.get("by_policy", {}), dict):
        return "eps must be a list and by_policy an object"
    if not summary["eps"] or not all(_finite(e) and e > 0 for e in summary["eps"]):
        return f"eps is {summary['eps']!r}, not a non-empty list of finite thresholds > 0"
    if not all(isinstance(v, dict) for v in summary.get("by_policy", {}).values()):
        return "by_policy must map each policy to an object of averages"
    for key in ("seed", "episodes"):
        if not isinstance(summary[key], int) or isinstance(summary[key], bool) or summary[key] < 0:
            return f"{key} is {summary[key]!r}, not an integer >= 0"
    for key in ("policy", "env_id", "checkpoint"):
        if summary.get(key) is not None and not isinstance(summary[key], str):
            return f"{key} is {summary[key]!r}, not a string"
    eps_range = summary.get("eps_range")
    if eps_range is not None and not (isinstance(eps_range, list) and len(eps_range) == 2
                                      and all(_finite(x) for x in eps_range) and eps_range[0] < eps_range[1]):
        return f"eps_range is {eps_range!r}, not [low, high] with low < high, both finite"
    for key in ("frames", "train_wall_s"):
        if summary.get(key) is not None and not (_finite(summary[key]) and summary[key] >= 0):
            return f"{key} is {summary[key]!r}, not a finite number >= 0"
    for key, *_ in STATS:
        value = metric_value(summary, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key} is {value!r}, not a number"
        if value is not None and not math.isfinite(value):
            return f"{key} is {value!r}, not a finite number (or null)"
    return None


def _warn(message: str) -> None:
    print(f"ccpo_pl.report: warning: {message}", file=sys.stderr)


def without_extrapolation(summary: dict, per_eps: Path) -> dict | str:
    """`summary` with its averages over the thresholds inside its trained range (`eps_range`) only, recomputed from
    `per_eps` (the `per_eps.csv` beside it), and the thresholds left out under `extrapolated_eps`; the summary
    itself when no threshold is outside; a string saying why it cannot be done."""
    eps_range = summary.get("eps_range")
    if not eps_range or not any(outside_range(summary["eps"], eps_range)):
        return summary
    def cell(row: dict, column: str) -> float:
        value = row.get(column)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{column}={value!r} is not a finite number")
        return number

    try:
        with per_eps.open(newline="") as f:
            rows = list(csv.DictReader(f))
        rows = [r for r in rows if not outside_range([cell(r, "eps")], eps_range)[0]]
        by_policy = {}
        for policy in dict.fromkeys(r["policy"] for r in rows):
            mine = [r for r in rows if r["policy"] == policy]
            by_policy[policy] = summarize([cell(r, "reward_mean") for r in mine], [cell(r, "cv") for r in mine],
                                          [r["seen"] == "1" for r in mine], [cell(r, "cv_per_episode") for r in mine])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return f"{str(per_eps)!r} is needed to leave out the extrapolated thresholds ({type(err).__name__})"
    except (KeyError, ValueError) as err:
        what = f"no column {err}" if isinstance(err, KeyError) else str(err)
        return f"{str(per_eps)!r} is needed to leave out the extrapolated thresholds: {what}"
    headline = summary.get("policy", "deterministic")
    if headline not in by_policy:
        return f"{str(per_eps)!r} has no {headline} thresholds inside eps_range {eps_range}"
    inside = [e for e, out in zip(summary["eps"], outside_range(summary["eps"], eps_range)) if not out]
    return summary | by_policy[headline] | {
        "by_policy": by_policy, "eps": inside,
        "extrapolated_eps": [e for e in summary["eps"] if e not in inside]}


def find_runs(dirs: Sequence[str | Path], extrapolated: bool = False) -> list[tuple[Path, dict]]:
    """(run directory, summary) of every `eval/summary.json` under `dirs`, sorted by path; without `extrapolated`,
    each summary's averages over the thresholds inside its trained range (`without_extrapolation`)."""
    runs, skipped = {}, []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ConfigError(f"{str(d)!r} is not a directory; pass a sweep or run directory")
        latest = []  # runs without a final evaluation: their newest `evaluate` output
        for run in sorted(p.parent.parent for p in root.rglob("checkpoints/last.ckpt")):
            summary = run / "eval" / "summary.json"
            if not summary.is_file():
                summary = newest_evaluation(run)
                if summary is None:
                    _warn(f"skipping {str(run)!r}: not evaluated (no eval/summary.json) and no evaluate output "
                          f"(eval-<date-time>/); python -m ccpo_pl.evaluate run={run} evaluates it")
                    continue
                latest.append(summary)
                print(f"ccpo_pl.report: {str(run)!r} has no final evaluation (eval/): using its newest evaluation "
                      f"{summary.parent.name}/", file=sys.stderr)
            if summary.stat().st_mtime < (run / "checkpoints" / "last.ckpt").stat().st_mtime:
                _warn(f"{str(run)!r}: its evaluation is older than checkpoints/last.ckpt (the run trained on "
                      f"after it); python -m ccpo_pl.evaluate run={run} out={run / 'eval'} overwrite=true "
                      f"re-evaluates it")
        for path in sorted(root.rglob("eval/summary.json")) + latest:
            try:
                summary = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                summary, problem = None, f"unreadable ({type(err).__name__})"
            else:
                problem = summary_problem(summary)
            if problem is None and not extrapolated:
                summary = without_extrapolation(summary, path.with_name("per_eps.csv"))
                problem = summary if isinstance(summary, str) else None
            if problem is not None:
                skipped.append(f"{str(path)!r}: {problem}")
                continue
            runs[path.parent.parent.resolve()] = (path.parent.parent, summary)
    if not runs and skipped:  # one line: the first damaged file is what to fix
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ConfigError(f"no report: every summary is damaged, e.g. {skipped[0]}{more}; re-evaluate with "
                          f"python -m ccpo_pl.evaluate run=<run dir> out=<run dir>/eval overwrite=true")
    for line in skipped:
        _warn(f"skipping {line}")
    if not runs:
        raise ConfigError(f"no evaluated runs (eval/summary.json or eval-<date-time>/summary.json) under "
                          f"{', '.join(map(str, dirs))}; run python -m ccpo_pl.evaluate run=<run dir> first")
    return [runs[k] for k in sorted(runs)]


def newest_evaluation(run: Path) -> Path | None:
    """The `summary.json` of the newest complete `python -m ccpo_pl.evaluate` output of `run`
    (`eval-<UTC date-time>[-n]/`, whose names sort by time), or None."""
    stamps = {}
    for path in run.glob("eval-*/summary.json"):
        match = re.fullmatch(r"eval-(\d{8})-(\d{6})(?:-(\d+))?", path.parent.name)
        if match:
            stamps[path] = (match[1], match[2], int(match[3] or 1))
    return max(stamps, key=stamps.get) if stamps else None


def aggregate(summaries: Sequence[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(task, label) -> metric -> (mean, std, number of runs with a value) over the runs (seeds)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in summaries:
        groups[(s["task"], s.get("label") or s["algo"])].append(s)
    out = {}
    for key, runs in groups.items():
        out[key] = {}
        for metric in [m for m, *_ in STATS] + ["frames", "train_wall_s"]:
            values = [metric_value(r, metric) for r in runs]
            values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
            out[key][metric] = (*mean_std(values), len(values))
        out[key]["runs"] = (float(len(runs)), 0.0, len(runs))
    return out


def _order(tasks) -> list[str]:
    return [t for t in PAPER_TASKS if t in tasks] + sorted(t for t in tasks if t not in PAPER_TASKS)


def _labels(keys) -> list[str]:
    labels = sorted({label for _, label in keys})
    return sorted(labels, key=lambda x: (not x.startswith("ccpo"), x))


def tb_span_s(run_dir: Path) -> float | None:
    """Wall-clock seconds the run's TensorBoard event files span, summed over its processes (one file each):
    the training time of runs whose checkpoints predate `train_wall_s` (includes evaluations)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, files = 0.0, sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    for f in files:
        times = [e.wall_time for e in EventFileLoader(str(f)).Load()]
        total += max(times) - min(times) if times else 0.0
    return total if files else None


def _cell(stat: tuple[float, float, int]) -> str:
    mean, std, n = stat
    return "n/a" if n == 0 else f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"  # one seed has no spread


def markdown(table: dict, runs: list[tuple[Path, dict]], root: Path | None, title: str, command: str,
             paper: bool = False) -> str:
    """The Table 1 Markdown (lowest CV of each row in bold; rows no run has are left out) and the list of runs
    behind it; with `paper`, the paper's CCPO and safest-baseline columns of each task."""
    tasks, labels = _order({t for t, _ in table}), _labels(table)
    paper_head = " | paper CCPO | paper safest baseline" if paper else ""
    lines = [f"# {title}", "", f"Generated by `{command}`. Mean ± std over seeds (std with ddof=0); "
             "CV(eps) = max(0, J_c(eps) − eps) of the mean episode cost, CV per episode = the mean over episodes of "
             "max(0, cost − eps); R-G and CV-G average the thresholds outside the behaviour set; the deterministic "
             "(mean-action) policy unless marked stochastic. Lowest CV of each row in bold."
             + (" Thresholds outside a run's trained eps range (extrapolation) are left out of its averages (see "
                "Runs)." if any(s.get("extrapolated_eps") for _, s in runs) else "")
             + (" The paper's columns: its Table 1 (5 seeds, deterministic evaluation; the paper does not say which "
                "CV definition it uses, so its CV stands on both rows); its safest baseline is the one with the "
                "lowest Avg. CV on that task; its figures count for the bold." if paper else ""), "",
             "| Task | Stats | " + " | ".join(labels) + paper_head + " |",
             "|---|---|" + "---:|" * (len(labels) + (2 if paper else 0))]
    for task in tasks:
        columns = paper_columns(task) if paper else []
        for metric, name, lower_better, paper_stat in STATS:
            stats = [table.get((task, label), {}).get(metric, (math.nan, math.nan, 0)) for label in labels]
            present = [i for i, s in enumerate(stats) if s[2] > 0]
            if not present:
                continue
            cells = [_cell(s) for s in stats]
            paper_cols = ([c for _, c in columns] or [None, None]) if paper else []
            paper_means = [col[paper_stat][0] if paper_stat and col else math.nan for col in paper_cols]
            best = min([stats[i][0] for i in present] + [m for m in paper_means if not math.isnan(m)])
            if lower_better:  # the lowest of ours and the paper's
                cells = [f"**{c}**" if i in present and stats[i][0] == best else c for i, c in enumerate(cells)]
            for col, mean in zip(paper_cols, paper_means):
                cell = f"{mean:.2f} ± {col[paper_stat][1]:.2f}" if not math.isnan(mean) else ""
                cells.append(f"**{cell}**" if lower_better and mean == best else cell)
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
        seeds = [str(table.get((task, label), {}).get("runs", (0, 0, 0))[2]) for label in labels]
        if paper:  # the paper's seeds, and which baseline is its safest on this task
            seeds += ([f"5 ({name.split('(')[1].rstrip(')')})" if "(" in name else "5" for name, _ in columns]
                      or ["", ""])
        lines.append(f"| {task} | seeds | " + " | ".join(seeds) + " |")
    lines += ["", "## Runs", "", "Train wall: the training loop's wall clock over all of a run's processes; "
              "~: not recorded, the span of its TensorBoard events instead.", "",
              "| run | task | label | seed | frames | train wall (h) | eval | command |",
              "|---|---|---|---:|---:|---:|---|---|"]
    for run_dir, s in runs:
        name = run_dir.relative_to(root).as_posix() if root is not None and run_dir.is_relative_to(root) \
            else run_dir.name
        name = run_dir.resolve().name if name == "." else name  # the run directory itself was given
        wall, approx = s.get("train_wall_s"), ""
        if wall is None:
            wall, approx = tb_span_s(run_dir), "~"
        wall = "n/a" if wall is None else f"{approx}{wall / 3600:.2f}"
        commands = run_dir / "commands.txt"
        cmd = commands.read_text().strip().splitlines()[-1].split(" ", 1)[-1] if commands.is_file() else "n/a"
        policies = " and ".join(s.get("by_policy") or [s.get("policy", "deterministic")])
        evaluation = f"{s['episodes']} × {len(s['eps'])} thresholds, {policies}"
        if s.get("extrapolated_eps"):
            evaluation += f" (left out, outside the trained range: eps = {', '.join(map(str, s['extrapolated_eps']))})"
        lines.append(f"| {name} | {s['task']} | {s.get('label') or s['algo']} | {s['seed']} | {s.get('frames', 0)} "
                     f"| {wall} | {evaluation} | `{cmd}` |")
    return "\n".join(lines) + "\n"


def csv_text(table: dict) -> str:
    """One row per (task, label): mean, std and count of every metric."""
    metrics = [m for m, *_ in STATS] + ["frames", "train_wall_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "label", "runs"] + [f"{m}_{x}" for m in metrics for x in ("mean", "std")])
    for task in _order({t for t, _ in table}):
        for label in _labels(table):
            if (task, label) in table:
                row = table[(task, label)]
                w.writerow([task, label, row["runs"][2]] + [f"{v:.6g}" for m in metrics for v in row[m][:2]])
    return buf.getvalue()


def default_out(first: Path) -> Path:
    """`report.md` in the first directory given, or beside it when that is a run directory (its files are the
    run's own)."""
    is_run = (first / "config.yaml").is_file() or (first / "checkpoints").is_dir()
    return (first.resolve().parent if is_run else first) / "report.md"


def out_path(dirs: Sequence[str | Path], out: str | Path | None) -> Path:
    """Where the report goes: `out`, with `.md` added where it has no extension and is no folder (`--out table`
    writes `table.md` and `table.csv`; a folder is refused by the writer), or `default_out`."""
    if out is None:
        return default_out(Path(dirs[0]))
    out = Path(out)
    return out.with_name(out.name + ".md") if out.suffix == "" and not out.is_dir() else out


def report(dirs: Sequence[str | Path], out: str | Path | None = None, notes: str | Path | None = None,
           title: str = "CCPO paper Table 1 metrics", command: str | None = None, section: bool = False,
           paper: bool = False, extrapolated: bool = False) -> str:
    """Aggregate the runs under `dirs`; write `out` (default `<first dir>/report.md`) and its `.csv`, or with
    `section` replace or add this report's section of `out` (see the module docstring); return the Markdown.
    `extrapolated`: average the thresholds outside each run's trained range too."""
    runs = find_runs(dirs, extrapolated)
    table = aggregate([s for _, s in runs])
    root = Path(dirs[0]) if len(dirs) == 1 else None
    out = out_path(dirs, out)
    text = markdown(table, runs, root, title, command or "python -m ccpo_pl.report " + " ".join(map(str, dirs)),
                    paper)
    if notes is not None:
        if not Path(notes).is_file():
            raise ConfigError(f"--notes {str(notes)!r} does not exist")
        text += "\n" + Path(notes).read_text()
    inputs = [Path(notes)] if notes is not None else []
    host = next((run for run, _ in runs if _inside(out, run)), out.parent if is_run_dir(out.parent) else None)
    if host is not None:
        raise ConfigError(f"--out={str(out)!r} is inside the run directory {str(host)!r}; a report is never written "
                          f"into a run: give a file outside it")
    check_writable(out.parent, "--out")
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    table_path = out.with_name(f"{out.stem}-{slug}.csv") if section else out.with_suffix(".csv")
    if table_path == out:
        raise ConfigError(f"--out={str(out)!r} ends in .csv, the name of its table; give a .md file")
    # a report updates its own file (a section, or its main part keeping the sections); a file that is not a
    # report is refused (a section goes into any Markdown text file, replacing nothing of it)
    md_kind = outputs.SECTION_HOST if section else outputs.REPORT
    with (outputs.claim(out, md_kind, update=True, name="--out", inputs=inputs) as md,
          outputs.claim(table_path, outputs.REPORT_CSV, update=True, name="--out", inputs=inputs) as tab):
        old = _text_of(out)
        if section:
            begin, end = f"<!-- report section: {slug} -->", f"<!-- end of report section: {slug} -->"
            block = f"{begin}\n{text.replace('# ', '## ', 1)}{end}\n"
            if begin in old and end in old:
                head, rest = old.split(begin, 1)
                new_text = head + block + rest.split(end, 1)[1].removeprefix("\n")
            else:
                new_text = old + ("\n" if old and not old.endswith("\n\n") else "") + block
        else:
            marker = "<!-- report section: "
            sections = old[old.index(marker):] if marker in old else ""  # the generated sections stay
            new_text = text + ("\n" + sections if sections else "")
        tab.write_file(csv_text(table).encode())
        md.write_file(new_text.encode())
    return text


def _text_of(path: Path) -> str:
    """The text of the existing report file `path` ('' when there is none)."""
    return path.read_text() if path.is_file() else ""


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(Path(folder).resolve())


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m ccpo_pl.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="sweep or run directories holding <run>/eval/summary.json")
    parser.add_argument("--out", help="Markdown report (default <first dir>/report.md, beside it for a run "
                                      "directory); the CSV goes beside it")
    parser.add_argument("--notes", help="a Markdown file appended to the report (e.g. what was learnt)")
    parser.add_argument("--title", default="CCPO paper Table 1 metrics")
    parser.add_argument("--paper", action="store_true",
                        help="add the paper's CCPO column and its safest baseline per task (Table 1)")
    parser.add_argument("--extrapolated", action="store_true",
                        help="also average the thresholds outside a run's trained eps range (left out by default)")
    parser.add_argument("--section", action="store_true",
                        help="write the report as a section of --out (replacing the section of the same title)")
    args = parser.parse_args(argv)
    if args.section and args.out is None:
        print("ccpo_pl.report: error: --section needs --out FILE.md (the file the section goes into)", file=sys.stderr)
        sys.exit(2)
    command = "python -m ccpo_pl.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        text = report(args.dirs, args.out, args.notes, args.title, command, args.section, args.paper,
                      args.extrapolated)
        print(text.split("\n## Runs", 1)[0].rstrip("\n"))  # the table; the list of runs is in the file
        print(f"ccpo_pl.report: wrote {out_path(args.dirs, args.out)}")
    except ConfigError as err:
        print(f"ccpo_pl.report: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
