"""What a run shows in TensorBoard: tag names, which counters exist, the custom-scalars layout and
the HParams experiment. `tracking.RunLogger` writes what this module names (docs/ARCHITECTURE.md,
"TensorBoard").

Order. The Time Series page (TensorBoard's landing page) and the Scalars page sort tag groups (a
tag's first path component) by name and open only the first two. So the trade-off groups are
numbered, and come first and open, in the order of their use:
  1_tradeoff_fl_bytes/<metric>/<method>         step = cumulative uplink + downlink bytes (the
                                                FL-equivalent traffic: the same for any world size)
  2_tradeoff_wire_bytes_W<W>/<metric>/<method>  step = cumulative modelled wire bytes of W ranks
                                                (only for W > 1: one process moves no bytes)
  3_tradeoff_train_ms/<metric>/<method>         step = cumulative training wall-clock milliseconds
A TensorBoard step is an int64, so time is counted in milliseconds (the unit is in the name):
whole seconds would collapse a run of 20 ms rounds to a few points. W is in the wire group's name,
so runs at different world sizes never share a wire-byte chart.

Counters. `comm/*` holds what the run's traffic can make nonzero: the FL bytes (`comm/fl_bytes_cum`)
always, the wire bytes for W > 1, the other training counters only for a method that communicates,
the per-collective breakdown only for a codec that uses two collective types (with one it repeats
the totals: `CodecSpec.collectives`), the dense uplink and compression ratio only with a codec,
the dense downlink only with a downlink codec.

Custom scalars. One category per trade-off metric and axis, open for FL bytes and wire bytes,
closed for time; in each, a chart of all runs and a chart per method. TensorBoard colours runs
from a palette of 7 in the order the runs started, and the event files cannot change that; a
method's chart holds only that method's runs (a sweep's lambda or codec grid, which start one
after another), so its colours are distinct up to 7 runs. TensorBoard's layout has no y range: by
default it fits the y axis to the 5-95% quantiles of a chart's points ("Ignore outliers in chart
scaling") after smoothing, which can cut off the best final accuracies: the README gives the
address that turns smoothing off, and says to untick that box.

HParams. TensorBoard shows the experiment config of one run, picked arbitrarily, so every run
writes the same hparam columns (`HPARAMS`, with their domains: `lam_auto` is a boolean), and its
metric columns in trade-off order: final accuracy, FL bytes, wire bytes, then the other metrics
(the first five columns are the ones shown by default). A metric column is the last value of a
per-round tag (`train/acc_personal`, `comm/fl_bytes_cum`), so no extra tags are written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pfl_dist.exchange.spec import parse_codec
from pfl_dist.methods import method_info

TRADEOFF_METRICS = ("acc_personal", "acc_global", "ITR", "ATR")
FL_GROUP = "1_tradeoff_fl_bytes"
TIME_GROUP = "3_tradeoff_train_ms"
FL_BYTES_TAG = "comm/fl_bytes_cum"
WIRE_BYTES_TAG = "comm/wire_bytes_model_cum"
ROUND_COUNTERS = ("payload_bytes", "wire_bytes_model", "uplink_bytes", "downlink_bytes")  # also per round
# The HParams columns and their types (a bool is a true/false column, not 0/1).
HPARAMS: dict[str, type] = {
    "method": str, "lam": float, "lam_auto": bool, "data": str, "R": float, "num_clients": float,
    "num_local_steps": float, "sample_fraction": float, "world_size": float, "seed": float,
}


def wire_group(world_size: int) -> str:
    """The tag group of the wire-byte trade-off at world size W."""
    return f"2_tradeoff_wire_bytes_W{world_size}"


@dataclass(frozen=True)
class Axis:
    """A trade-off x axis: its tag group and how charts name it."""

    key: str  # the record value it is: "fl_bytes", "wire_bytes", "train_ms"
    group: str
    title: str
    closed: bool = False  # its custom-scalars categories start collapsed


@dataclass(frozen=True)
class RunViews:
    """The TensorBoard views of one run, fixed before round 1 by its method, codec and world size."""

    method: str
    world_size: int
    collectives: tuple[str, ...]  # the training collective types it uses; () = it does not communicate
    compressed: bool  # a codec other than none
    downlink_compressed: bool = False  # a comm.downlink_codec other than none

    @classmethod
    def of(cls, config: dict[str, Any], *, world_size: int) -> RunViews:
        method = config["algorithm"]["name"]
        codec = parse_codec(config["comm"]["codec"])
        downlink = parse_codec(config["comm"].get("downlink_codec", "none"), key="comm.downlink_codec")
        return cls(method=method, world_size=world_size, compressed=codec.name != "none",
                   downlink_compressed=downlink.name != "none",
                   collectives=codec.collectives if method_info(method).communicates else ())

    @property
    def axes(self) -> tuple[Axis, ...]:
        wire = Axis("wire_bytes", wire_group(self.world_size),
                    f"wire bytes, W = {self.world_size} (modelled ring traffic: depends on the world size W)")
        return (Axis("fl_bytes", FL_GROUP, "FL bytes (uplink + downlink: the same for any world size)"),
                *((wire,) if self.world_size > 1 else ()),
                Axis("train_ms", TIME_GROUP, "training time (ms, evaluation excluded)", closed=True))

    def tradeoff_tag(self, axis: Axis, metric: str) -> str:
        return f"{axis.group}/{metric}/{self.method}"

    def counter_keys(self) -> tuple[str, ...]:
        """The cumulative training counters written as comm/<key>_cum (see the module doc)."""
        if not self.collectives:
            return ("wire_bytes_model",) if self.world_size > 1 else ()
        keys = ["payload_bytes", "uplink_bytes", "downlink_bytes", "num_collectives", "wire_bytes_measured"]
        keys += ["wire_bytes_model"] if self.world_size > 1 else []
        keys += ["uplink_bytes_dense"] if self.compressed else []
        keys += ["downlink_bytes_dense"] if self.downlink_compressed else []
        if len(self.collectives) > 1:
            fields = ("payload_bytes", "num_collectives", *(("wire_bytes_model",) if self.world_size > 1 else ()))
            keys += [f"{kind}_{name}" for kind in self.collectives for name in fields]
        return tuple(keys)

    def round_counter_keys(self) -> tuple[str, ...]:
        """The training counters also written per round (comm/<key>, step = round)."""
        written = set(self.counter_keys()) if self.collectives else set()
        return tuple(key for key in ROUND_COUNTERS if key in written)

    def tradeoff_points(self, record: dict[str, Any]) -> list[tuple[str, float, int]]:
        """(tag, value, step) of every trade-off point of an evaluation record."""
        comm = record["comm"]
        steps = {"fl_bytes": int(comm["uplink_bytes"] + comm["downlink_bytes"]),
                 "wire_bytes": int(comm["wire_bytes_model"]),
                 "train_ms": round(1000 * record["time"]["train_s"]) if "time" in record else None}
        return [(self.tradeoff_tag(axis, name), record["metrics"][name], step)
                for axis in self.axes if (step := steps[axis.key]) is not None
                for name in TRADEOFF_METRICS if name in record["metrics"]]

    def layout(self, metrics: Iterable[str]) -> Any:
        """The custom-scalars layout for a run that evaluates `metrics` (bare names): one category
        per trade-off metric it produces and axis, holding an all-runs chart and this method's."""
        from tensorboard.plugins.custom_scalar import layout_pb2

        produced = [name for name in TRADEOFF_METRICS if name in set(metrics)]
        categories = [self._category(axis, name) for axis in self.axes for name in produced]
        round_time = _chart("compute / comm / wait (s, mean over ranks)", "^time/(compute|comm|wait)_s$")
        categories.append(layout_pb2.Category(title="round time", closed=True, chart=[round_time]))
        return layout_pb2.Layout(category=categories)

    def _category(self, axis: Axis, name: str) -> Any:
        from tensorboard.plugins.custom_scalar import layout_pb2

        charts = [_chart(f"{name}: all runs", f"^{re.escape(axis.group)}/{name}/")]
        # A method that sends nothing is one column at 0 bytes, shown in the all-runs chart.
        if self.collectives or axis.key == "train_ms":
            charts.append(_chart(f"{name}: {self.method}", f"^{re.escape(self.tradeoff_tag(axis, name))}$"))
        return layout_pb2.Category(title=f"{name} vs {axis.title}", closed=axis.closed, chart=charts)


def _chart(title: str, pattern: str) -> Any:
    """A multiline chart of every run's tags matching `pattern`, one colour per run."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[pattern]))


def hparams_summaries(hparams: dict[str, Any], metric_tags: list[str]) -> list[Any]:
    """The three HParams summaries of a finished run: the experiment config (every run writes the
    same columns, `HPARAMS`, and its metric columns in the given order), this run's values, its end.
    A value not declared in `HPARAMS` still gets a column, typed by its value, after the others;
    a test keeps the Trainer's hparams declared, so that every run has the same columns."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    kinds = {**HPARAMS, **{name: _value_type(value) for name, value in hparams.items() if name not in HPARAMS}}
    experiment = api_pb2.Experiment(hparam_infos=[_hparam_info(name, kind) for name, kind in kinds.items()],
                                    metric_infos=[_metric_info(tag) for tag in metric_tags])
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())  # no group name: one run per row
    for name, value in hparams.items():
        if value is not None:
            _set_value(start.hparams[name], kinds[name], value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [_hparams_summary(metadata.EXPERIMENT_TAG, experiment=experiment),
            _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
            _hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)]


def hparams_metric_tags(tags: list[str]) -> list[str]:
    """The HParams metric columns, given the run's metric tags: final accuracy, FL bytes, wire
    bytes, then the other metrics."""
    first = [tag for tag in tags if tag.endswith("/acc_personal") and not tag.startswith("val/")]
    return [*first, FL_BYTES_TAG, WIRE_BYTES_TAG, *(tag for tag in tags if tag not in first)]


def _hparam_info(name: str, kind: type) -> Any:
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2

    types = {str: api_pb2.DATA_TYPE_STRING, bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64}
    info = api_pb2.HParamInfo(name=name, type=types[kind])
    if kind is bool:  # its two values as a discrete domain: the UI filters them with check boxes
        values = [struct_pb2.Value(bool_value=value) for value in (False, True)]
        info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=values))
    return info


def _value_type(value: Any) -> type:
    """The column type of an undeclared hparam value (bool before int: True is an int)."""
    return bool if isinstance(value, bool) else float if isinstance(value, (int, float)) else str


def _metric_info(tag: str) -> Any:
    from tensorboard.plugins.hparams import api_pb2

    names = {FL_BYTES_TAG: ("FL bytes (uplink + downlink)", "the same for any world size"),
             WIRE_BYTES_TAG: ("wire bytes (W ranks)", "modelled ring traffic: depends on the world size W")}
    display, description = names.get(tag, (f"final {tag}", ""))
    return api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=display, description=description)


def _set_value(target: Any, kind: type, value: Any) -> None:
    """A google.protobuf.Value of the hparam's declared type (a bool stays a bool, not 0/1)."""
    if kind is bool:
        target.bool_value = bool(value)
    elif kind is str:
        target.string_value = str(value)
    else:
        target.number_value = float(value)


def _hparams_summary(tag: str, **content: Any) -> Any:
    """A summary holding one HParamsPluginData field (experiment, session start or end)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**content))
    return Summary(value=[Summary.Value(tag=tag, metadata=data)])


def layout_summary(layout: Any) -> Any:
    """The custom-scalars plugin's summary of a layout (what tensorboard's own `pb` builds with TF)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING
    from tensorboard.plugins.custom_scalar import metadata

    tensor = TensorProto(dtype=DT_STRING, string_val=[layout.SerializeToString()])
    return Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata(),
                                        tensor=tensor)])
