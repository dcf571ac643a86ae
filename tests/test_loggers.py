"""`logger=tensorboard|csv|wandb|mlflow`: each logger's files, read back, hold the per-threshold scalars and the J(eps)
plot; TensorBoard has the config as HPARAMS; resumed runs append; bad logger settings are one line."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from ccpo_pl import loggers, plot, tb_runs
from ccpo_pl.conf import CONF_DIR, LOGGER_DIRS
from ccpo_pl.errors import ConfigError
from ccpo_pl.fit import _check_group_overrides, fit
from ccpo_pl.validation import validate

FRAMES = 400  # the shortest smoke budget: one epoch, one evaluation at its end


# ---------------------------------------------------------------- reading each logger's files back
def tensorboard_scalars(run_dir: Path, tb_scalars, tb_events) -> tuple[dict, list[bytes]]:
    images = tb_events(run_dir).Images("eval/curves")
    return tb_scalars(run_dir), [(e.step, e.encoded_image_string) for e in images]


def csv_scalars(run_dir: Path) -> tuple[dict, list]:
    tags = defaultdict(list)
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for tag, value in row.items():
                if tag != "step" and value:
                    tags[tag].append((int(row["step"]), float(value)))
    figures = [(int(p.stem.split("_")[-1]), p.read_bytes()) for p in (run_dir / "csv" / "eval").glob("curves_*.png")]
    return dict(tags), figures


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte W&B header, then LevelDB's log format (32 KiB
    blocks of chunks with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, parts = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(parts)
            parts = b""


def wandb_scalars(run_dir: Path) -> tuple[dict, list]:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    tags, figures = defaultdict(list), []
    for record in wandb_records(next(offline.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = row.get("trainer/global_step")
        for tag, value in row.items():
            if tag.endswith("/_type") and str(value).startswith("images"):  # an image: <tag>/{_type,filenames,...}
                files = row[tag.replace("/_type", "/filenames")]
                figures += [(step, (offline / "files" / name).read_bytes()) for name in files]
            elif isinstance(value, (int, float)):
                tags[tag].append((step, float(value)))
    return dict(tags), figures


def mlflow_scalars(run_dir: Path) -> tuple[dict, list]:
    (run,) = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    tags = {}
    for path in (run / "metrics").rglob("*"):
        if path.is_file():  # lines "<timestamp> <value> <step>"
            lines = [line.split() for line in path.read_text().splitlines()]
            tags[path.relative_to(run / "metrics").as_posix()] = [(int(s), float(v)) for _, v, s in lines]
    figures = [(int(p.stem.split("_")[-1]), p.read_bytes()) for p in (run / "artifacts" / "eval").glob("curves_*")]
    return tags, figures


# ---------------------------------------------------------------- one smoke run per logger
@pytest.fixture(scope="module", params=["tensorboard", "csv", "wandb", "mlflow"])
def logged_run(request, tmp_path_factory, smoke_config, tb_scalars, tb_events):
    name = request.param
    log_dir = tmp_path_factory.mktemp(name)
    cfg = smoke_config(log_dir, f"logger={name}", f"total_frames={FRAMES}", "run_name=r", "threads=1")
    fit(cfg)
    run_dir = log_dir / "r"
    read = {"tensorboard": lambda d: tensorboard_scalars(d, tb_scalars, tb_events), "csv": csv_scalars,
            "wandb": wandb_scalars, "mlflow": mlflow_scalars}[name]
    return name, cfg, run_dir, *read(run_dir)


def test_each_logger_gets_the_per_eps_scalars_against_frames(logged_run):
    name, cfg, run_dir, tags, _ = logged_run
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == {"checkpoints", LOGGER_DIRS[name]}
    for eps in cfg.eps.eval:
        for q in ("reward", "cost", "cv"):
            assert [s for s, _ in tags[f"eval/eps_{eps:g}/{q}"]] == [FRAMES], (name, eps, q)
    assert all(f"multipliers/lam/eps_{eps:g}" in tags for eps in cfg.eps.behavior)
    assert any(f"train/eps_{eps:g}/episode_cost" in tags for eps in cfg.eps.behavior)  # 2 episodes in 400 frames
    assert [s for s, _ in tags["eval/avg_reward"]] == [FRAMES]


def test_each_logger_gets_the_j_eps_figure_as_a_png(logged_run):
    name, _, _, _, figures = logged_run
    assert [step for step, _ in figures] == [FRAMES], name
    image = Image.open(io.BytesIO(figures[0][1]))
    assert image.format == "PNG" and image.width >= 500 and len(set(image.convert("L").getdata())) > 2


@pytest.mark.parametrize("tag, run, tb_tag", [
    ("eval/eps_20/reward", "eps_20", "by_eps/eval_reward"), ("eval/eps_12.5/cost", "eps_12.5", "by_eps/eval_cost"),
    ("train/eps_40/episode_cost", "eps_40", "by_eps/train_episode_cost"), ("eval/eps_20/cv", "eps_20", "eval/cv"),
    ("multipliers/lam/eps_20", "eps_20", "multipliers/lam"), ("update/j_c/eps_25", "eps_25", "update/j_c"),
    ("eval/avg_reward", None, "eval/avg_reward"), ("train/episode_reward", None, "train/episode_reward"),
    ("multipliers/lam_max", None, "multipliers/lam_max"), ("train/eps_range", None, "train/eps_range")])
def test_each_per_threshold_tag_goes_to_its_thresholds_tensorboard_run_and_back(tag, run, tb_tag):
    assert tb_runs.split_tag(tag) == (run, tb_tag)
    assert tb_runs.join_tag(run, tb_tag) == tag


@pytest.mark.parametrize("logged_run", ["tensorboard"], indirect=True)
def test_tensorboard_has_one_run_per_threshold_with_reward_and_cost_first(logged_run, tb_events):
    """Each threshold is its own TensorBoard run (its own colour and legend entry) under the run's tb/; the run
    itself keeps no per-threshold tag; Time Series sorts sections by the first tag segment: by_eps is first."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    _, cfg, run_dir, _, _ = logged_run
    thresholds = {f"eps_{e:g}" for e in [*cfg.eps.eval, *cfg.eps.behavior]}
    subruns = {p.name for p in (run_dir / "tb").iterdir() if p.is_dir()}
    assert thresholds <= subruns and all(tb_runs.is_eps_run(name) for name in subruns)
    own = tb_events(run_dir).Tags()["scalars"]
    assert "eval/avg_reward" in own and not any(tb_runs.is_eps_run(part) for tag in own for part in tag.split("/"))
    tags = {}
    for name in subruns:
        acc = EventAccumulator(str(run_dir / "tb" / name), size_guidance={"scalars": 0})
        acc.Reload()
        tags[name] = set(acc.Tags()["scalars"])
    for e in cfg.eps.eval:
        assert {"by_eps/eval_reward", "by_eps/eval_cost", "eval/cv"} <= tags[f"eps_{e:g}"]
    for e in cfg.eps.behavior:
        assert "multipliers/lam" in tags[f"eps_{e:g}"]
    sections = sorted({t.split("/")[0] for t in set(own).union(*tags.values())})
    assert sections[0] == "by_eps" and {"critic", "estep", "eval", "multipliers"} <= set(sections[1:])
    first = sorted(t for t in set().union(*tags.values()) if t.startswith("by_eps/"))
    assert first == ["by_eps/eval_cost", "by_eps/eval_reward", "by_eps/train_episode_cost",
                     "by_eps/train_episode_reward"]  # Time Series' first cards: reward and cost per threshold
    # Custom Scalars: each chart's regex matches the thresholds' runs' tag (one line per threshold)
    (config,) = [e for e in tb_events(run_dir).Tensors("custom_scalars__config__")]
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    for title, tag in (("J_r(eps): episode reward", "by_eps/eval_reward"), ("J_c(eps): episode cost",
                                                                           "by_eps/eval_cost"),
                       ("multipliers/lam", "multipliers/lam")):
        assert any(re.match(p, tag) for p in charts[title]), title
        assert not any(re.match(p, tag + "_unseen") for p in charts[title]), title
    assert [c.title for c in layout.category[0].chart][:2] == ["J_r(eps): episode reward", "J_c(eps): episode cost"]


def test_a_resumed_tensorboard_run_continues_each_thresholds_curve_in_its_own_run(tmp_path):
    def logger(purge_step):
        return loggers.ThresholdRunsTensorBoardLogger(save_dir=tmp_path, name="run", version="tb",
                                                      default_hp_metric=False, purge_step=purge_step)

    first = logger(0)
    for step in (400, 800, 1200):  # 1200: logged after the checkpoint at 800, then killed
        first.log_metrics({"eval/eps_20/cost": step / 100, "eval/avg_cv": 0.0}, step=step)
    first.finalize("failed")
    again = logger(801)
    again.log_metrics({"eval/eps_20/cost": 99.0, "eval/avg_cv": 1.0}, step=1200)
    again.finalize("success")
    assert sorted(p.name for p in (tmp_path / "run" / "tb").iterdir() if p.is_dir()) == ["eps_20"]
    scalars = tb_runs.read_scalars(tmp_path / "run" / "tb")
    assert scalars["eval/eps_20/cost"] == [(400, 4.0), (800, 8.0), (1200, 99.0)]
    assert scalars["eval/avg_cv"] == [(400, 0.0), (800, 0.0), (1200, 1.0)]


def test_a_run_logged_before_the_per_threshold_runs_reads_back_as_one_curve_when_resumed(tmp_path):
    """A run from before this layout keeps its flat tags in tb/; resumed, its thresholds go to tb/eps_<eps>/, and
    reading the run gives one curve per flat tag, in frame order."""
    from torch.utils.tensorboard import SummaryWriter

    old = SummaryWriter(str(tmp_path / "run" / "tb"))
    for step in (400, 800):
        old.add_scalar("eval/eps_20/cost", step / 100, global_step=step)
    old.close()
    loggers.after_earlier_event_files(tmp_path / "run" / "tb")
    resumed = loggers.ThresholdRunsTensorBoardLogger(save_dir=tmp_path, name="run", version="tb",
                                                     default_hp_metric=False, purge_step=801)
    resumed.log_metrics({"eval/eps_20/cost": 12.0}, step=1200)
    resumed.finalize("success")
    assert tb_runs.read_scalars(tmp_path / "run" / "tb")["eval/eps_20/cost"] == [(400, 4.0), (800, 8.0),
                                                                                (1200, 12.0)]


@pytest.mark.parametrize("logged_run", ["tensorboard"], indirect=True)  # TensorBoard's HPARAMS tab
def test_tensorboard_has_the_flattened_config_as_hparams_with_the_eval_metrics(logged_run, tb_events):
    name, cfg, run_dir, _, _ = logged_run
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tb_events(run_dir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["algo.name"].string_value == cfg.algo.name
    assert start.hparams["total_frames"].number_value == FRAMES
    assert start.hparams["eps.eval"].string_value == str(list(cfg.eps.eval))
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(loggers.HPARAM_METRICS)


@pytest.mark.parametrize("logged_run", ["wandb", "mlflow"], indirect=True)
def test_mlflow_and_wandb_keep_the_config(logged_run):
    name, cfg, run_dir, _, _ = logged_run
    if name == "mlflow":
        (params,) = (run_dir / "mlruns").glob("*/*/params")
        assert (params / "algo.name").read_text() == cfg.algo.name
        assert (params / "total_frames").read_text() == str(FRAMES)
    elif name == "wandb":
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        config = [r.config for r in wandb_records(next(offline.glob("run-*.wandb"))) if r.HasField("config")]
        keys = {item.key: json.loads(item.value_json) for c in config for item in c.update}
        assert keys["algo.name"] == cfg.algo.name and keys["total_frames"] == FRAMES


@pytest.mark.parametrize("logged_run", ["csv", "wandb", "mlflow"], indirect=True)
def test_plot_reads_a_csv_run_and_refuses_a_wandb_or_mlflow_run_in_one_line(logged_run, tmp_path):
    name, _, run_dir, tags, _ = logged_run
    if name == "csv":
        scalars = plot.read_scalars(run_dir)
        assert scalars["eval/avg_reward"][0].tolist() == [FRAMES]
        assert scalars["eval/avg_reward"][1].tolist() == [v for _, v in tags["eval/avg_reward"]]
        assert [p.name for p in plot.plot([run_dir], out=tmp_path)][:2] == ["learning_eval_avg_reward.png",
                                                                          "learning_eval_avg_reward.csv"]
    else:
        with pytest.raises(ConfigError, match="has no TensorBoard or CSV logs .* logger=tensorboard .* logger=csv"):
            plot.find_runs([run_dir])


# ---------------------------------------------------------------- resume
def test_a_resumed_csv_log_keeps_the_rows_before_the_checkpoint_and_appends(tmp_path):
    log = tmp_path / "run" / "csv"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text("a,step\n1.0,400\n2.0,800\n3.0,1200\n")  # 1200: logged after the checkpoint
    logger = loggers.ResumableCSVLogger(save_dir=tmp_path, name="run", version="csv", purge_step=801)
    logger.log_metrics({"a": 4.0, "b": 5.0}, step=1200)
    logger.save()
    rows = list(csv.DictReader((log / "metrics.csv").open(newline="")))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [("400", "1.0", ""), ("800", "2.0", ""),
                                                           ("1200", "4.0", "5.0")]


def test_a_resumed_run_logs_into_the_same_wandb_and_mlflow_run(tmp_path, compose_config):
    for name, attr in (("wandb", "_id"), ("mlflow", "run_id")):
        options = dict(compose_config(f"logger={name}").logger)
        make = loggers.MAKERS[options.pop("name")]
        first = getattr(make(tmp_path / name, name, 0, **options), attr)
        again = getattr(make(tmp_path / name, name, 401, **options), attr)
        other = getattr(make(tmp_path / "other", name, 0, **options), attr)
        assert first and again == first and other != first, name


def test_a_resumed_runs_event_file_sorts_after_the_previous_ones(tmp_path):
    """TensorBoard reads event files in name order (their names start with the second they were made): a process
    resumed within that second waits for the next one, so that its events are not dropped as out of order."""
    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / "events.out.tfevents.1000.host.1.0").touch()  # long ago: no wait
    start = time.monotonic()
    loggers.after_earlier_event_files(tb)
    assert time.monotonic() - start < 0.5
    now = int(time.time())
    (tb / f"events.out.tfevents.{now}.host.2.0").touch()  # this second
    loggers.after_earlier_event_files(tb)
    assert int(time.time()) > now


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("name", sorted(loggers.MAKERS))
def test_every_logger_config_passes_the_table_and_has_a_maker(name, compose_config):
    assert (CONF_DIR / "logger" / f"{name}.yaml").is_file()
    validate(compose_config(f"logger={name}"))


def test_an_unknown_logger_or_another_loggers_key_is_refused_in_one_line(tmp_path, smoke_config):
    with pytest.raises(ConfigError, match=r"^unknown logger 'neptune'; allowed: csv, mlflow, tensorboard, wandb$"):
        _check_group_overrides(["logger=neptune"])
    with pytest.raises(ConfigError, match=r"^logger.project is not a setting of logger=csv \(conf/logger/csv.yaml"):
        _check_group_overrides(["logger=csv", "logger.project=p"])
    _check_group_overrides(["logger=wandb", "logger.project=p"])  # wandb's own key
    with pytest.raises(ConfigError, match=r"^logger.offline is not a setting of logger=mlflow"):
        validate(smoke_config(tmp_path, "logger=mlflow", "+logger.offline=true"))
    with pytest.raises(ConfigError, match=r"^logger.offline='yes' is not allowed; logger.offline must be true or"):
        validate(smoke_config(tmp_path, "logger=wandb", "logger.offline=yes"))
    with pytest.raises(ConfigError, match=r"^logger.project is missing from the config; restore it \(conf/logger/wa"):
        validate(smoke_config(tmp_path, "logger=wandb", "~logger.project"))
    assert not any(tmp_path.iterdir())
