"""The accuracy-communication trade-off: curves of a metric against cumulative training bytes,
their Pareto front, and "bytes to reach target X" per method; where the runs recorded their
training time (metrics.jsonl `time.train_s`, the rounds' wall clock), also "time to reach target X".

Bytes are the engine's cumulative training counters from metrics.jsonl. The modelled wire bytes
(ring all-reduce) are the default axis; a 1-rank job puts nothing on a wire, so when every
communicating run has zero wire bytes the axis switches to FL-equivalent bytes (uplink +
downlink, what a client-server deployment would send) and the label says so.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.results import Run

LOWER_IS_BETTER = {"ITR", "ATR", "IOR", "AOR", "loss_personal", "loss_global"}
WIRE_AXIS = ("wire", "cumulative training bytes on the wire (modelled ring collectives)")
FL_AXIS = ("fl", "cumulative FL-equivalent training bytes (uplink + downlink)")


@dataclass(frozen=True)
class Curve:
    """One method/lambda in one facet, averaged over seeds at the rounds all seeds evaluated."""

    label: str
    facet: str
    rounds: list[int]
    num_bytes: list[float]
    values: list[float]
    communicates: bool
    seconds: list[float] | None = None  # cumulative training wall-clock seconds, when recorded


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def personal_metric(runs: Sequence[Run]) -> str:
    """ITR (the paper's personal error) on synthetic data, personal accuracy otherwise."""
    return "ITR" if all("ITR" in r.summary["final"] for r in runs) else "acc_personal"


def global_metric(runs: Sequence[Run]) -> str:
    return "ATR" if all("ATR" in r.summary["final"] for r in runs) else "acc_global"


def byte_axis(runs: Sequence[Run]) -> tuple[str, str]:
    """(kind, axis label): wire bytes unless every communicating run put none on a wire."""
    talking = [r for r in runs if r.communicates]
    if talking and all(r.summary["comm"]["wire_bytes_model"] == 0 for r in talking):
        return FL_AXIS
    return WIRE_AXIS


def record_bytes(record: dict[str, Any], kind: str) -> float:
    comm = record["comm"]
    return float(comm["wire_bytes_model"] if kind == "wire" else comm["uplink_bytes"] + comm["downlink_bytes"])


SHORT_KEYS = {"algorithm.num_local_steps": "K", "algorithm.lam": "λ", "data.classes_per_client": "classes"}


def setting_label(run: Run, label_keys: Sequence[str]) -> str:
    """The run's values of varied algorithm settings, e.g. 'K=25' or 'codec=topk:0.01'."""
    return ", ".join(f"{SHORT_KEYS.get(k, k.split('.')[-1])}={format_value(run.setting(k))}" for k in label_keys)


def run_label(run: Run, label_keys: Sequence[str] = ()) -> str:
    """The method label, plus varied algorithm settings that make a run a different curve
    (e.g. 'FedCLUP λ=0.5, K=25' in the local-steps ablation)."""
    return ", ".join([run.label, setting_label(run, label_keys)]) if label_keys else run.label


def build_curves(runs: Sequence[Run], *, metric: str, kind: str, facet_key: str | None = None,
                 label_keys: Sequence[str] = ()) -> list[Curve]:
    """Group runs by (facet value, label) and average their per-round records over seeds."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    facet_order: dict[str, Any] = {}
    for run in runs:
        facet = f"{facet_key.split('.')[-1]}={format_value(run.setting(facet_key))}" if facet_key else ""
        facet_order[facet] = run.setting(facet_key) if facet_key else 0
        groups[(facet, run_label(run, label_keys))].append(run)
    curves = []
    for (facet, label), members in groups.items():
        per_run = [{r["round"]: r for r in run.records if metric in r["metrics"]} for run in members]
        common = sorted(set.intersection(*(set(p) for p in per_run)))
        timed = all("time" in p[t] for p in per_run for t in common)
        curves.append(Curve(
            label=label, facet=facet, rounds=common, communicates=members[0].communicates,
            num_bytes=[statistics.fmean(record_bytes(p[t], kind) for p in per_run) for t in common],
            values=[statistics.fmean(p[t]["metrics"][metric] for p in per_run) for t in common],
            seconds=[statistics.fmean(p[t]["time"]["train_s"] for p in per_run) for t in common] if timed else None))
    return sorted(curves, key=lambda c: facet_order[c.facet])  # numeric facet order; callers order labels


def better(a: float, b: float, *, metric: str) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def pareto_front(curves: Sequence[Curve], *, metric: str) -> list[tuple[float, float]]:
    """Points (bytes, value) no other point beats on both: fewer-or-equal bytes and a better metric.

    Sorted by bytes, this is the staircase of the best value reachable within a byte budget.
    """
    points = sorted(((b, v) for c in curves for b, v in zip(c.num_bytes, c.values, strict=True)),
                    key=lambda p: (p[0], p[1] if metric in LOWER_IS_BETTER else -p[1]))
    front: list[tuple[float, float]] = []
    for num_bytes, value in points:
        if not front or better(value, front[-1][1], metric=metric):
            front.append((num_bytes, value))
    return front


def bytes_to_reach(curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    """(bytes, round) of the first evaluation at or beyond target, None if never reached."""
    return _first_reaching(curve.num_bytes, curve, target, metric=metric)


def seconds_to_reach(curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    """(training seconds, round) of the first evaluation at or beyond target; None if never
    reached or the runs recorded no training time."""
    return None if curve.seconds is None else _first_reaching(curve.seconds, curve, target, metric=metric)


def _first_reaching(xs: Sequence[float], curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    for x, value, round_num in zip(xs, curve.values, curve.rounds, strict=True):
        if value == target or better(value, target, metric=metric):
            return x, round_num
    return None


def default_targets(curves: Sequence[Curve], *, metric: str) -> list[float]:
    """The worst final value (every curve gets there) and the median final value (half do)."""
    finals = [c.values[-1] for c in curves if c.values]
    if not finals:
        return []
    worst = max(finals) if metric in LOWER_IS_BETTER else min(finals)
    median = statistics.median(finals)
    return [worst] if abs(median - worst) <= 1e-12 * max(1.0, abs(worst)) else [worst, median]


def tradeoff_rows(curves: Sequence[Curve], *, metric: str, targets: Sequence[float] | None = None,
                  extra: dict[tuple[str, str], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per curve: final value, total bytes, and bytes/rounds to reach each target.

    Targets are per facet: given ones apply everywhere, default ones come from that facet's curves.
    `extra` adds final values of other metrics keyed by (facet, label).
    """
    rows = []
    for facet in dict.fromkeys(c.facet for c in curves):  # in the curves' (numeric) order
        members = [c for c in curves if c.facet == facet]
        facet_targets = list(targets) if targets else default_targets(members, metric=metric)
        for curve in members:
            row: dict[str, Any] = {"facet": facet, "method": curve.label,
                                   f"final {metric}": curve.values[-1] if curve.values else None}
            row.update((extra or {}).get((facet, curve.label), {}))
            row["total bytes"] = curve.num_bytes[-1] if curve.num_bytes else None
            if curve.seconds is not None:
                row["train time"] = f"{curve.seconds[-1]:.1f} s" if curve.seconds else None
            row["rounds"] = curve.rounds[-1] if curve.rounds else None
            for i, target in enumerate(facet_targets):
                reached = bytes_to_reach(curve, target, metric=metric)
                text = f"{format_bytes(reached[0])} (round {reached[1]})" if reached else "not reached"
                goal = f"{metric} {'<=' if metric in LOWER_IS_BETTER else '>='} {target:.4g}"
                timed = seconds_to_reach(curve, target, metric=metric) if curve.seconds is not None else None
                time_text = f"{timed[0]:.1f} s (round {timed[1]})" if timed else "not reached"
                if targets:  # the same targets everywhere: name them in the header
                    row[f"bytes to {goal}"] = text
                    if curve.seconds is not None:
                        row[f"time to {goal}"] = time_text
                else:  # per-facet targets: a value column and a bytes column per target
                    tag = "AB"[i]
                    row[f"target {tag} ({('worst', 'median')[i]} final)"] = goal
                    row[f"bytes to {tag}"] = text
                    if curve.seconds is not None:
                        row[f"time to {tag}"] = time_text
            rows.append(row)
    return rows


def _text(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "total bytes":
        return format_bytes(float(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table; the facet column is dropped when there is only one facet."""
    if not rows:
        return "(no finished runs)\n"
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "facet" or any(r.get("facet") for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_text(r.get(k), k) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], *, stem: Path) -> tuple[Path, Path]:
    """stem.md (for humans and docs) and stem.csv (for tools)."""
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(markdown_table(rows))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path
