"""Reading finished runs back: labels, results.csv rows, per-round records.

Everything here reads run directories (summary.json, metrics.jsonl, config inside the summary),
never a sweep's stdout, so results.csv can be rebuilt at any time from what is on disk and a
resumed sweep cannot produce duplicate rows: one row per run dir, one run dir per point name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pfl_dist.config import method_uses_lam
from pfl_dist.outputs import write_bytes_atomic

POINT_FILE = "sweep_point.json"  # what the sweep knows about a run: variant, varied values, wall time
RESULTS_FILE = "results.csv"
_METHOD_NAMES = {"fedclup": "FedCLUP", "fedavg": "FedAvg", "fedprox": "FedProx", "local": "LocalTrain"}
_FIXED_COLUMNS = ("name", "variant", "seed", "method", "label", "lam", "lam_used", "R_hat", "data_kind", "R",
                  "num_clients", "sample_fraction", "num_local_steps", "classes_per_client", "num_rounds",
                  "world_size")
_COMM_COLUMNS = ("wire_bytes_model", "payload_bytes", "uplink_bytes", "downlink_bytes", "fl_bytes",
                 "num_collectives", "wire_bytes_measured", "telemetry_wire_bytes")
_TIME_COLUMNS = ("wall_s", "round_s_median", "point_wall_s")


def method_label(config: dict[str, Any]) -> str:
    """'FedAvg', 'LocalTrain', 'FedCLUP λ=0.5', 'FedCLUP λ=auto', 'FedProx μ=0.1' (the legend)."""
    algo = config["algorithm"]
    name = _METHOD_NAMES.get(algo["name"], algo["name"])
    lam = algo["lam"]
    lam_text = lam if isinstance(lam, str) else f"{lam:g}"
    if not method_uses_lam(algo["name"]):
        return name
    return f"{name} μ={lam_text}" if algo["name"] == "fedprox" else f"{name} λ={lam_text}"


@dataclass(frozen=True)
class Run:
    """A finished run directory (summary.json exists)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def summary(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "summary.json").read_text()))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.summary["config"])

    @cached_property
    def point(self) -> dict[str, Any]:
        path = self.path / POINT_FILE
        return dict(json.loads(path.read_text())) if path.exists() else {}

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one record per evaluated round, round 0 first."""
        lines = (self.path / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def method(self) -> str:
        return str(self.config["algorithm"]["name"])

    @property
    def communicates(self) -> bool:
        return self.method != "local"

    @property
    def label(self) -> str:
        return method_label(self.config)

    def setting(self, key: str) -> Any:
        """A config value by dotted key, e.g. setting('data.R')."""
        section, name = key.split(".")
        return self.summary["config"][section][name]


def is_complete(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def find_runs(results_dir: Path, names: Iterable[str] | None = None) -> list[Run]:
    """Finished runs below results_dir: the named ones (a sweep's points), else every run dir.

    Without names, results.csv's `name` column selects the runs when it exists, so stray run dirs
    from an older sweep definition in the same folder are not plotted.
    """
    if names is None and (results_dir / RESULTS_FILE).is_file():
        with open(results_dir / RESULTS_FILE, newline="") as f:
            names = [row["name"] for row in csv.DictReader(f)]
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
    uses_lam = method_uses_lam(run.method)  # FedAvg and LocalTrain show no lambda they never used
    row: dict[str, Any] = {
        "name": run.name, "variant": run.point.get("variant"), "seed": cfg["run"]["seed"], "method": run.method,
        "label": run.label, "lam": cfg["algorithm"]["lam"] if uses_lam else None,
        "lam_used": s.get("algorithm", {}).get("lam") if uses_lam else None, "R_hat": choice.get("R_hat"),
        "data_kind": cfg["data"]["kind"], "R": cfg["data"]["R"],
        "num_clients": cfg["data"]["num_clients"], "sample_fraction": cfg["algorithm"]["sample_fraction"],
        "num_local_steps": cfg["algorithm"]["num_local_steps"],
        "classes_per_client": cfg["data"]["classes_per_client"], "num_rounds": cfg["train"]["num_rounds"],
        "world_size": s.get("world_size"),
    }
    row.update({key: run.setting(key) for key in varied})
    row.update(s["final"])
    comm = s["comm"]
    row.update({k: comm.get(k) for k in _COMM_COLUMNS if k in comm})
    row["fl_bytes"] = comm["uplink_bytes"] + comm["downlink_bytes"]
    row["telemetry_wire_bytes"] = s.get("comm_telemetry", {}).get("wire_bytes_model")
    row.update({"wall_s": s["time"]["wall_s"], "round_s_median": s["time"]["round_s_median"],
                "point_wall_s": run.point.get("point_wall_s")})
    return row


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


