"""The codec study (configs/sweeps/codecs.yaml): accuracy vs cumulative bytes, one curve per
codec, and the table of what each codec costs and buys.

Drawn by `python -m pfl_dist.plot RESULTS_DIR` when the runs vary `comm.codec`:
- codecs.png: a row per data set, a panel per method that sent bytes (a method that sends
  nothing, LocalTrain, is a dotted reference line in its data set's panels); x = cumulative FL
  training bytes (uplink + downlink, the same for any world size; log scale with KB/MB ticks: the
  codecs span two orders of magnitude), y = the personal accuracy; a point per evaluated round,
  one curve per codec, each codec with the marker it has in tradeoff.png. Codecs whose curves are
  exactly the same points (fp16 and bf16 on a model they round alike) are named in a note.
- codecs_wire.png: the same against the modelled wire bytes, which depend on the world size W
  (an all_gather codec grows with W): one figure per W (codecs_wire_W2.png, ... when the runs
  differ in W), W in its axis label; none when no run put bytes on a wire (one process).
- codecs_table.md / .csv: per data set, method and codec, the final personal and global
  accuracy and where they were measured (eval: test splits; train: the clients' training
  rows), the total wire bytes (the header names W; a W column when the runs' W differ) and
  uplink bytes, the compression ratio (dense uplink / encoded
  uplink), and the wire and uplink bytes at the first evaluated round whose personal accuracy
  reaches the target: the dense (`none`) run's final personal accuracy minus 1 point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.style import (
    axes_look,
    byte_label,
    byte_ticks,
    coincidence_note,
    coincident,
    math_label,
    new_figure,
    save_figure,
    value_styles,
)
from pfl_dist.sweep.tradeoff import markdown_table, record_bytes, wire_name, world_sizes, write_table

TARGET_DROP = 0.01  # the target: the dense run's final personal accuracy minus 1 point
METRIC = "acc_personal"
_CODEC_ORDER = ("none", "fp16", "bf16", "qsgd", "topk", "randk", "powersgd")


def codec_of(run: Run) -> str:
    return str(run.setting("comm.codec"))


def codec_order(codec: str) -> tuple[int, str]:
    """Legend order of codecs: dense first, then by how they compress (pfl_dist/exchange/)."""
    name = codec.split(":")[0]
    return (_CODEC_ORDER.index(name) if name in _CODEC_ORDER else len(_CODEC_ORDER), codec)


def groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """(data set, method label) -> its runs, in codec order."""
    out: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        out.setdefault((str(run.setting("data.kind")), run.label), []).append(run)
    return {key: sorted(members, key=lambda r: codec_order(codec_of(r))) for key, members in sorted(out.items())}


def reached(run: Run, target: float) -> dict[str, Any] | None:
    """The first evaluated record whose personal accuracy is >= target."""
    return next((r for r in run.records if METRIC in r["metrics"] and r["metrics"][METRIC] >= target), None)


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Wire bytes are named with the world size they were modelled for ('wire bytes (W=2)'); runs
    of different world sizes get a W column."""
    sizes = world_sizes(runs)
    wire = wire_name(sizes)
    rows = []
    for (data, method), members in groups(runs).items():
        dense = next((r for r in members if codec_of(r) == "none"), None)
        target = dense.summary["final"][METRIC] - TARGET_DROP if dense is not None else None
        for run in members:
            comm, final = run.summary["comm"], run.summary["final"]
            hit = reached(run, target) if target is not None else None
            ratio = comm["uplink_bytes_dense"] / comm["uplink_bytes"] if comm.get("uplink_bytes") else None
            rows.append({
                "data": data, "method": method, "codec": codec_of(run),
                **({"W": run.summary.get("world_size")} if len(sizes) > 1 else {}),
                "measured on": run.tag(METRIC).rpartition("/")[0] or "eval",  # test splits, or training rows
                "final acc_personal": final[METRIC], "final acc_global": final.get("acc_global"),
                wire: format_bytes(comm["wire_bytes_model"]),
                "uplink bytes": format_bytes(comm["uplink_bytes"]),
                "compression": f"{ratio:.1f}x" if ratio is not None else "",
                "collectives/round": comm["num_collectives"] // max(1, run.summary["num_rounds_completed"]),
                "target": f"{run.tag(METRIC)} >= {target:.4g}" if target is not None else "no dense run",
                f"{wire} to target": (f"{format_bytes(hit['comm']['wire_bytes_model'])} (round {hit['round']})"
                                      if hit else "not reached"),
                "uplink to target": format_bytes(hit["comm"]["uplink_bytes"]) if hit else "",
            })
    return rows


def write_codec_table(runs: Sequence[Run], *, stem: Path) -> tuple[str, tuple[Path, Path]]:
    rows = table_rows(runs)
    return markdown_table(rows), write_table(rows, stem=stem)


def _panels(runs: Sequence[Run], kind: str) -> dict[tuple[str, str], list[tuple[str, list[float], list[float]]]]:
    """(data set, method label) -> (codec, bytes, personal accuracy) per codec with bytes to draw
    (the evaluated rounds after the first byte: a log axis has no 0)."""
    panels: dict[tuple[str, str], list[tuple[str, list[float], list[float]]]] = {}
    for (data, method), members in groups(runs).items():
        for run in members:
            points = [(record_bytes(r, kind), r["metrics"][METRIC]) for r in run.records
                      if METRIC in r["metrics"] and record_bytes(r, kind) > 0]
            if points:
                panels.setdefault((data, method), []).append(
                    (codec_of(run), [b for b, _ in points], [a for _, a in points]))
    return panels


def _silent(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Data set -> its runs of methods that send nothing (LocalTrain): reference lines, not panels."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        if not run.communicates:
            out.setdefault(str(run.setting("data.kind")), []).append(run)
    return out


def plot_codecs(runs: Sequence[Run], path: Path, *, kind: str, axis_label: str, title: str) -> Path:
    """A panel per (data set, method) that has bytes to draw, a row per data set; x = cumulative
    `kind` bytes on a log axis (KB/MB ticks), a curve per codec in the codec's colour and marker."""
    panels, silent = _panels(runs, kind), _silent(runs)
    datasets = list(dict.fromkeys(data for data, _ in panels))
    columns = max((sum(d == data for d, _ in panels) for data in datasets), default=1)
    fig, axes = new_figure(len(datasets), columns, width=5.5, height=3.8)
    codecs = sorted({codec_of(r) for r in runs if r.communicates}, key=codec_order)
    styles = value_styles(codecs, dashed="none")  # the colours and markers tradeoff.png gives the codecs
    used: set[tuple[int, int]] = set()
    for (data, method), curves in panels.items():
        row = datasets.index(data)
        cell = (row, sum(r == row for r, _ in used))  # a data set's panels from the left
        used.add(cell)
        ax = axes[cell[0]][cell[1]]
        for codec, xs, ys in curves:
            ax.plot(xs, ys, ms=4, label=f"codec={codec}", **styles[codec].line(len(xs)))
        for run in silent.get(data, []):
            ax.axhline(run.summary["final"][METRIC], color="0.35", linestyle=":",
                       label=f"{math_label(run.label)} (sends nothing)")
        ax.set_title(f"{data}: {math_label(method)}", fontsize=10)
        ax.set_xlabel(byte_label(f"{axis_label}, log scale"))
        ax.set_ylabel("personal accuracy (fraction correct)")
        byte_ticks(ax, "x", log=True)
        axes_look(ax)
        coincidence_note(ax, coincident([(f"codec={codec}", xs, ys) for codec, xs, ys in curves]))
    for row, col in {(r, c) for r in range(len(datasets)) for c in range(columns)} - used:
        axes[row][col].remove()  # a data set with fewer methods than another: no empty frame
    fig.suptitle(f"update codecs: personal accuracy vs {title} (a point per evaluated round)", fontsize=11)
    return save_figure(fig, path, columns=8)
