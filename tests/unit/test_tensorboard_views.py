"""What TensorBoard shows of a run, read back from the event files as TensorBoard reads them:
the trade-off first and in the right units, no structurally zero counters, custom-scalar charts
only for metrics the run has, HParams columns with proper types in trade-off order, and replaced
runs out of sight (pfl_dist/tensorboard_views.py, pfl_dist/rundir.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing import io_wrapper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from pfl_dist.comm import Counters, Traffic
from pfl_dist.config import load_config
from pfl_dist.outputs import metric_tag
from pfl_dist.rundir import prepare_run_dir, set_run_dir_aside
from pfl_dist.tensorboard_views import HPARAMS
from pfl_dist.timing import RoundTimes
from pfl_dist.tracking import RunLogger
from tests.helpers import run_inprocess, write_learnable_mnist

SMALL = ("data.num_clients=4", "data.samples_per_client=40", "algorithm.num_local_steps=5", "train.num_rounds=4",
         "train.eval_every=2")


def load(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def layout(events: EventAccumulator) -> Any:
    """The custom-scalars layout, as the plugin reads it: the serialized Layout in a string tensor."""
    tensor = events.Tensors("custom_scalars__config__")[0]
    return layout_pb2.Layout.FromString(tensor.tensor_proto.string_val[0])


def hparams(events: EventAccumulator) -> tuple[Any, dict[str, Any]]:
    """(the experiment config, this run's hparam values)."""
    contents = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(contents["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(contents["_hparams_/session_start_info"])
    values = {name: getattr(value, str(value.WhichOneof("kind"))) for name, value in
              start.session_start_info.hparams.items()}
    return experiment, values


def log_synthetic_run(run_dir: Path, *, codec: str = "none", method: str = "fedclup", world_size: int = 2,
                      metrics: tuple[str, ...] = ("ITR", "acc_personal"), downlink: str | None = None) -> None:
    """Two evaluated rounds through RunLogger, with the counters a real round of `codec` (and
    `downlink`, comm.downlink_codec; None: a config from before the key) has."""
    comm = {"codec": codec, **({} if downlink is None else {"downlink_codec": downlink})}
    logger = RunLogger(run_dir, {"algorithm": {"name": method}, "comm": comm}, world_size=world_size,
                       metrics_measured_on="train")
    kinds = ("all_reduce", "all_gather") if codec.startswith(("qsgd", "topk")) else ("all_reduce",)
    total = Counters()
    for round_num in (0, 1):
        if round_num:
            traffic = Counters(uplink_bytes=40, uplink_bytes_dense=80, downlink_bytes_dense=80,
                               downlink_bytes=80 if downlink in (None, "none") else 40)
            for kind in kinds:
                traffic.add(Counters.collective(kind, payload_bytes=24, wire_bytes_model=24 * (world_size - 1)))
            total.add(traffic)
            ranks = [0.01] * world_size
            logger.log_round_times([RoundTimes(round_num, compute_s=ranks, comm_s=ranks, wait_s=ranks)])
            logger.log_round(round_num, comm={Traffic.TRAIN: traffic, Traffic.TELEMETRY: Counters()}, round_s=0.02)
        logger.log_eval({"round": round_num, "metrics": {name: 0.5 + round_num / 4 for name in metrics},
                         "comm": total.to_dict(), "time": {"train_s": 0.0205 * round_num}})
    summary = {"final": {metric_tag(name, "train"): 0.75 for name in metrics}, "comm": total.to_dict()}  # as written
    logger.finish(summary, hparams={"method": method, "lam": 0.1, "lam_auto": False, "world_size": world_size})
    logger.close()


def test_the_trade_off_groups_come_first_fl_bytes_then_wire_bytes(tmp_path: Path) -> None:
    """TensorBoard sorts tag groups by name and opens the first two on its landing page."""
    log_synthetic_run(tmp_path, world_size=2)
    groups = sorted({tag.split("/")[0] for tag in load(tmp_path).Tags()["scalars"]})
    assert groups[:3] == ["1_tradeoff_fl_bytes", "2_tradeoff_wire_bytes_W2", "3_tradeoff_train_ms"]
    assert "1_tradeoff_fl_bytes/acc_personal/fedclup" in load(tmp_path).Tags()["scalars"]


def test_the_time_trade_off_is_in_milliseconds_and_says_so(tmp_path: Path) -> None:
    log_synthetic_run(tmp_path)
    points = load(tmp_path).Scalars("3_tradeoff_train_ms/acc_personal/fedclup")
    assert [p.step for p in points] == [0, 20]  # 20.5 ms of training
    assert not [tag for tag in load(tmp_path).Tags()["scalars"] if "seconds" in tag]


def comm_tags(run_dir: Path) -> set[str]:
    return {tag for tag in load(run_dir).Tags()["scalars"] if tag.startswith("comm/")}


def test_structurally_zero_counters_are_not_written(tmp_path: Path) -> None:
    log_synthetic_run(tmp_path / "dense", codec="none", world_size=1)
    dense = comm_tags(tmp_path / "dense")
    assert not {tag for tag in dense if "all_gather" in tag or "wire" in tag or "compression" in tag}
    assert not {tag for tag in dense if "all_reduce" in tag}  # one collective type: the totals say it
    assert {"comm/fl_bytes_cum", "comm/uplink_bytes_cum", "comm/payload_bytes"} <= dense
    log_synthetic_run(tmp_path / "topk", codec="topk:0.1", world_size=2)
    topk = comm_tags(tmp_path / "topk")
    assert {"comm/all_gather_payload_bytes_cum", "comm/all_reduce_wire_bytes_model_cum", "comm/compression_ratio",
            "comm/uplink_bytes_dense_cum", "comm/wire_bytes_model"} <= topk
    assert "comm/downlink_bytes_dense_cum" not in dense | topk  # no downlink codec: it is the downlink
    log_synthetic_run(tmp_path / "down", downlink="fp16", world_size=1)
    down = comm_tags(tmp_path / "down")
    assert {"comm/downlink_bytes_dense_cum", "comm/downlink_bytes_cum", "comm/downlink_bytes"} <= down
    assert "comm/uplink_bytes_dense_cum" not in down
    log_synthetic_run(tmp_path / "local", method="local", world_size=2)
    # LocalTrain sends nothing: only the trade-off's byte axes, at 0
    assert comm_tags(tmp_path / "local") == {"comm/fl_bytes_cum", "comm/wire_bytes_model_cum"}


def test_every_custom_scalar_chart_has_data_and_the_wire_view_names_w(tmp_path: Path) -> None:
    """An image run has no ITR/ATR: no chart for them, and no chart matches nothing."""
    log_synthetic_run(tmp_path, metrics=("acc_personal", "acc_global"), world_size=2)
    events = load(tmp_path)
    categories = layout(events).category
    tags = events.Tags()["scalars"]
    for category in categories:
        for chart in category.chart:
            assert any(re.search(pattern, tag) for pattern in chart.multiline.tag for tag in tags), chart.title
    titles = [category.title for category in categories]
    assert not [title for title in titles if "ITR" in title or "ATR" in title]
    assert titles[0].startswith("acc_personal vs FL bytes") and "W = 2" in titles[2]
    assert [chart.title for chart in categories[0].chart] == ["acc_personal: all runs", "acc_personal: fedclup"]


def test_hparams_columns_are_typed_and_the_trade_off_metrics_come_first(tmp_path: Path) -> None:
    log_synthetic_run(tmp_path, world_size=2)
    experiment, values = hparams(load(tmp_path))
    infos = {info.name: info for info in experiment.hparam_infos}
    assert list(infos) == list(HPARAMS)  # every run declares the same columns
    assert infos["lam_auto"].type == api_pb2.DATA_TYPE_BOOL
    assert [value.bool_value for value in infos["lam_auto"].domain_discrete.values] == [False, True]
    assert values["lam_auto"] is False and values["method"] == "fedclup"  # a boolean, not 0.0
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:3] == ["train/acc_personal", "comm/fl_bytes_cum", "comm/wire_bytes_model_cum"]
    last = {tag: load(tmp_path).Scalars(tag)[-1].value for tag in metrics}
    assert last == {"train/acc_personal": 0.75, "comm/fl_bytes_cum": 120, "comm/wire_bytes_model_cum": 24,
                    "eval/ITR": 0.75}


def test_a_real_run_lays_out_only_what_it_logs(tmp_path: Path) -> None:
    """End to end on one process: no wire view (one process moves no bytes), the metric columns
    are the run's own tags, and every chart matches a tag."""
    run_inprocess(tmp_path, *SMALL, "algorithm.lam=auto")
    events = load(tmp_path / "run")
    tags = events.Tags()["scalars"]
    assert not [tag for tag in tags if "wire" in tag]
    experiment, values = hparams(events)
    assert values["lam_auto"] is True
    assert set(values) <= set(HPARAMS)  # every hparam the Trainer logs has its column in every run
    assert {info.name.tag for info in experiment.metric_infos} - set(tags) == {"comm/wire_bytes_model_cum"}
    for category in layout(events).category:
        for chart in category.chart:
            assert any(re.search(pattern, tag) for pattern in chart.multiline.tag for tag in tags), chart.title


def test_an_image_run_has_no_charts_for_the_true_model_errors(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    data = write_learnable_mnist(tmp_path / "mnist", num_train=3000, num_test=100)
    run_inprocess(tmp_path, "data.kind=mnist", f"data.data_dir={data}", "data.num_partitions=30",
                  "data.num_clients=2", "model.kind=logreg", "train.num_rounds=1", "algorithm.local_epochs=1",
                  "algorithm.batch_size=32", "algorithm.local_lr=0.01", "algorithm.global_lr=1/lam")
    events = load(tmp_path / "run")
    charts = [chart for category in layout(events).category for chart in category.chart]
    assert charts and not [chart.title for chart in charts if "ITR" in chart.title or "ATR" in chart.title]
    experiment, _ = hparams(events)
    assert experiment.metric_infos[0].name.tag == "eval/acc_personal"


def digests(directory: Path) -> dict[str, str]:
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def tensorboard_runs(logdir: Path) -> set[str]:
    """The runs TensorBoard finds below `logdir`, as its own loader discovers them."""
    return {Path(run).relative_to(logdir).as_posix() for run in io_wrapper.GetLogdirSubdirectories(str(logdir))}


def test_a_run_set_aside_by_a_sweep_is_kept_but_not_shown(tmp_path: Path) -> None:
    run_inprocess(tmp_path, *SMALL, name="point")
    before = digests(tmp_path / "point")
    kept = set_run_dir_aside(tmp_path / "point", tmp_path / "replaced", label="abcd1234")
    run_inprocess(tmp_path, *SMALL, "train.num_rounds=2", name="point")
    assert tensorboard_runs(tmp_path) == {"point"}
    after = digests(kept)  # every file kept byte for byte, the event files under another name
    assert sorted(after.values()) == sorted(before.values())
    assert [name for name in after if name.startswith("events.out.replaced.")]


def test_an_overwrite_keeps_the_old_run_out_of_sight_and_rolls_back_intact(tmp_path: Path) -> None:
    run_inprocess(tmp_path, *SMALL)
    before = digests(tmp_path / "run")
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=run", *SMALL, "train.num_rounds=2"])
    prepared = prepare_run_dir(cfg, overwrite=True)
    try:
        assert (tmp_path / "run" / ".replaced").is_dir()
        assert tensorboard_runs(tmp_path) == set()  # the old events sit in .replaced/, unseen
        prepared.rollback()
    finally:
        prepared.release()
    assert digests(tmp_path / "run") == before  # every file back under its own name
    assert tensorboard_runs(tmp_path) == {"run"}
