"""The run's logger, chosen with `logger=tensorboard|csv|wandb|mlflow` (conf/logger/*.yaml): Lightning's own loggers,
each writing under the run directory, each receiving the same scalars (tags such as `eval/eps_10/cost`, x-axis =
environment frames), the J(eps) plot `eval/curves` and the run's flattened config as hyperparameters.

- tensorboard: `<run>/tb/events.out.tfevents.*`, and each threshold's scalars in its own TensorBoard run
  `<run>/tb/eps_<eps>/` under a threshold-free tag (`eval/eps_10/cost` is `by_eps/eval_cost` of run `eps_10`:
  `tb_runs`), so that each threshold has its own colour and legend entry; the config in the HPARAMS tab; the plot
  as the image `eval/curves`.
- csv: `<run>/csv/metrics.csv` (column `step` = frames, one column per tag); the plot as
  `<run>/csv/eval/curves_<frames>.png`; the config in `<run>/csv/hparams.yaml`.
- wandb: `<run>/wandb/offline-run-<time>-<id>/` (or `run-...` online); the plot as the image `eval/curves`; the
  config as the W&B run config; x-axis `trainer/global_step` = frames.
- mlflow: a file store in `<run>/mlruns/` (or `logger.tracking_uri`); the plot as the artifact
  `eval/curves_<frames>.png`; the config as the run's parameters.

A resumed run logs into the same logger run: TensorBoard's and CSV's files are appended to, W&B and MLflow are
given the run id stored at the first start (`<run>/wandb/run_id`, `<run>/mlruns/run_id`). TensorBoard and CSV drop
what a killed process logged after its last checkpoint, so a resumed run has each frame count once. W&B and MLflow
keep every value they were sent: those frames appear twice there (W&B plots both against `trainer/global_step`;
MLflow keeps both points of a metric at that step).

The four subclasses below change one behaviour each, named in their docstrings; everything else is Lightning's.
"""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ccpo_pl.tb_runs import split_tag

#: the metrics TensorBoard's HPARAMS tab shows beside each run's config (read from these scalar tags)
HPARAM_METRICS = ("eval/avg_reward", "eval/avg_cv")


# ---------------------------------------------------------------- the loggers, one maker each
def make_logger(cfg: DictConfig, run_dir: Path, purge_step: int) -> Logger:
    """The logger `cfg.logger` names, writing under `run_dir`, with the run's flattened config logged as its
    hyperparameters (rank 0). `purge_step`: the first frame count this process logs (0 for a new run); what an
    earlier process logged from there on is dropped where the logger allows it (TensorBoard, CSV)."""
    options = OmegaConf.to_container(cfg.logger, resolve=True)
    logger = MAKERS[options.pop("name")](run_dir, str(cfg.run_name), purge_step, **options)
    if rank_zero_only.rank == 0:
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain.pop("hydra", None)
        log_config(logger, plain)
    return logger


def _tensorboard(run_dir: Path, run_name: str, purge_step: int) -> TensorBoardLogger:
    after_earlier_event_files(run_dir / "tb")
    return ThresholdRunsTensorBoardLogger(save_dir=run_dir.parent, name=run_dir.name, version="tb",
                                          default_hp_metric=False, purge_step=purge_step)


def _csv(run_dir: Path, run_name: str, purge_step: int) -> CSVLogger:
    return ResumableCSVLogger(save_dir=run_dir.parent, name=run_dir.name, version="csv", purge_step=purge_step)


def _wandb(run_dir: Path, run_name: str, purge_step: int, *, project: str, entity: str | None,
           offline: bool) -> WandbLogger:
    run_id = remembered_id(run_dir / "wandb", lambda: uuid.uuid4().hex[:8])  # W&B's own ids: 8 of [a-z0-9]
    return FinishingWandbLogger(name=run_name, project=project, entity=entity, offline=offline, id=run_id,
                                save_dir=str(run_dir))


def _mlflow(run_dir: Path, run_name: str, purge_step: int, *, experiment: str,
            tracking_uri: str | None) -> MLFlowLogger:
    if tracking_uri is None:  # MLflow 3 keeps its file store (in maintenance) behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = tracking_uri or (run_dir / "mlruns").resolve().as_uri()
    id_file = run_dir / "mlruns" / "run_id"
    logger = ResumableMLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri,
                                   run_id=id_file.read_text().strip() if id_file.is_file() else None)
    if rank_zero_only.rank == 0:
        remembered_id(run_dir / "mlruns", lambda: logger.run_id)  # creates the MLflow run on a new ccpo_pl run
    return logger


MAKERS: dict[str, Callable[..., Logger]] = {"tensorboard": _tensorboard, "csv": _csv, "wandb": _wandb,
                                            "mlflow": _mlflow}


def remembered_id(folder: Path, new: Callable[[], str]) -> str:
    """The run id stored in `<folder>/run_id` (a resumed run), else `new()`, stored there (rank 0)."""
    path = folder / "run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = new()
    if rank_zero_only.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{run_id}\n")
    return run_id


def after_earlier_event_files(tb_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second the file was made
    (`events.out.tfevents.<second>.<host>.<pid>`): a run resumed within the second its previous process made its
    file could sort first, and its events would then be dropped as out of order. Waits for the next second then."""
    seconds = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*")
               if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    if seconds and max(seconds) >= int(time.time()):
        time.sleep(max(seconds) + 1 - time.time())


class ThresholdRunsTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, with every per-threshold scalar written into the threshold's own TensorBoard
    run `<log dir>/eps_<eps>/` under its threshold-free tag (`tb_runs.split_tag`), as `SummaryWriter.add_scalars`
    does: one colour and legend entry per threshold. Each sub-run's writer is made when its first scalar comes,
    with the logger's `purge_step` (a resumed run drops there, too, what a killed process logged after its
    checkpoint)."""

    def __init__(self, *args, purge_step: int = 0, **kwargs):
        super().__init__(*args, purge_step=purge_step, **kwargs)
        self._purge_step = purge_step
        self._threshold_writers: dict = {}

    def threshold_writer(self, run: str):
        """The `SummaryWriter` of sub-run `run` (`eps_20`), made on first use."""
        writer = self._threshold_writers.get(run)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            folder = Path(self.log_dir) / run
            folder.mkdir(parents=True, exist_ok=True)
            after_earlier_event_files(folder)
            writer = self._threshold_writers[run] = SummaryWriter(log_dir=str(folder), purge_step=self._purge_step)
        return writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        own, per_run = {}, defaultdict(dict)
        for tag, value in metrics.items():
            run, name = split_tag(tag)
            (own if run is None else per_run[run])[name] = value
        if own:
            super().log_metrics(own, step)
        for run, values in per_run.items():
            writer = self.threshold_writer(run)
            for name, value in values.items():
                writer.add_scalar(name, value.item() if hasattr(value, "item") else value, step)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        for writer in self._threshold_writers.values():
            writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._threshold_writers.values():
            writer.close()
        self._threshold_writers = {}


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing `metrics.csv`; this one keeps its rows logged before `purge_step`
    and appends (as TensorBoard's `purge_step` does)."""

    def __init__(self, *args, purge_step: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.purge_step = purge_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self.purge_step)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, purge_step: int):
        self.purge_step = purge_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if float(row["step"]) < self.purge_step]
            self.metrics_keys = sorted(reader.fieldnames or [])
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class FinishingWandbLogger(WandbLogger):
    """Lightning's WandbLogger leaves the W&B run open, and the next run of this process (a sweep's next job, a
    test) would log into it: this one finishes the run when training ends, and waits for W&B's service process to
    have written it out (`wandb.teardown`; `finish` alone returns while the run file is still being written)."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        import wandb

        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status in ("success", "finished") else 1)
            self._experiment = None
            wandb.teardown()


class ResumableMLFlowLogger(MLFlowLogger):
    """MLflow refuses to change a logged parameter: a resumed run logs only the parameters its MLflow run lacks (a
    raised `total_frames` keeps the value the run started with)."""

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        params = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({k: v for k, v in params.items() if k not in logged})


# ---------------------------------------------------------------- the config as hyperparameters
def flat_config(plain: Mapping) -> dict[str, bool | int | float | str]:
    """The config as `{dotted.key: value}`, lists and None as text (what every logger's hyperparameters accept)."""
    flat = _flatten_dict(dict(plain), delimiter=".")
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def log_config(logger: Logger, plain: Mapping) -> None:
    """Log the run's config as hyperparameters. TensorBoard: an HPARAMS session whose metrics are
    `HPARAM_METRICS` (their values are the run's scalars of those tags; Lightning's `log_hyperparams` would log a
    placeholder value at step 0 into those tags, or `hp_metric`, which this run keeps off)."""
    params = flat_config(plain)
    if isinstance(logger, TensorBoardLogger):
        from torch.utils.tensorboard.summary import hparams

        writer = logger.experiment._get_file_writer()  # as SummaryWriter.add_hparams and Lightning write them
        for summary in hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0)):
            writer.add_summary(summary)
    else:
        logger.log_hyperparams(params)


# ---------------------------------------------------------------- figures, one writer per logger kind
def _figure_tensorboard(logger: TensorBoardLogger, tag: str, fig: Figure, step: int) -> None:
    logger.experiment.add_figure(tag, fig, global_step=step, close=False)


def _figure_csv(logger: CSVLogger, tag: str, fig: Figure, step: int) -> None:
    path = Path(logger.log_dir) / f"{tag}_{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _figure_wandb(logger: WandbLogger, tag: str, fig: Figure, step: int) -> None:
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    logger.log_image(key=tag, images=[Image.open(buf)], step=step)


def _figure_mlflow(logger: MLFlowLogger, tag: str, fig: Figure, step: int) -> None:
    logger.experiment.log_figure(logger.run_id, fig, f"{tag}_{step}.png")


FIGURE_WRITERS: dict[type, Callable[[Logger, str, Figure, int], None]] = {
    TensorBoardLogger: _figure_tensorboard, CSVLogger: _figure_csv, WandbLogger: _figure_wandb,
    MLFlowLogger: _figure_mlflow}


@rank_zero_only
def log_figure(loggers: list[Logger], tag: str, fig: Figure, step: int) -> None:
    """Send a matplotlib figure to each logger, logged at `step` (environment frames)."""
    for logger in loggers:
        writer = next((w for cls, w in FIGURE_WRITERS.items() if isinstance(logger, cls)), None)
        if writer is not None:
            writer(logger, tag, fig, step)

