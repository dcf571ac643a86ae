"""`python -m ccpo_pl.plot <run or sweep dirs> [--metric eval/avg_reward ...] [--by label] [--out plots]`: compare
runs from their run directories.

- Learning curves: each `--metric` (a scalar tag, logged against environment frames) as the mean and
  standard deviation over the runs of a group (e.g. the seeds of one algorithm), one line and band per group.
  Runs are put on the union of their logged frames by linear interpolation inside each run's own frame range
  (never extrapolated), so runs of different lengths or schedules combine; `n` in the CSV counts the runs behind
  each point.
- Threshold curves: J_r(eps) and J_c(eps) of each group's final evaluation (`eval/per_eps.csv`, else the run's
  newest `evaluate` output `eval-<date-time>/per_eps.csv`; the headline
  deterministic policy where evaluated), mean and standard deviation over runs, with the line y = eps, the
  behaviour thresholds and the extrapolated range (eps outside the trained range) shaded.

Writes `<out>/learning_<metric>.png` and `.csv` per metric and `<out>/thresholds.png` and `.csv` (one folder,
written whole once every file is read; an existing plot folder is replaced only with `--overwrite`), and prints
each path. A run directory is one with `config.yaml` and what `logger=tensorboard` (`tb/`, the default) or `logger=csv`
(`csv/metrics.csv`) wrote; a run logged to W&B or MLflow only is refused naming them. Groups are named by the run
config's `--by` key (a dotted key, e.g. `algo.name`, `env.name`, `seed`; `algo` and `env` are short for their names).
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from ccpo_pl import outputs
from ccpo_pl.errors import ConfigError, OneLineParser, check_writable

SHORT_KEYS = {"algo": "algo.name", "env": "env.name", "task": "env.name"}


#: the files of the loggers plot reads, in the order it prefers them
SCALAR_FILES = ("tb", "csv/metrics.csv")


def find_runs(dirs: Sequence[str | Path]) -> list[Path]:
    """Every run directory (`config.yaml` beside `tb/` or `csv/metrics.csv`) at or under `dirs`, sorted, each once;
    a run with neither (logged to W&B or MLflow only) is skipped with a warning, and refused in one line when no run
    is left."""
    runs = set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ConfigError(f"{str(d)!r} is not a directory; pass run directories or a sweep directory")
        runs |= {p.parent.resolve() for p in root.rglob("config.yaml")
                 if any((p.parent / sub).is_dir() for sub in ("tb", "csv", "wandb", "mlruns"))}
    if not runs:
        raise ConfigError(f"no run directories (config.yaml and tb/) under {', '.join(map(str, dirs))}; pass the "
                          f"log_dir of ccpo_pl.fit runs")
    unread = [run for run in sorted(runs) if not any((run / f).exists() for f in SCALAR_FILES)]
    if len(unread) == len(runs):
        raise ConfigError(f"run {str(unread[0])!r} has no TensorBoard or CSV logs (tb/, csv/metrics.csv); plot reads "
                          f"runs trained with logger=tensorboard (the default) or logger=csv")
    for run in unread:  # beside runs it reads (e.g. a logger=wandb smoke run in the same log_dir)
        print(f"ccpo_pl.plot: warning: skipping {str(run)!r}: no TensorBoard or CSV logs (tb/, csv/metrics.csv), "
              f"logged to W&B or MLflow only", file=sys.stderr)
    return sorted(runs.difference(unread))


def run_config(run_dir: Path) -> Mapping:
    """The run's `config.yaml` as a mapping; a file that does not read as one is a one-line error naming it."""
    path = run_dir / "config.yaml"
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{str(path)!r} is not readable YAML ({reason}); restore the run's config.yaml (it is "
                          f"also in its checkpoints, hyper_parameters.run_config) or leave the run out") from None
    if not isinstance(node, Mapping):
        raise ConfigError(f"{str(path)!r} holds {type(node).__name__}, not a run config; restore the run's "
                          f"config.yaml or leave the run out")
    return node


def group_of(run_dir: Path, by: str) -> str:
    """The value of the run config's dotted key `by` (a one-line error naming the run if it has no such key)."""
    node = run_config(run_dir)
    for part in SHORT_KEYS.get(by, by).split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"--by {by}: {str(run_dir)!r} has no config key {SHORT_KEYS.get(by, by)}; give a "
                              f"dotted key of config.yaml, e.g. --by algo.name")
        node = node[part]
    return str(node)


def read_scalars(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tag -> (frames, values) of a run's scalars, from its TensorBoard files, else from its CSV log."""
    return read_tensorboard(run_dir) if (run_dir / "tb").is_dir() else read_csv_log(run_dir / "csv" / "metrics.csv")


def read_csv_log(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tag -> (frames, values) of a `logger=csv` run's `metrics.csv` (column `step` = frames, empty cells skipped)."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    try:
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                for tag, value in row.items():
                    if tag != "step" and value not in ("", None):
                        points[tag].append((_number(path, line, "step", row.get("step")),
                                            _number(path, line, tag, value)))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{str(path)!r} is not readable ({type(err).__name__}); leave the run out") from None
    return {tag: (np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) for tag, pts in points.items()}


def read_tensorboard(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tag -> (frames, values) of a run's TensorBoard scalars (all event files, the per-threshold runs `tb/eps_*/`
    under their flat tags: `tb_runs`; a resumed run's repeated frames are purged the way TensorBoard shows them)."""
    from ccpo_pl.tb_runs import read_scalars

    return {tag: (np.array([s for s, _ in events], dtype=np.float64), np.array([v for _, v in events],
                                                                                dtype=np.float64))
            for tag, events in read_scalars(run_dir / "tb").items()}


def _number(path: Path, line: int, column, value) -> float:
    """A CSV cell as a float; a one-line error naming the file, line and column otherwise."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{str(path)!r} line {line}: {column}={value!r} is not a number; restore the file or "
                          f"leave the run out") from None


def mean_std_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean, standard deviation (ddof=0) and count over runs, on the union of the runs' frames; each run is
    linearly interpolated inside its own frame range and left out of the points outside it."""
    grid = np.unique(np.concatenate([np.asarray(x, dtype=np.float64) for x, _ in curves]))
    values = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        order = np.argsort(x)
        x, y = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
        inside = (grid >= x[0]) & (grid <= x[-1])
        values[i, inside] = np.interp(grid[inside], x, y)
    n = np.isfinite(values).sum(0)
    with warnings.catch_warnings():  # a point no run covers: NaN, without numpy's 'Mean of empty slice'
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    return {"frames": grid, "mean": mean, "std": std, "n": n}


def read_thresholds(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The final evaluation's per-eps rows of the headline policy (deterministic where evaluated), of a run without
    one (`eval/per_eps.csv`) its newest `evaluate` output's (`eval-<date-time>/`, as `ccpo_pl.report` reads it);
    None if the run has neither; a damaged one is a one-line error naming the file and the column."""
    from ccpo_pl.report import newest_evaluation

    path = run_dir / "eval" / "per_eps.csv"
    if not path.is_file():
        latest = newest_evaluation(run_dir)
        path = latest.with_name("per_eps.csv") if latest is not None else path
    if not path.is_file():
        return None
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        _refuse(path, f"unreadable ({type(err).__name__})")
    policies = [r.get("policy", "deterministic") for r in rows]
    headline = "deterministic" if "deterministic" in policies else (policies[0] if policies else None)
    rows = [r for r in rows if r.get("policy", "deterministic") == headline]
    if not rows:
        return None
    table = {}
    for key, name in (("eps", "eps"), ("reward", "reward_mean"), ("cost", "cost_mean"),
                      ("extrapolation", "extrapolation")):
        if name not in rows[0] and key == "extrapolation":
            table[key] = np.zeros(len(rows))
            continue
        values = []
        for r in rows:
            try:
                values.append(float(r.get(name)))
            except (TypeError, ValueError):
                _refuse(path, f"{name}={r.get(name)!r} (a row of policy {headline}) is not a number")
            if not math.isfinite(values[-1]) or (key == "eps" and values[-1] <= 0):
                _refuse(path, f"{name}={r.get(name)!r} is not a finite number{' > 0' if key == 'eps' else ''}")
        table[key] = np.array(values)
    if len(set(table["eps"].tolist())) != len(rows):
        _refuse(path, "eps has a threshold twice")
    return table


def _refuse(path: Path, why: str) -> None:
    raise ConfigError(f"{str(path)!r}: {why}; restore the file (python -m ccpo_pl.evaluate ... overwrite=true writes "
                      f"it again) or leave the run out")


def threshold_stats(tables: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per eps (the union over runs): mean and std over the runs that evaluated it of J_r and J_c, their count, and
    whether any run marks it as extrapolated."""
    eps = np.unique(np.concatenate([t["eps"] for t in tables]))
    out = {"eps": eps}
    for key in ("reward", "cost"):
        per_eps = [[float(t[key][t["eps"] == e][0]) for t in tables if (t["eps"] == e).any()] for e in eps]
        out[f"{key}_mean"] = np.array([np.mean(v) for v in per_eps])
        out[f"{key}_std"] = np.array([np.std(v) for v in per_eps])
        out["n"] = np.array([len(v) for v in per_eps])
    out["extrapolation"] = np.array([any(bool(t["extrapolation"][t["eps"] == e].any()) for t in tables)
                                     for e in eps])
    return out


def _slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", tag).strip("_")


def _csv(header: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
    return buf.getvalue().encode()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_learning(metric: str, groups: Mapping[str, dict[str, np.ndarray]]) -> dict[str, bytes]:
    """`learning_<metric>.png` and `.csv`: name -> content."""
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    rows = []
    for i, (name, st) in enumerate(groups.items()):
        runs = int(st["n"].max())
        ax.plot(st["frames"], st["mean"], color=f"C{i}", label=f"{name} ({runs} run{'s' if runs > 1 else ''})")
        ax.fill_between(st["frames"], st["mean"] - st["std"], st["mean"] + st["std"], color=f"C{i}", alpha=0.2)
        rows += [[name, int(f), float(m), float(s), int(n)] for f, m, s, n in
                 zip(st["frames"], st["mean"], st["std"], st["n"])]
    ax.set_xlabel("environment frames")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return {f"learning_{_slug(metric)}.png": _png(fig),
            f"learning_{_slug(metric)}.csv": _csv(("group", "frames", "mean", "std", "n"), rows)}


def plot_thresholds(groups: Mapping[str, dict[str, np.ndarray]], eps_cfg: Mapping[str, Mapping]) -> dict[str, bytes]:
    """`thresholds.png` and `.csv`: name -> content. `eps_cfg`: each group's `eps` config (its behaviour thresholds
    and trained range)."""
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    ax_r, ax_c = fig.subplots(1, 2)
    rows = []
    for i, (name, st) in enumerate(groups.items()):
        style = {"color": f"C{i}", "marker": "o", "capsize": 3}
        ax_r.errorbar(st["eps"], st["reward_mean"], yerr=st["reward_std"], label=name, **style)
        ax_c.errorbar(st["eps"], st["cost_mean"], yerr=st["cost_std"], label=name, **style)
        lo, hi = (float(x) for x in eps_cfg[name].get("range", (-np.inf, np.inf)))
        for ax in (ax_r, ax_c):
            for b in eps_cfg[name].get("behavior", ()):
                ax.axvline(float(b), color=f"C{i}", linestyle=":", linewidth=1)
            if st["eps"].min() < lo:
                ax.axvspan(st["eps"].min(), lo, color="grey", alpha=0.1, linewidth=0)
            if st["eps"].max() > hi:
                ax.axvspan(hi, st["eps"].max(), color="grey", alpha=0.1, linewidth=0)
        columns = zip(st["eps"], st["reward_mean"], st["reward_std"], st["cost_mean"], st["cost_std"], st["n"],
                      st["extrapolation"])
        rows += [[name, float(e), float(rm), float(rs), float(cm), float(cs), int(n), int(x)]
                 for e, rm, rs, cm, cs, n, x in columns]
    eps = np.concatenate([st["eps"] for st in groups.values()])
    ax_c.plot([eps.min(), eps.max()], [eps.min(), eps.max()], "k--", linewidth=1, label="y = eps")
    for ax, title in ((ax_r, "J_r(eps): episode reward"), (ax_c, "J_c(eps): episode cost")):
        ax.set_xlabel("cost threshold eps (dotted: behaviour thresholds; shaded: extrapolated)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=8, loc="upper left")
    return {"thresholds.png": _png(fig),
            "thresholds.csv": _csv(("group", "eps", "reward_mean", "reward_std", "cost_mean", "cost_std", "n",
                                    "extrapolation"), rows)}


#: the learning curves drawn when no `--metric` is given (those no run has logged yet are left out)
DEFAULT_METRICS = ("eval/avg_reward", "eval/avg_cv")


def plot(dirs: Sequence[str | Path], metrics: Sequence[str] | None = None, by: str = "label",
         out: str | Path = "plots", overwrite: bool = False) -> list[Path]:
    """Write the figures and their CSVs into the folder `out`; returns their paths (see the module docstring). A
    metric asked for that no run logged is a one-line error; of the defaults (`metrics=None`), the logged ones are
    drawn. Every file is read before anything is written; `out` is written whole (`ccpo_pl.outputs`), an existing
    plot folder replaced only with `overwrite`, a folder holding anything else never."""
    runs = find_runs(dirs)
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in runs:
        groups[group_of(run, by)].append(run)
    scalars = {run: read_scalars(run) for run in runs}
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if any(m in s for s in scalars.values())]
    missing = [m for m in metrics if not any(m in s for s in scalars.values())]
    if missing:
        known = sorted({t for s in scalars.values() for t in s if "/eps_" not in t})
        raise ConfigError(f"--metric {missing[0]} is logged by none of the {len(runs)} runs; logged: "
                          f"{', '.join(known) or 'nothing yet'}")
    out = Path(out)
    files: dict[str, bytes] = {}  # everything is read and drawn first; then the folder is written whole
    for metric in metrics:
        curves = {name: mean_std_curve([scalars[r][metric] for r in members if metric in scalars[r]])
                  for name, members in groups.items() if any(metric in scalars[r] for r in members)}
        files |= plot_learning(metric, curves)
    tables = {name: [t for t in (read_thresholds(r) for r in members) if t is not None]
              for name, members in groups.items()}
    if any(tables.values()):
        eps_cfg = {name: eps_config(members[0]) for name, members in groups.items()}
        files |= plot_thresholds({n: threshold_stats(t) for n, t in tables.items() if t}, eps_cfg)
    else:
        print("ccpo_pl.plot: no threshold curves: no run has an evaluation (eval/per_eps.csv or "
              "eval-<date-time>/per_eps.csv); python -m ccpo_pl.evaluate run=<run dir> makes one", file=sys.stderr)
    host = next((run for run in runs if out.resolve().is_relative_to(run)), None)
    if host is not None:
        raise ConfigError(f"--out={str(out)!r} is inside the run directory {str(host)!r}; plots are never written "
                          f"into a run: give a folder outside it")
    check_writable(out.parent, "--out")
    with outputs.claim(out, outputs.PLOTS, overwrite=overwrite, name="--out", asked="--overwrite") as place:
        place.write_folder(files)
    return [out / name for name in files]


def eps_config(run_dir: Path) -> dict:
    """The run config's `eps.behavior` and `eps.range` as floats (a one-line error naming the file for values
    that are not numbers)."""
    eps = run_config(run_dir).get("eps") or {}
    path = run_dir / "config.yaml"
    try:
        out = {"behavior": [float(b) for b in eps.get("behavior") or ()]}
        if eps.get("range") is not None:
            lo, hi = (float(x) for x in eps["range"])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError
            out["range"] = (lo, hi)
    except (AttributeError, TypeError, ValueError):
        raise ConfigError(f"{str(path)!r}: eps.behavior={eps.get('behavior')!r} and eps.range={eps.get('range')!r} "
                          f"must be numbers and [low, high] with low < high; restore the file or leave the run "
                          f"out") from None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m ccpo_pl.plot", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run directories, or directories holding runs (a sweep, a log_dir)")
    parser.add_argument("--metric", action="append",
                        help="a logged scalar tag; repeatable (default: eval/avg_reward and eval/avg_cv)")
    parser.add_argument("--by", default="label", help="config key naming a run's group (default: label; algo, env)")
    parser.add_argument("--out", default="plots", help="output directory (default: plots)")
    parser.add_argument("--overwrite", action="store_true", help="replace the plots already in --out")
    args = parser.parse_args(argv)
    try:
        written = plot(args.dirs, args.metric, args.by, args.out, args.overwrite)
    except ConfigError as err:
        print(f"ccpo_pl.plot: error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(f"ccpo_pl.plot: wrote {path}")


if __name__ == "__main__":
    main()
