"""The codec study (configs/sweeps/codecs.yaml): accuracy vs cumulative wire bytes, one curve per
codec, and the table of what each codec costs and buys.

Drawn by `python -m pfl_dist.plot RESULTS_DIR` when the runs vary `comm.codec`:
- codecs.png: a row per data set, a column per method; x = cumulative training wire bytes,
  labelled with the world size W they were modelled for (log scale: the codecs span two orders
  of magnitude; FL-equivalent bytes when every run was one process), y = the personal accuracy;
  a point per evaluated round, one curve per codec.
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

from matplotlib import colormaps
from matplotlib.figure import Figure

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.tradeoff import byte_axis, markdown_table, record_bytes, wire_name, world_sizes, write_table

TARGET_DROP = 0.01  # the target: the dense run's final personal accuracy minus 1 point
METRIC = "acc_personal"
_CODEC_ORDER = ("none", "fp16", "bf16", "qsgd", "topk", "randk", "powersgd")


def codec_of(run: Run) -> str:
    return str(run.setting("comm.codec"))


def _order(codec: str) -> tuple[int, str]:
    name = codec.split(":")[0]
    return (_CODEC_ORDER.index(name) if name in _CODEC_ORDER else len(_CODEC_ORDER), codec)


def groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """(data set, method label) -> its runs, in codec order."""
    out: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        out.setdefault((str(run.setting("data.kind")), run.label), []).append(run)
    return {key: sorted(members, key=lambda r: _order(codec_of(r))) for key, members in sorted(out.items())}


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


def plot_codecs(runs: Sequence[Run], path: Path, *, dpi: int) -> Path:
    grouped = groups(runs)
    datasets = list(dict.fromkeys(data for data, _ in grouped))
    # a column per method name (FedCLUP's lambda may differ between data sets)
    methods = list(dict.fromkeys(members[0].method for members in grouped.values()))
    fig = Figure(figsize=(5.5 * len(methods), 3.8 * len(datasets) + 0.9), layout="constrained")
    axes = fig.subplots(len(datasets), len(methods), squeeze=False)
    codecs = sorted({codec_of(r) for r in runs}, key=_order)
    colors = {codec: colormaps["tab10"](i % 10) for i, codec in enumerate(codecs)}
    markers = {codec: "os^vDP*Xh"[i % 9] for i, codec in enumerate(codecs)}  # fp16 and bf16 often overlap
    kind, axis_label = byte_axis(runs, "wire")  # named with W; FL-equivalent bytes when no wire was crossed
    for (data, method), members in grouped.items():
        ax = axes[datasets.index(data)][methods.index(members[0].method)]
        for run in members:
            points = [(record_bytes(r, kind), r["metrics"][METRIC]) for r in run.records
                      if METRIC in r["metrics"] and record_bytes(r, kind) > 0]
            codec = codec_of(run)
            ax.plot([b for b, _ in points], [a for _, a in points], marker=markers[codec], ms=4, label=codec,
                    color=colors[codec], linestyle="--" if codec == "none" else "-")
        ax.set_xscale("log")
        ax.set_title(f"{data}: {method}", fontsize=10)
        ax.set_xlabel(f"{axis_label} (log scale)", fontsize=9)
        ax.set_ylabel("personal accuracy", fontsize=9)
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False, fontsize=8,
               ncol=min(len(handles), 7))
    fig.suptitle("update codecs: personal accuracy vs bytes (a point per evaluated round)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
