"""Reading finished runs back: labels, results.csv rows, per-round records.

Everything here reads run directories (summary.json, metrics.jsonl, config inside the summary),
never a sweep's stdout, so results.csv can be rebuilt at any time from what is on disk and a
resumed sweep cannot produce duplicate rows: one row per run dir, one run dir per point name.

Damaged files never stop a sweep or a plot: a summary.json that does not parse as a summary
makes its run incomplete (the sweep reruns the point), a malformed metrics.jsonl line is dropped,
a damaged sweep_point.json reads as empty; each says so in one warning line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pfl_dist.exchange.spec import codec_label
from pfl_dist.methods import (
    GD_SCHEDULE,
    METHODS,
    MINIBATCH_SCHEDULE,
    MethodInfo,
    info_from_summary,
    keys_read,
    method_info,
)
from pfl_dist.outputs import metric_name, metric_tag, parse_record, write_bytes_atomic
from pfl_dist.plugins import is_plugin_name
from pfl_dist.rundir import LATER_KEYS, summary_identity
from pfl_dist.tasks import TASKS, task_entry

POINT_FILE = "sweep_point.json"  # what the sweep knows about a run: variant, varied values, wall time
RESULTS_FILE = "results.csv"
# A setting's column: the name of its key, or of the resolved value summary.json "algorithm" holds
# (Algorithm.describe(): a step size 'auto' became a number; FedCLUP's gamma as gamma * lam).
_RESOLVED = {"algorithm.local_lr": "local_lr", "algorithm.personal_lr": "personal_lr",
             "algorithm.global_lr": "global_step_factor"}
_SETTING_KEYS = (*GD_SCHEDULE, *MINIBATCH_SCHEDULE, "algorithm.local_lr",
                 *dict.fromkeys(key for info in METHODS.values() for key in info.reads), "algorithm.client_weights",
                 "comm.codec", "comm.downlink_codec")
_SETTING_COLUMNS = tuple(_RESOLVED.get(key, key.split(".")[1]) for key in _SETTING_KEYS)
_FIXED_COLUMNS = ("name", "variant", "seed", "method", "label", "lam", "lam_used", "R_hat", "data_kind", "R",
                  "num_clients", "sample_fraction", *_SETTING_COLUMNS, "classes_per_client", "num_rounds",
                  "world_size")
_PERSONAL_COLUMNS = ("acc_personal_mean", "acc_personal_p10", "acc_personal_std")
_COMM_COLUMNS = ("wire_bytes_model", "payload_bytes", "uplink_bytes", "downlink_bytes", "fl_bytes",
                 "num_collectives", "wire_bytes_measured", "telemetry_wire_bytes")
_TIME_COLUMNS = ("wall_s", "round_s_median", "point_wall_s")


def method_label(config: dict[str, Any], info: MethodInfo | None = None) -> str:
    """'FedAvg', 'LocalTrain', 'FedCLUP λ=0.5', 'FedCLUP λ=auto', 'FedProx μ=0.1' (the legend).
    `info`: the method's facts as the run recorded them (summary.json "method")."""
    algo = config["algorithm"]
    info = info or method_info(algo["name"])
    lam = algo["lam"]
    lam_text = lam if isinstance(lam, str) else f"{lam:g}"
    if not info.uses_lam:
        return info.label
    return f"{info.label} {info.lam_symbol}={lam_text}"


@dataclass(frozen=True)
class Run:
    """A finished run directory (summary.json exists)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def _written(self) -> dict[str, Any]:
        """summary.json as the run wrote it."""
        summary = read_summary(self.path)
        if summary is None:
            raise ValueError(f"{self.path / 'summary.json'} is not a complete summary")  # is_complete said so
        return summary

    @cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json, with its `final` metrics by name as in `records` ('eval/ITR' -> 'ITR';
        the file keys them by tag: `metric_tags`)."""
        final = final_by_tag(self._written)
        return {**self._written, "final": {metric_name(tag): value for tag, value in final.items()}}

    @cached_property
    def metric_tags(self) -> dict[str, str]:
        """metric name -> its tag, which names where it was measured: {'ITR': 'eval/ITR',
        'acc_personal': 'train/acc_personal', ...}."""
        return {metric_name(tag): tag for tag in final_by_tag(self._written)}

    def tag(self, metric: str) -> str:
        """The tag of one of its metrics ('acc_personal' -> 'eval/acc_personal')."""
        return self.metric_tags.get(metric, metric)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.summary["config"])

    @property
    def identity(self) -> dict[str, Any]:
        """The config plus the input files' digests the run recorded (pfl_dist/rundir.py)."""
        return summary_identity(self.summary) or self.config

    @cached_property
    def point(self) -> dict[str, Any]:
        path = self.path / POINT_FILE
        if not path.exists():
            return {}
        try:
            point = json.loads(path.read_text())
        except (OSError, ValueError):
            point = None
        if not isinstance(point, dict):
            _warn(path, "is damaged; its wall time and variant are left out")
            return {}
        return point

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one record per evaluated round, round 0 first, with the metrics by name
        as in summary.json ('eval/ITR' -> 'ITR'; the file keys them by TensorBoard tag)."""
        path = self.path / "metrics.jsonl"
        lines = path.read_bytes().splitlines() if path.is_file() else []
        records = [parse_record(line) for line in lines if line.strip()]
        if None in records:
            _warn(path, f"has {records.count(None)} malformed line(s); they are left out")
        return [{**r, "metrics": {metric_name(k): v for k, v in r["metrics"].items()}}
                for r in records if r is not None]

    @property
    def method(self) -> str:
        return str(self.config["algorithm"]["name"])

    @cached_property
    def info(self) -> MethodInfo:
        """The method's label, communicates, uses_lam, ... as summary.json recorded them."""
        return info_from_summary(self.summary)

    @property
    def communicates(self) -> bool:
        return self.info.communicates

    @property
    def label(self) -> str:
        return method_label(self.config, self.info)

    def setting(self, key: str) -> Any:
        """A config value by dotted key, e.g. setting('data.R'); a key added to the config after
        the run was made (pfl_dist/rundir.py `LATER_KEYS`) reads as the value every run before it had."""
        section, name = key.split(".")
        values = self.summary["config"][section]
        return values[name] if name in values or key not in LATER_KEYS else LATER_KEYS[key]


# Data kinds whose metrics were measured on the clients' training rows before summary.json keyed
# `final` by tag (then no held-out split existed for them); the others measured on test splits.
LEGACY_TRAIN_KINDS = ("synthetic", "client_files")


def final_by_tag(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json `final` keyed by tag ('eval/ITR', 'train/acc_personal'), as runs write it; a
    summary written before, with bare names, gets the split its data kind measured them on."""
    final = summary.get("final") or {}
    kind = summary.get("config", {}).get("data", {}).get("kind")
    split = "train" if kind in LEGACY_TRAIN_KINDS else "eval"
    return {name if "/" in name else metric_tag(name, split): value for name, value in final.items()}


_SUMMARY_KEYS = ("config", "final", "comm", "time")
_warned: set[tuple[Path, str]] = set()


def _warn(path: Path, problem: str) -> None:
    """One warning line per file and problem, however often the file is read."""
    if (path, problem) not in _warned:
        _warned.add((path, problem))
        print(f"pfl_dist: warning: {path} {problem}", file=sys.stderr, flush=True)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a dict; None (with one warning) when it exists but is not a summary."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), dict) for k in _SUMMARY_KEYS):
        _warn(path, "is damaged; the run counts as incomplete (a sweep reruns it)")
        return None
    return summary


def is_complete(run_dir: Path) -> bool:
    return read_summary(run_dir) is not None


def find_runs(results_dir: Path, names: Iterable[str] | None = None) -> list[Run]:
    """Finished runs below results_dir: the named ones (a sweep's points), else every run dir.

    Without names, results.csv's `name` column selects the runs when it exists, so stray run dirs
    from an older sweep definition in the same folder are not plotted.
    """
    if names is None and (results_dir / RESULTS_FILE).is_file():
        with open(results_dir / RESULTS_FILE, newline="", errors="replace") as f:
            listed = [row.get("name") for row in csv.DictReader(f)]
        if listed and all(isinstance(n, str) and n for n in listed):
            names = [str(n) for n in listed]
        else:
            _warn(results_dir / RESULTS_FILE, "is damaged; every run dir below it is read instead")
    if names is None:
        dirs = sorted(p.parent for p in results_dir.glob("*/summary.json"))
        if is_complete(results_dir):
            dirs.insert(0, results_dir)
    else:
        dirs = [results_dir / n for n in names]
    return [Run(d) for d in dirs if is_complete(d)]


def result_row(run: Run, *, varied: Sequence[str] = ()) -> dict[str, Any]:
    """One results.csv row: identity, the settings the figures need, final metrics, bytes, time."""
    s, cfg = run.summary, run.config
    choice = s.get("lambda_auto") or {}
    uses_lam = run.info.uses_lam  # FedAvg and LocalTrain show no lambda they never used
    row: dict[str, Any] = {
        "name": run.name, "variant": run.point.get("variant"), "seed": cfg["run"]["seed"], "method": run.method,
        "label": run.label, "lam": cfg["algorithm"]["lam"] if uses_lam else None,
        "lam_used": s.get("algorithm", {}).get("lam") if uses_lam else None, "R_hat": choice.get("R_hat"),
        "data_kind": cfg["data"]["kind"], "R": _data_setting(cfg, "data.R"),
        "num_clients": cfg["data"]["num_clients"], "sample_fraction": cfg["algorithm"]["sample_fraction"],
        **settings_used(run),
        "classes_per_client": _data_setting(cfg, "data.classes_per_client"), "num_rounds": cfg["train"]["num_rounds"],
        "world_size": s.get("world_size"),
    }
    row.update({key: run.setting(key) for key in varied})
    row.update({run.tag(name): value for name, value in s["final"].items()})  # named by where measured
    split = run.tag("acc_personal").rpartition("/")[0] or "eval"  # the per-client distribution: the same rows
    row.update({f"{split}/{k}": s.get("personal", {}).get(k) for k in _PERSONAL_COLUMNS})
    comm = s["comm"]
    row.update({k: comm.get(k) for k in _COMM_COLUMNS if k in comm})
    row["fl_bytes"] = comm["uplink_bytes"] + comm["downlink_bytes"]
    row["telemetry_wire_bytes"] = s.get("comm_telemetry", {}).get("wire_bytes_model")
    row.update({"wall_s": s["time"]["wall_s"], "round_s_median": s["time"]["round_s_median"],
                "point_wall_s": run.point.get("point_wall_s")})
    return row


def _data_setting(config: dict[str, Any], key: str) -> Any:
    """A data key's value where the run's task reads it (pfl_dist/tasks: data.R on synthetic data,
    data.classes_per_client on partitioned images), else None (an empty cell)."""
    kind = str(config["data"]["kind"])
    entry = task_entry(kind) if kind in TASKS or is_plugin_name(kind) else None  # a plug-in dataset's too
    return None if entry is not None and key in entry.unused_keys else config["data"].get(key.split(".")[1])


def settings_used(run: Run) -> dict[str, Any]:
    """The settings the run's method read (`methods.keys_read`: its schedule, step sizes, own keys
    and codecs) by column name, step sizes as the algorithm resolved them (summary.json
    "algorithm", where a run recorded them), the uplink and downlink codecs with their parameters; lam has its own
    columns. A setting the method does not read has no entry (an empty cell)."""
    resolved = run.summary.get("algorithm") or {}
    used: dict[str, Any] = {}
    for key in keys_read(run.info, run.config):
        section, name = key.split(".")
        value = run.config.get(section, {}).get(name)
        if key in ("comm.codec", "comm.downlink_codec"):  # none for a run from before the key
            used[name] = codec_label(value if value is not None else "none")
        elif key != "algorithm.lam":
            column = _RESOLVED.get(key, name)
            used[column] = resolved.get(column, value)
    return used


def _columns(rows: list[dict[str, Any]], varied: Sequence[str]) -> list[str]:
    """Fixed identity columns, the varied keys, the metrics (in first-seen order), bytes, time."""
    known = set(_FIXED_COLUMNS) | set(varied) | set(_COMM_COLUMNS) | set(_TIME_COLUMNS)
    metrics: list[str] = []
    for row in rows:
        metrics += [k for k in row if k not in known and k not in metrics]
    return [*_FIXED_COLUMNS, *varied, *metrics, *_COMM_COLUMNS, *_TIME_COLUMNS]


def write_results_csv(path: Path, runs: Sequence[Run], *, varied: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rewrite results.csv from the run dirs (temp file + replace: a reader never sees half)."""
    rows = [result_row(run, varied=varied) for run in runs]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=_columns(rows, varied), extrasaction="ignore")
    writer.writeheader()
    writer.writerows([{k: _cell(v) for k, v in row.items()} for row in rows])
    write_bytes_atomic(path, text.getvalue().encode())
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return "" if value is None else value


