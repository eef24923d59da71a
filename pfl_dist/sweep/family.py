"""The personalized-FL family on one byte ledger: a table and a figure from finished runs.

    python -m pfl_dist.sweep.family RESULTS_DIR [--out DIR] [--fraction 0.95]

Reads each run's summary.json and metrics.jsonl (no torch) and writes to DIR (default RESULTS_DIR):
- family_table.md / .csv: per method (its label as the run recorded it), where the accuracies
  were measured (`measured_on`: eval = test splits), the final personal accuracy
  (sample-weighted), the per-client personal accuracy distribution (mean over clients,
  10th percentile, std), the global accuracy where the method defines a global model, the total
  uplink and downlink bytes, and the uplink bytes at the first evaluation whose personal accuracy
  reaches `fraction` x the best final personal accuracy of all runs ("never" if it does not;
  0 for a method that sends nothing);
- family.png: personal accuracy vs cumulative uplink bytes (log axis, KB/MB/GB ticks), one curve
  per method (a method that sends nothing is a horizontal line at its final accuracy).

With several seeds per method (a sweep's `seeds`), a row and a curve are the method's runs over
its seeds: the accuracies are mean ± 95% t interval (pfl_dist/sweep/stats.py), marked where the
paired interval to FedAvg, LocalTrain or FedCLUP on the same seeds excludes 0 (a note under the
table says how), the curve is the mean with a shaded band, and the bytes to the target are the
mean curve's. With one seed per method everything is as the run recorded it.

A tuned sweep's out dir (its sweep file has `tune`: pfl_dist/sweep/tuning.py) gets tuning.md/.csv
too, and the table and figure show only each method's pick (picked on the validation rows, never
on test metrics), named with it: `Ditto (λ=0.5, picked from 0.1/0.5/2)`.

`python -m pfl_dist.plot RESULTS_DIR` writes the same two files (with its --prefix) when the runs
compare FAMILY_METHODS or more methods and vary none of the settings it draws on an axis.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from pfl_dist.errors import ConfigError, OneLineParser
from pfl_dist.outputs import format_bytes, write_bytes_atomic
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.stats import t_interval
from pfl_dist.sweep.style import (
    BAND_GID,
    axes_look,
    band_alpha,
    byte_label,
    byte_ticks,
    coincidence_note,
    coincident,
    interval_band,
    math_label,
    method_styles,
    new_figure,
    save_figure,
    seeds_note,
)
from pfl_dist.sweep.tradeoff import Final, build_curves, csv_row, final_cell, interval_note, references_in
from pfl_dist.sweep.tuning import select, tune_of, tuned_runs, tuning_markdown, write_tuning

FAMILY_METHODS = 4  # runs of this many methods or more are a family comparison: pfl_dist.plot draws it too
COLUMNS = ("method", "measured_on", "acc_personal", "acc_personal_mean", "acc_personal_p10", "acc_personal_std",
           "acc_global", "uplink_bytes", "downlink_bytes", "uplink_bytes_to_target")


def bytes_to_target(run: Run, target: float) -> int | None:
    for record in run.records:
        if record["metrics"].get("acc_personal", -1.0) >= target:
            return int(record["comm"]["uplink_bytes"]) if run.communicates else 0
    return None


def by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs of each method label (one per seed), in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


@dataclass(frozen=True)
class SeedCurve:
    """A method's personal accuracy per evaluated round (> 0) over its seeds: the mean, its 95% t
    band (None with one seed) and the mean cumulative uplink bytes at each round."""

    label: str
    uplink: list[float]
    mean: list[float]
    low: list[float] | None
    high: list[float] | None
    seeds: int


def seed_curve(label: str, members: Sequence[Run]) -> SeedCurve:
    per_run = [{rec["round"]: rec for rec in run.records if rec["round"] > 0 and "acc_personal" in rec["metrics"]}
               for run in members]
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    stats = [t_interval([p[t]["metrics"]["acc_personal"] for p in per_run]) for t in common]
    banded = len(members) > 1 and bool(common)
    return SeedCurve(label=label, uplink=[fmean(float(p[t]["comm"]["uplink_bytes"]) for p in per_run) for t in common],
                     mean=[e.mean for e in stats], low=[e.low for e in stats] if banded else None,
                     high=[e.high for e in stats] if banded else None, seeds=len(members))


def _mean_bytes_to_target(members: Sequence[Run], target: float) -> float | None:
    """The mean curve's uplink bytes at its first evaluation at or above target (0: sends nothing)."""
    curve = seed_curve(members[0].label, members)
    reached = next((up for up, acc in zip(curve.uplink, curve.mean, strict=True) if acc >= target), None)
    final = fmean(r.summary["final"]["acc_personal"] for r in members)
    if not members[0].communicates:
        return 0 if final >= target or reached is not None else None
    return reached


def table_rows(runs: Sequence[Run], *, fraction: float) -> tuple[list[dict[str, Any]], float]:
    """A row per method label. With one run per label its values as recorded; with several seeds
    per label, the accuracies as mean ± 95% t interval over the seeds (Final cells, marked where
    the paired interval to FedAvg, LocalTrain or FedCLUP on the same seeds excludes 0), the other
    columns as means, and the bytes to the target those of the mean curve."""
    groups = by_label(runs)
    target = fraction * max(fmean(r.summary["final"]["acc_personal"] for r in members) for members in groups.values())
    cells: dict[str, dict[str, Any]] = {}
    for metric in ("acc_personal", "acc_global") if any(len(m) > 1 for m in groups.values()) else ():
        members = [r for r in runs if metric == "acc_personal" or r.info.global_model]
        curves = build_curves(members, metric=metric, kind="fl") if members else []
        references = references_in(curves)
        for curve in curves:
            cells.setdefault(curve.label, {})[metric] = final_cell(curve, references, metric=metric)
    rows = []
    for label, members in groups.items():
        run = members[0]
        if len(members) == 1:
            final, personal, comm = run.summary["final"], run.summary.get("personal", {}), run.summary["comm"]
            rows.append({
                "method": run.label, "measured_on": run.tag("acc_personal").rpartition("/")[0] or "eval",
                "acc_personal": final["acc_personal"],
                **{k: personal.get(k) for k in ("acc_personal_mean", "acc_personal_p10", "acc_personal_std")},
                "acc_global": final.get("acc_global") if run.info.global_model else None,
                "uplink_bytes": comm["uplink_bytes"], "downlink_bytes": comm["downlink_bytes"],
                "uplink_bytes_to_target": bytes_to_target(run, target),
            })
            continue
        personal = [r.summary.get("personal", {}) for r in members]
        rows.append({
            "method": label, "measured_on": run.tag("acc_personal").rpartition("/")[0] or "eval",
            "acc_personal": cells[label]["acc_personal"],
            **{k: fmean(p[k] for p in personal) if all(p.get(k) is not None for p in personal) else None
               for k in ("acc_personal_mean", "acc_personal_p10", "acc_personal_std")},
            "acc_global": cells[label].get("acc_global") if run.info.global_model else None,
            "uplink_bytes": fmean(r.summary["comm"]["uplink_bytes"] for r in members),
            "downlink_bytes": fmean(r.summary["comm"]["downlink_bytes"] for r in members),
            "uplink_bytes_to_target": _mean_bytes_to_target(members, target),
        })
    return rows, target


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "never" if key == "uplink_bytes_to_target" else "-"
    if isinstance(value, Final):
        return value.text(".3f")
    if key.endswith("bytes") or key.endswith("_to_target"):
        return format_bytes(int(value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], *, target: float, fraction: float) -> str:
    """The accuracies are named by the rows they were measured on ('eval': test splits, 'train':
    the clients' training rows); a column says so only when the runs differ."""
    splits = list(dict.fromkeys(row["measured_on"] for row in rows))
    on = f" ({splits[0]})" if len(splits) == 1 else ""
    columns = [k for k in COLUMNS if k != "measured_on" or len(splits) > 1]
    head = ["method", *(["measured on"] if len(splits) > 1 else []), f"personal acc{on}", "mean over clients", "p10",
            "std", f"global acc{on}", "uplink", "downlink", f"uplink to {fraction:g} x best ({target:.3f})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(k, row[k]) for k in columns) + " |" for row in rows]
    note = interval_note(rows)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def figure(runs: Sequence[Run], path: Path) -> Path:
    """Personal accuracy vs cumulative uplink bytes (log axis, KB/MB/GB ticks), a curve per method:
    with several seeds its mean and a shaded 95% t band over the seeds (pfl_dist/sweep/stats.py)."""
    styles = method_styles([(r.label, r.method, False) for r in runs],
                           families={r.method: (r.info.colors, r.info.marker) for r in runs})
    fig, axes = new_figure(1, 1, width=7.5, height=4.8)
    ax = axes[0][0]
    drawn = []
    groups = by_label(runs)
    for label, members in groups.items():
        style, run = styles[label], members[0]
        if run.communicates:
            curve = seed_curve(label, members)
            ax.plot(curve.uplink, curve.mean, markersize=5, label=math_label(label), **style.line(len(curve.uplink)))
            interval_band(ax, curve.uplink, curve.low, curve.high, style.color, crowd=len(groups))
            drawn.append((label, curve.uplink, curve.mean))
        else:
            finals = t_interval([r.summary["final"]["acc_personal"] for r in members])
            ax.axhline(finals.mean, color=style.color, linestyle=":", label=math_label(label) + " (sends nothing)")
            if finals.half_width is not None:
                ax.axhspan(finals.low, finals.high, color=style.color, alpha=band_alpha(len(groups)), linewidth=0,
                           gid=BAND_GID)
    note = seeds_note([len(members) for members in groups.values()]).strip()
    if note:
        ax.set_title(note, fontsize=9)
    byte_ticks(ax, "x", log=True)
    ax.set_xlim(right=max(float(r.summary["comm"]["uplink_bytes"]) for r in runs) * 1.3)
    ax.set_xlabel(byte_label("cumulative uplink bytes (all clients; the same for any world size)"))
    ax.set_ylabel("personal accuracy (fraction correct)")
    axes_look(ax)
    coincidence_note(ax, coincident(drawn))
    return save_figure(fig, path)


def write_family(runs: Sequence[Run], out: Path, *, prefix: str = "", fmt: str = "png",
                 fraction: float = 0.95) -> tuple[Path, Path]:
    """<prefix>family_table.md/.csv and <prefix>family.<fmt> in `out`: (figure, markdown table)."""
    out.mkdir(parents=True, exist_ok=True)
    rows, target = table_rows(runs, fraction=fraction)
    table = out / f"{prefix}family_table.md"
    write_bytes_atomic(table, markdown(rows, target=target, fraction=fraction).encode())
    flat = [csv_row(row) for row in rows]  # a mean ± interval cell: its mean, 'KEY ci95' and 'KEY marks'
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys([*COLUMNS, *(k for row in flat for k in row)])))
    writer.writeheader()
    writer.writerows(flat)
    write_bytes_atomic(out / f"{prefix}family_table.csv", text.getvalue().encode())
    return figure(runs, out / f"{prefix}family.{fmt}"), table


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="pfl_dist.sweep.family", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fraction", type=float, default=0.95)
    args = parser.parse_args(argv)
    runs = find_runs(args.results_dir)
    if not runs:
        print(f"pfl_dist: error: no finished runs under {args.results_dir}", flush=True)
        return 2
    out = args.out or args.results_dir
    try:
        spec = tune_of(args.results_dir)
    except ConfigError as err:
        print(f"pfl_dist: error: {err}", file=sys.stderr, flush=True)
        return 2
    if spec is not None:  # a tuned sweep: the picks' table, and the grid with each pick beside it
        picks = select(runs, spec)
        out.mkdir(parents=True, exist_ok=True)
        print(tuning_markdown(picks, spec), end="")
        print(f"wrote {write_tuning(out, picks, spec)} (and .csv)\n")
        runs = tuned_runs(args.results_dir, runs)
        if not runs:
            print(f"pfl_dist: error: no method of {args.results_dir} has a grid value finished on every seed",
                  flush=True)
            return 2
    path, table = write_family(runs, out, fraction=args.fraction)
    print(table.read_text(), end="")
    print(f"wrote {table}, {table.with_suffix('.csv')}, {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
