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

`python -m pfl_dist.plot RESULTS_DIR` writes the same two files (with its --prefix) when the runs
compare FAMILY_METHODS or more methods and vary none of the settings it draws on an axis.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfl_dist.errors import OneLineParser
from pfl_dist.outputs import format_bytes, write_bytes_atomic
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.style import (
    axes_look,
    byte_label,
    byte_ticks,
    coincidence_note,
    coincident,
    math_label,
    method_styles,
    new_figure,
    save_figure,
)

FAMILY_METHODS = 4  # runs of this many methods or more are a family comparison: pfl_dist.plot draws it too
COLUMNS = ("method", "measured_on", "acc_personal", "acc_personal_mean", "acc_personal_p10", "acc_personal_std",
           "acc_global", "uplink_bytes", "downlink_bytes", "uplink_bytes_to_target")


def bytes_to_target(run: Run, target: float) -> int | None:
    for record in run.records:
        if record["metrics"].get("acc_personal", -1.0) >= target:
            return int(record["comm"]["uplink_bytes"]) if run.communicates else 0
    return None


def table_rows(runs: Sequence[Run], *, fraction: float) -> tuple[list[dict[str, Any]], float]:
    target = fraction * max(r.summary["final"]["acc_personal"] for r in runs)
    rows = []
    for run in runs:
        final, personal, comm = run.summary["final"], run.summary.get("personal", {}), run.summary["comm"]
        rows.append({
            "method": run.label, "measured_on": run.tag("acc_personal").rpartition("/")[0] or "eval",
            "acc_personal": final["acc_personal"],
            **{k: personal.get(k) for k in ("acc_personal_mean", "acc_personal_p10", "acc_personal_std")},
            "acc_global": final.get("acc_global") if run.info.global_model else None,
            "uplink_bytes": comm["uplink_bytes"], "downlink_bytes": comm["downlink_bytes"],
            "uplink_bytes_to_target": bytes_to_target(run, target),
        })
    return rows, target


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "never" if key == "uplink_bytes_to_target" else "-"
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
    return "\n".join(lines) + "\n"


def figure(runs: Sequence[Run], path: Path) -> Path:
    """Personal accuracy vs cumulative uplink bytes (log axis, KB/MB/GB ticks), a curve per method."""
    styles = method_styles([(r.label, r.method, False) for r in runs],
                           families={r.method: (r.info.colors, r.info.marker) for r in runs})
    fig, axes = new_figure(1, 1, width=7.5, height=4.8)
    ax = axes[0][0]
    drawn = []
    for run in runs:
        style = styles[run.label]
        if run.communicates:
            records = [rec for rec in run.records if rec["round"] > 0]
            xs = [float(rec["comm"]["uplink_bytes"]) for rec in records]
            ys = [rec["metrics"]["acc_personal"] for rec in records]
            ax.plot(xs, ys, markersize=5, label=math_label(run.label), **style.line(len(xs)))
            drawn.append((run.label, xs, ys))
        else:
            ax.axhline(run.summary["final"]["acc_personal"], color=style.color, linestyle=":",
                       label=math_label(run.label) + " (sends nothing)")
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
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
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
    path, table = write_family(runs, out, fraction=args.fraction)
    print(table.read_text(), end="")
    print(f"wrote {table}, {table.with_suffix('.csv')}, {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
