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
- codecs_table.md / .csv: per data set, method and codec (the (uplink, downlink) pair when runs
  vary comm.downlink_codec: 'fp16, down qsgd:4:512', with the downlink bytes and the downlink
  compression beside the uplink's), the final personal and global
  accuracy and where they were measured (eval: test splits; train: the clients' training
  rows), the total wire bytes (the header names W; a W column when the runs' W differ) and
  uplink bytes, the compression ratio (dense uplink / encoded
  uplink), and the wire and uplink bytes at the first evaluated round whose personal accuracy
  reaches the target: the dense (`none`) run's final personal accuracy minus 1 point.
- codecs_pairs_table.md / .csv (runs with a downlink codec): a row per (uplink, downlink) pair,
  columns per data set: the total FL bytes (uplink + downlink; "exact on every seed" when every
  run sent the same), the factor below the dense pair, and per method the FL bytes of the mean
  curve to the target with the round at which each seed's own curve reaches it (`pair_rows`).

With several seeds per codec (the sweep's `seeds`), a curve and a row are the codec's runs over
its seeds: the curve is the mean with a shaded 95% t band, the accuracies are mean ± 95% t
(pfl_dist/sweep/stats.py) marked `D+`/`D−` where the paired interval to the dense codec on the
same seeds excludes 0, the bytes are means, and the target is the dense mean final minus 1 point,
reached by the mean curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from pfl_dist.exchange.spec import CODEC_NAMES
from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.stats import t_interval
from pfl_dist.sweep.style import (
    axes_look,
    byte_label,
    byte_ticks,
    coincidence_note,
    coincident,
    interval_band,
    math_label,
    new_figure,
    save_figure,
    seeds_note,
    value_styles,
)
from pfl_dist.sweep.tradeoff import (
    build_curves,
    final_cell,
    markdown_table,
    record_bytes,
    run_label,
    wire_name,
    world_sizes,
    write_table,
)

TARGET_DROP = 0.01  # the target: the dense run's final personal accuracy minus 1 point
DENSE = "D"  # over several seeds, a codec's mark against the dense codec ('D−': worse than `none`)
METRIC = "acc_personal"


DOWNLINK_MARK = ", down "  # 'fp16, down qsgd:4:512': uplink fp16, downlink qsgd:4:512


def codec_of(run: Run) -> str:
    """The run's (uplink, downlink) codec pair as one label: the uplink codec alone with a dense
    downlink (comm.downlink_codec none, or a run from before the key), else 'UP, down DOWN'."""
    downlink = str(run.setting("comm.downlink_codec"))
    uplink = str(run.setting("comm.codec"))
    return uplink if downlink == "none" else f"{uplink}{DOWNLINK_MARK}{downlink}"


def has_downlink_codec(runs: Sequence[Run]) -> bool:
    return any(str(run.setting("comm.downlink_codec")) != "none" for run in runs)


def _registry_order(codec: str) -> int:
    name = codec.split(":")[0]
    return CODEC_NAMES.index(name) if name in CODEC_NAMES else len(CODEC_NAMES)


def codec_order(codec: str) -> tuple[int, int, str]:
    """Legend order of codecs (and of 'UP, down DOWN' pairs): the registry's order of the uplink
    codec, then of the downlink codec (pfl_dist/exchange/spec.py `CODECS`: dense first, then by how
    they compress), plug-ins last."""
    uplink, _, downlink = codec.partition(DOWNLINK_MARK)
    return (_registry_order(uplink), _registry_order(downlink or "none"), codec)


def groups(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """(data set, method label) -> its runs, in codec order (uplink, then downlink)."""
    out: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        out.setdefault((str(run.setting("data.kind")), run.label), []).append(run)
    return {key: sorted(members, key=lambda r: codec_order(codec_of(r))) for key, members in sorted(out.items())}


def reached(run: Run, target: float) -> dict[str, Any] | None:
    """The first evaluated record whose personal accuracy is >= target."""
    return next((r for r in run.records if METRIC in r["metrics"] and r["metrics"][METRIC] >= target), None)


def by_codec(members: Sequence[Run]) -> dict[str, list[Run]]:
    """codec (the (uplink, downlink) pair, `codec_of`) -> its runs (one per seed), in codec order."""
    out: dict[str, list[Run]] = {}
    for run in sorted(members, key=lambda r: codec_order(codec_of(r))):
        out.setdefault(codec_of(run), []).append(run)
    return out


def downlink_cells(comm: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The downlink columns of a table with a downlink codec: the mean downlink bytes and the
    downlink codec's compression (dense downlink / downlink; a run from before
    `downlink_bytes_dense` received the dense model: 1.0x)."""
    downlink = fmean(c["downlink_bytes"] for c in comm)
    dense = fmean(c.get("downlink_bytes_dense", c["downlink_bytes"]) for c in comm)
    return {"downlink bytes": format_bytes(downlink), "downlink compression": f"{dense / downlink:.1f}x"
            if downlink else ""}


def _seed_rows(data: str, method: str, members: Sequence[Run], *, wire: str, sizes: tuple[int, ...],
               downlink: bool) -> list[dict[str, Any]]:
    """The rows of one (data set, method) whose codecs ran several seeds: accuracies as mean ± 95% t
    over the seeds, marked 'D+'/'D−' where the paired interval to the dense codec (`none`) on the
    same seeds excludes 0; bytes as means; the target the dense mean final minus 1 point, reached
    by the mean curve."""
    codecs = by_codec(members)
    cells: dict[str, dict[str, Any]] = {codec: {} for codec in codecs}
    dense_final = None
    keys = ["comm.codec", "comm.downlink_codec"]  # a curve per (uplink, downlink) pair
    for metric in (METRIC, "acc_global"):
        if not all(metric in r.summary["final"] for r in members):
            continue
        curves = {codec_of(next(r for r in members if run_label(r, keys) == c.label)): c
                  for c in build_curves(members, metric=metric, kind="fl", label_keys=keys)}
        dense = curves.get("none")
        references = {DENSE: ("codec=none", dense)} if dense is not None else {}
        for codec, curve in curves.items():
            cells[codec][metric] = final_cell(curve, references, metric=metric)
            cells[codec][f"{metric} curve"] = curve
        if metric == METRIC and dense is not None and dense.final is not None:
            dense_final = dense.final.mean
    target = dense_final - TARGET_DROP if dense_final is not None else None
    rows = []
    for codec, runs_of in codecs.items():
        comm = [r.summary["comm"] for r in runs_of]
        uplink, dense_up = fmean(c["uplink_bytes"] for c in comm), fmean(c["uplink_bytes_dense"] for c in comm)
        mean_curve = cells[codec].get(f"{METRIC} curve")
        at = None
        if mean_curve is not None and target is not None:
            at = next((t for t, v in zip(mean_curve.rounds, mean_curve.values, strict=True) if v >= target), None)
        at_records = [next(rec for rec in r.records if rec["round"] == at) for r in runs_of] if at is not None else []
        run = runs_of[0]
        rows.append({
            "data": data, "method": method, "codec": codec,
            **({"W": ", ".join(str(r.summary.get("world_size")) for r in runs_of[:1])} if len(sizes) > 1 else {}),
            "measured on": run.tag(METRIC).rpartition("/")[0] or "eval",
            "final acc_personal": cells[codec].get(METRIC), "final acc_global": cells[codec].get("acc_global"),
            wire: format_bytes(fmean(c["wire_bytes_model"] for c in comm)),
            "uplink bytes": format_bytes(uplink),
            "compression": f"{dense_up / uplink:.1f}x" if uplink else "",
            **(downlink_cells(comm) if downlink else {}),
            "collectives/round": comm[0]["num_collectives"] // max(1, run.summary["num_rounds_completed"]),
            "target": f"{run.tag(METRIC)} >= {target:.4g}" if target is not None else "no dense run",
            f"{wire} to target": (f"{format_bytes(fmean(rec['comm']['wire_bytes_model'] for rec in at_records))} "
                                  f"(round {at})" if at_records else "not reached"),
            "uplink to target": format_bytes(fmean(rec["comm"]["uplink_bytes"] for rec in at_records))
            if at_records else "",
        })
    return rows


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """A row per (uplink, downlink) codec pair (`codec_of`: 'fp16, down qsgd:4:512'); when some run
    has a downlink codec, downlink bytes and the downlink compression beside the uplink's.
    Wire bytes are named with the world size they were modelled for ('wire bytes (W=2)'); runs
    of different world sizes get a W column. A (data set, method) whose codecs ran several seeds
    gets a row per codec over its seeds (`_seed_rows`); with one seed a row per run, as recorded."""
    sizes = world_sizes(runs)
    wire = wire_name(sizes)
    downlink = has_downlink_codec(runs)  # then a row per (uplink, downlink) pair, with downlink columns
    rows = []
    for (data, method), members in groups(runs).items():
        if any(len(v) > 1 for v in by_codec(members).values()):
            rows += _seed_rows(data, method, members, wire=wire, sizes=sizes, downlink=downlink)
            continue
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
                **(downlink_cells([comm]) if downlink else {}),
                "collectives/round": comm["num_collectives"] // max(1, run.summary["num_rounds_completed"]),
                "target": f"{run.tag(METRIC)} >= {target:.4g}" if target is not None else "no dense run",
                f"{wire} to target": (f"{format_bytes(hit['comm']['wire_bytes_model'])} (round {hit['round']})"
                                      if hit else "not reached"),
                "uplink to target": format_bytes(hit["comm"]["uplink_bytes"]) if hit else "",
            })
    return rows


def fl_bytes(record: dict[str, Any]) -> float:
    return float(record_bytes(record, "fl"))


def _seeds_reaching(runs_of: Sequence[Run], target: float) -> str:
    """Per seed (ascending), the round at which that seed's own curve first reaches `target`
    ('–': never): 'seeds 0, 1, 2: rounds 6, 4, –'."""
    ordered = sorted(runs_of, key=lambda r: int(r.config["run"]["seed"]))
    rounds = [reached(r, target) for r in ordered]
    return (f"seeds {', '.join(str(r.config['run']['seed']) for r in ordered)}: rounds "
            + ", ".join(str(hit["round"]) if hit else "–" for hit in rounds))


def _exact_or_mean(values: Sequence[float]) -> str:
    """Bytes that are the same on every run: that value; else their mean and range."""
    if len(set(values)) == 1:
        return format_bytes(values[0]) + (" (exact on every seed)" if len(values) > 1 else "")
    return f"{format_bytes(fmean(values))} (mean; {format_bytes(min(values))}-{format_bytes(max(values))})"


def pair_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The FL bytes (uplink + downlink) of each (uplink, downlink) pair, a row per pair and columns
    per data set: the whole run's total (the same for every method and seed when the bytes are
    counted, not sampled: 'exact on every seed'; else the mean and the range), the factor below
    the dense pair, and per method the FL bytes of the mean curve over seeds at its first evaluation
    at or above the target (the dense pair's mean final personal accuracy minus 1 point, as in the
    codec table) with, for each seed, the round at which its own curve first reaches that same
    target ('–': never): the seed-to-seed spread of 'to target' is the spread of that round."""
    table: dict[str, dict[str, Any]] = {}
    for (data, method), members in groups(runs).items():
        codecs = by_codec(members)
        curves = {codec: build_curves(runs_of, metric=METRIC, kind="fl")[0] for codec, runs_of in codecs.items()}
        dense = curves.get("none")
        target = dense.final.mean - TARGET_DROP if dense is not None and dense.final is not None else None
        dense_total = fmean(fl_bytes({"comm": r.summary["comm"]}) for r in codecs.get("none", []) or members)
        for codec, runs_of in codecs.items():
            row = table.setdefault(codec, {"pair (up, down)": codec})
            totals = [fl_bytes({"comm": r.summary["comm"]}) for r in runs_of]
            row.setdefault(f"{data} totals", []).extend(totals)
            row[f"{data} vs dense"] = f"{dense_total / fmean(totals):.1f}x" if dense is not None else ""
            if target is None:
                row[f"{data} {method} to target"] = "no dense run"
                continue
            curve = curves[codec]
            at = next((t for t, v in zip(curve.rounds, curve.values, strict=True) if v >= target), None)
            mean_text = (f"{format_bytes(curve.num_bytes[curve.rounds.index(at)])} (round {at})" if at is not None
                         else "not reached")
            row[f"{data} {method} to target"] = f"{mean_text}; {_seeds_reaching(runs_of, target)}"
    rows = []
    for codec in sorted(table, key=codec_order):
        row = table[codec]
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key.endswith(" totals"):
                out[key.replace(" totals", " total")] = _exact_or_mean(value)
            else:
                out[key] = value
        rows.append(out)
    return rows


def write_pair_table(runs: Sequence[Run], *, stem: Path) -> tuple[str, tuple[Path, Path]]:
    rows = pair_rows(runs)
    return markdown_table(rows), write_table(rows, stem=stem)


def write_codec_table(runs: Sequence[Run], *, stem: Path) -> tuple[str, tuple[Path, Path]]:
    rows = table_rows(runs)
    return markdown_table(rows), write_table(rows, stem=stem)


@dataclass(frozen=True)
class CodecCurve:
    """A codec's personal accuracy against cumulative bytes: the mean over its seeds at the rounds
    all of them evaluated after their first byte (a log axis has no 0), and the 95% t band (None
    with one seed)."""

    codec: str
    xs: list[float]
    ys: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


def _panels(runs: Sequence[Run], kind: str) -> dict[tuple[str, str], list[CodecCurve]]:
    """(data set, method label) -> a CodecCurve per codec with bytes to draw."""
    panels: dict[tuple[str, str], list[CodecCurve]] = {}
    for (data, method), members in groups(runs).items():
        for codec, runs_of in by_codec(members).items():
            per_run = [{r["round"]: r for r in run.records if METRIC in r["metrics"] and record_bytes(r, kind) > 0}
                       for run in runs_of]
            common = sorted(set.intersection(*(set(p) for p in per_run)))
            if not common:
                continue
            stats = [t_interval([p[t]["metrics"][METRIC] for p in per_run]) for t in common]
            banded = len(runs_of) > 1
            panels.setdefault((data, method), []).append(CodecCurve(
                codec, [fmean(record_bytes(p[t], kind) for p in per_run) for t in common], [e.mean for e in stats],
                [e.low for e in stats] if banded else None, [e.high for e in stats] if banded else None))
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
        for curve in curves:
            ax.plot(curve.xs, curve.ys, ms=4, label=f"codec={curve.codec}", **styles[curve.codec].line(len(curve.xs)))
            interval_band(ax, curve.xs, curve.low, curve.high, styles[curve.codec].color, crowd=len(curves))
        for run in silent.get(data, []):
            ax.axhline(run.summary["final"][METRIC], color="0.35", linestyle=":",
                       label=f"{math_label(run.label)} (sends nothing)")
        ax.set_title(f"{data}: {math_label(method)}", fontsize=10)
        ax.set_xlabel(byte_label(f"{axis_label}, log scale"))
        ax.set_ylabel("personal accuracy (fraction correct)")
        byte_ticks(ax, "x", log=True)
        axes_look(ax)
        coincidence_note(ax, coincident([(f"codec={c.codec}", c.xs, c.ys) for c in curves]))
    for row, col in {(r, c) for r in range(len(datasets)) for c in range(columns)} - used:
        axes[row][col].remove()  # a data set with fewer methods than another: no empty frame
    counts = [len(v) for members in groups(runs).values() for v in by_codec(members).values()]
    fig.suptitle(f"update codecs: personal accuracy vs {title} (a point per evaluated round)" + seeds_note(counts),
                 fontsize=11)
    return save_figure(fig, path, columns=8)
