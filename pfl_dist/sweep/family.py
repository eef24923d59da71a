"""The personalized-FL family on one byte ledger: a table and a figure from finished runs.

    python -m pfl_dist.sweep.family RESULTS_DIR [--out DIR] [--fraction 0.95]

Reads each run's summary.json and metrics.jsonl (no torch) and writes to DIR (default RESULTS_DIR):
- family_table.md / .csv: per method (its label as the run recorded it), the final personal
  accuracy (sample-weighted), the per-client personal accuracy distribution (mean over clients,
  10th percentile, std), the global accuracy where the method defines a global model, the total
  uplink and downlink bytes, and the uplink bytes at the first evaluation whose personal accuracy
  reaches `fraction` x the best final personal accuracy of all runs ("never" if it does not;
  0 for a method that sends nothing);
- family.png: personal accuracy vs cumulative uplink bytes, one curve per method (a method that
  sends nothing is a horizontal line at its final accuracy).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pfl_dist.errors import OneLineParser
from pfl_dist.outputs import format_bytes, write_bytes_atomic
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.style import math_label, method_styles

COLUMNS = ("method", "acc_personal", "acc_personal_mean", "acc_personal_p10", "acc_personal_std", "acc_global",
           "uplink_bytes", "downlink_bytes", "uplink_bytes_to_target")


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
            "method": run.label, "acc_personal": final["acc_personal"],
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
    head = ["method", "personal acc", "mean over clients", "p10", "std", "global acc", "uplink", "downlink",
            f"uplink to {fraction:g} x best ({target:.3f})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(k, row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def figure(runs: Sequence[Run], path: Path) -> None:
    styles = method_styles([(r.label, r.method, False) for r in runs],
                           families={r.method: (r.info.colors, r.info.marker) for r in runs})
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    longest = max(float(r.summary["comm"]["uplink_bytes"]) for r in runs)
    for run in runs:
        style = styles[run.label]
        if run.communicates:
            xs = [float(rec["comm"]["uplink_bytes"]) for rec in run.records if rec["round"] > 0]
            ys = [rec["metrics"]["acc_personal"] for rec in run.records if rec["round"] > 0]
            ax.plot(xs, ys, marker=style.marker, color=style.color, label=math_label(run.label), markersize=5)
        else:
            ax.axhline(run.summary["final"]["acc_personal"], color=style.color, linestyle=":",
                       label=math_label(run.label) + " (sends nothing)")
    ax.set_xscale("log")
    ax.set_xlim(right=longest * 1.3)
    ax.set_xlabel("cumulative uplink bytes (all clients)")
    ax.set_ylabel("personal accuracy")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=200)
    write_bytes_atomic(path, buffer.getvalue())


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
    out.mkdir(parents=True, exist_ok=True)
    rows, target = table_rows(runs, fraction=args.fraction)
    write_bytes_atomic(out / "family_table.md", markdown(rows, target=target, fraction=args.fraction).encode())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "family_table.csv", text.getvalue().encode())
    figure(runs, out / "family.png")
    print(markdown(rows, target=target, fraction=args.fraction), end="")
    print(f"wrote {out / 'family_table.md'}, {out / 'family_table.csv'}, {out / 'family.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
