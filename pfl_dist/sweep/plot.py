"""Figures from finished runs: `python -m pfl_dist.plot RESULTS_DIR [--out DIR] [--prefix P] [--target X]
[--format png|pdf|svg]`.

What is drawn follows from what the runs vary (config values in each summary.json):
- data.R varies                      -> stat_error_vs_R.png: final ITR and ATR vs R (the paper's figure)
- algorithm.num_local_steps varies   -> local_steps.png: ITR and ATR per round, one curve per K
- data.classes_per_client varies     -> images_vs_classes.png: personal/global accuracy vs classes
- comm.codec or comm.downlink_codec varies -> codecs.png, codecs_wire.png and codecs_table.md/.csv
                                        (a curve and a row per (uplink, downlink) pair); with a
                                        downlink codec also codecs_pairs_table.md/.csv (each
                                        pair's FL bytes per data set, and the round each seed
                                        reaches the target)
                                        (pfl_dist/sweep/codecs.py)
- 4 or more methods, none of these   -> family.png and family_table.md/.csv (pfl_dist/sweep/family.py)
- none of these settings            -> total_error_vs_rounds.png (synthetic) or accuracy_vs_rounds.png
- always                             -> tradeoff.png: the personal and global metric vs cumulative
  FL training bytes (uplink + downlink: the same for any world size), one curve per method/lambda,
  Pareto front marked (faceted by the varied problem setting; with a varied codec or K, a column
  per method and a curve per value), plus tradeoff_table.md/.csv: final values, total bytes and
  bytes to reach target values;
- runs that put bytes on a wire      -> tradeoff_wire.png: the same against the modelled wire
  bytes, which depend on the world size W; W is in the axis label, and runs of different W are
  drawn in different figures (tradeoff_wire_W2.png, tradeoff_wire_W4.png), never on one axis.
Curves and points are means over seeds; with several seeds a shaded band around each is its 95%
Student t interval over the seeds (pfl_dist/sweep/stats.py), and the title says so.
Every method has one colour family and marker in every figure, byte axes are ticked in KB/MB/GB,
integer axes in integers, curves that are exactly the same points are named in a note
(pfl_dist/sweep/style.py); each figure has one legend, and PNGs are written at 200 dpi (PDF and
SVG on request).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from pfl_dist.config import check_path_text
from pfl_dist.errors import ConfigError, OneLineParser
from pfl_dist.sweep.codecs import codec_order, has_downlink_codec, plot_codecs, write_codec_table, write_pair_table
from pfl_dist.sweep.family import FAMILY_METHODS, write_family
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.stats import Estimate, paired_difference, t_interval
from pfl_dist.sweep.style import (
    BAND_GID,
    DPI,
    Style,
    axes_look,
    band_alpha,
    byte_label,
    byte_ticks,
    coincidence_note,
    coincident,
    integer_ticks,
    interval_band,
    math_label,
    method_styles,
    new_figure,
    save_figure,
    seeds_note,
    value_styles,
)
from pfl_dist.sweep.tradeoff import (
    SHORT_KEYS,
    Curve,
    build_curves,
    byte_axis,
    final_cell,
    global_metric,
    markdown_table,
    paired_series,
    pareto_front,
    personal_metric,
    references_in,
    run_label,
    setting_label,
    tradeoff_rows,
    world_size_warning,
    write_table,
)
from pfl_dist.sweep.tuning import tuned_runs

AXIS_KEYS = ("data.R", "algorithm.num_local_steps", "data.classes_per_client", "comm.codec", "comm.downlink_codec")
FACET_KEYS = ("data.kind", "data.R", "data.classes_per_client")  # problem settings: one panel per value
LABEL_KEYS = ("algorithm.num_local_steps", "comm.codec", "comm.downlink_codec")  # algorithm settings: a curve per value
CODEC_KEYS = ("comm.codec", "comm.downlink_codec")
METRIC_LABELS = {
    "ITR": r"ITR $= \frac{1}{m}\sum_i \|w_i/s_i - W_i^\top\|_F$ (lower is better)",
    "ATR": r"ATR $= \|w_g - \frac{1}{m}\sum_k W_k^\top\|_F$ (lower is better)",
    "acc_personal": r"personal accuracy of the $w_i$ (fraction correct)",
    "acc_global": r"global accuracy of $w_g$ (fraction correct)",
}
SETTING_LABELS = {
    "data.R": r"heterogeneity $R$ (std of the clients' true models)",
    "algorithm.num_local_steps": r"local steps $K$ per round",
    "data.classes_per_client": r"classes per client $c$",
}
FACET_NAMES = {"data.R": "$R$", "data.classes_per_client": "$c$"}
FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class Rendered:
    figures: dict[str, Path]
    metric: str
    axis_label: str
    table_markdown: str
    table_paths: tuple[Path, Path]


# --- which bytes a figure counts (issue 21, point 5) -----------------------------------------
# FL bytes (uplink + downlink, what the clients of a client-server deployment send and receive)
# do not depend on how many processes simulated the clients; the modelled wire bytes do. So the
# default byte axis is FL bytes, and wire bytes are a second view drawn once per world size W,
# its axis label naming W: no figure puts wire bytes of runs with different W on one axis.


@dataclass(frozen=True)
class ByteView:
    kind: str  # tradeoff.record_bytes kind: "fl" or "wire"
    label: str  # the byte axis label (the ticks carry the unit)
    suffix: str  # of the figure's name: "" (FL), "_wire", or "_wire_W4" when the runs differ in W
    title: str  # how the suptitle names the bytes


FL_VIEW = ByteView("fl", "cumulative FL bytes (uplink + downlink; any world size)", "", "FL bytes")


def run_world_size(run: Run) -> int | None:
    """The number of processes that ran `run` (summary.json "world_size"; None when a run from
    before it was recorded lacks it): the accessor every figure reads W through."""
    value = run.summary.get("world_size")
    return int(value) if isinstance(value, int) else None


def wire_views(runs: Sequence[Run]) -> list[tuple[ByteView, list[Run]]]:
    """The wire-bytes views: one per world size whose communicating runs put bytes on a wire
    (none for one-process runs), each with its runs only and W in its axis label and name."""
    by_size: dict[int | None, list[Run]] = defaultdict(list)
    for run in runs:
        by_size[run_world_size(run)].append(run)
    sizes = [w for w, members in by_size.items()
             if any(r.communicates and r.summary["comm"]["wire_bytes_model"] > 0 for r in members)]
    views = []
    for size in sorted(sizes, key=lambda w: -1 if w is None else w):
        ranks = "world size not recorded" if size is None else f"W = {size} rank{'s' if size != 1 else ''}"
        tag = "" if len(sizes) == 1 else f"_W{size if size is not None else 'unknown'}"
        views.append((ByteView("wire", f"cumulative wire bytes (modelled ring collectives, {ranks})", f"_wire{tag}",
                               f"wire bytes at {ranks}" if size is not None else f"wire bytes ({ranks})"),
                      by_size[size]))
    return views


def setting_order(key: str, value: Any) -> Any:
    """How a varied setting's values sort in legends: codecs in codec order, numbers by value."""
    return codec_order(str(value)) if key in ("comm.codec", "comm.downlink_codec") else value


def series_key(run: Run) -> tuple[Any, ...]:
    """Legend order, from the method facts each run recorded: methods that never communicate
    (LocalTrain), then those with a lambda (small ... large, auto last), then the rest; by name
    within a group."""
    lam = run.config["algorithm"]["lam"]
    info = run.info
    group = 0 if not info.communicates else 1 if info.uses_lam else 2
    auto = info.uses_lam and lam == "auto"
    return group, run.method, auto, float(lam) if isinstance(lam, (int, float)) and info.uses_lam else 0.0


def _in_order(runs: Sequence[Run], label_keys: Sequence[str]) -> list[Run]:
    return sorted(runs, key=lambda r: (*series_key(r), *(setting_order(k, r.setting(k)) for k in label_keys)))


def styles(runs: Sequence[Run], label_keys: Sequence[str] = ()) -> dict[str, Style]:
    """The style of every curve label (run_label with label_keys), in legend order (most to least
    personalized): the method's colour family and marker, one shade per curve of the method."""
    ordered = _in_order(runs, label_keys)
    curves = [(run_label(r, label_keys), r.method, r.info.uses_lam and r.config["algorithm"]["lam"] == "auto")
              for r in ordered]
    return method_styles(curves, families={r.method: (r.info.colors, r.info.marker) for r in ordered})


Palette = dict[str, tuple[Style, str]]  # curve label -> its style and its legend text


def palette_of(runs: Sequence[Run], label_keys: Sequence[str]) -> Palette:
    """Every curve's style and legend text, in legend order. Without varied algorithm settings a
    curve is a method (its colour family, `styles`); with them (codec, K), a communicating run's
    curve is drawn in its setting value's colour and marker and named by the value ('codec=fp16'),
    since each panel then holds one method (the panel title names it)."""
    if not label_keys:
        return {label: (style, label) for label, style in styles(runs).items()}
    ordered = _in_order(runs, label_keys)
    by_value = sorted({setting_label(r, label_keys): tuple(setting_order(k, r.setting(k)) for k in label_keys)
                       for r in ordered if r.communicates}.items(), key=lambda item: item[1])
    numeric = all(isinstance(r.setting(k), (int, float)) for r in runs for k in label_keys)
    # the dense codec ('codec=none', 'codec=none, down=none') is the dashed reference
    dense = (", ".join(f"{SHORT_KEYS[k]}=none" for k in label_keys)
             if set(label_keys) <= set(CODEC_KEYS) else None)
    values = value_styles([value for value, _ in by_value], numeric=numeric, dashed=dense)
    method = styles(runs, label_keys)
    return {run_label(r, label_keys): (values[setting_label(r, label_keys)], setting_label(r, label_keys))
            if r.communicates else (method[run_label(r, label_keys)], run_label(r, label_keys)) for r in ordered}


def panel_columns(runs: Sequence[Run], facets: Sequence[Any], facet_key: str | None,
                  label_keys: Sequence[str]) -> list[tuple[str, list[Run]]]:
    """(title, runs) of each column of panels: one per facet value, and with varied algorithm
    settings one per method label in it (a method that sends nothing, LocalTrain, in each)."""
    columns = []
    for value in facets:
        members = [r for r in runs if facet_key is None or r.setting(facet_key) == value]
        title = "" if facet_key is None else f"{FACET_NAMES.get(facet_key, facet_key.split('.')[-1])} = {value}"
        if not label_keys:
            columns.append((title, members))
            continue
        silent = [r for r in members if not r.communicates]
        methods = list(dict.fromkeys(r.label for r in _in_order(members, label_keys) if r.communicates))
        columns += [(": ".join(filter(None, [title, math_label(method)])),
                     [r for r in members if r.label == method] + silent) for method in methods]
        if not methods:  # only methods that send nothing: one column of them
            columns.append((title, members))
    return columns


def varies(runs: Sequence[Run], key: str) -> bool:
    return len({repr(r.setting(key)) for r in runs}) > 1


def in_legend_order(curves: list[Curve], palette: dict[str, Any]) -> list[Curve]:
    """Keep the facets' numeric order; within a facet, most to least personalized."""
    facets, order = list(dict.fromkeys(c.facet for c in curves)), list(palette)
    return sorted(curves, key=lambda c: (facets.index(c.facet), order.index(c.label)))


PAIRED_TO = "fedavg"  # the method the paired-difference panels subtract, on the same seed


def _paired_reference(labels: dict[str, str], counts: Sequence[int]) -> str | None:
    """The label the difference panels subtract: FedAvg's, when it has one curve and the curves
    average several seeds; None otherwise (no difference panels)."""
    found = [label for label, method in labels.items() if method == PAIRED_TO]
    return found[0] if len(found) == 1 and counts and max(counts) > 1 else None


def _draw_difference(ax: Axes, xs: Sequence[float], diffs: Sequence[Estimate], style: Style, label: str,
                     crowd: int) -> None:
    ax.plot(xs, [d.mean for d in diffs], ms=3, label=math_label(label), **style.line(len(xs)))
    interval_band(ax, xs, [d.low for d in diffs], [d.high for d in diffs], style.color, crowd=crowd)


def _difference_look(ax: Axes, metric: str, reference: str, xlabel: str, xs: Sequence[float]) -> None:
    ax.axhline(0.0, color="black", lw=1, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} minus {math_label(reference)}'s {metric}, same seed\n(paired; below 0: lower {metric})")
    integer_ticks(ax.xaxis, xs)
    axes_look(ax)


def plot_vs_setting(runs: Sequence[Run], key: str, metrics: Sequence[str], path: Path, title: str) -> Path:
    """Final metrics against a setting, one line per method label: the mean over seeds, and with
    several seeds a shaded 95% t interval (pfl_dist/sweep/stats.py) around it, plus a row of
    panels with each method's paired difference to FedAvg on the same seeds (the seeds' common
    spread, which hides the methods' differences in the first row, cancels there)."""
    palette = styles(runs)
    finals: dict[str, dict[str, dict[float, dict[int, float]]]] = {}  # metric -> label -> x -> seed -> value
    for metric in metrics:
        finals[metric] = defaultdict(lambda: defaultdict(dict))
        for run in runs:
            finals[metric][run.label][float(run.setting(key))][int(run.config["run"]["seed"])] = \
                run.summary["final"][metric]
    sizes = [len(seeds) for by_x in finals[metrics[0]].values() for seeds in by_x.values()]
    reference = _paired_reference({r.label: r.method for r in runs}, sizes)
    fig, axes = new_figure(2 if reference else 1, len(metrics))
    for col, metric in enumerate(metrics):
        ax, by_label = axes[0][col], finals[metric]
        drawn = []
        for label in (lab for lab in palette if lab in by_label):
            xs = sorted(by_label[label])
            stats = [t_interval(list(by_label[label][x].values())) for x in xs]
            means = [e.mean for e in stats]
            ax.plot(xs, means, ms=4, label=math_label(label), **palette[label].line(len(xs)))
            banded = any(e.half_width is not None for e in stats)
            low, high = ([e.low for e in stats], [e.high for e in stats]) if banded else (None, None)
            interval_band(ax, xs, low, high, palette[label].color, crowd=len(by_label))
            drawn.append((label, xs, means))
        ax.set_xlabel(SETTING_LABELS.get(key, key))
        ax.set_ylabel(f"final {METRIC_LABELS.get(metric, metric)}")
        integer_ticks(ax.xaxis, [x for _, xs, _ in drawn for x in xs])
        axes_look(ax)
        coincidence_note(ax, coincident(drawn))
        if reference is None:
            continue
        others = [lab for lab in palette if lab in by_label and lab != reference]
        for label in others:
            pairs = [(x, paired_difference(by_label[label][x], by_label[reference][x]))
                     for x in sorted(by_label[label]) if x in by_label[reference]]
            kept = [(x, d) for x, d in pairs if d is not None]
            _draw_difference(axes[1][col], [x for x, _ in kept], [d for _, d in kept], palette[label], label,
                             len(others))
        _difference_look(axes[1][col], metric, reference, SETTING_LABELS.get(key, key),
                         [x for _, xs, _ in drawn for x in xs])
    fig.suptitle(title + seeds_note(sizes), fontsize=11)
    return save_figure(fig, path)


def plot_vs_rounds(runs: Sequence[Run], metrics: Sequence[str], path: Path, title: str,
                   label_keys: Sequence[str] = ()) -> Path:
    """Metric per evaluated round: a column per metric, a curve per method label; with varied
    algorithm settings (label_keys, e.g. K) a row per method, a curve per value. With several
    seeds each curve has its shaded 95% t band, and under each row a row of paired differences
    on the same seeds: to FedAvg, or with varied settings to the row's last value (largest K)."""
    palette = palette_of(runs, label_keys)
    rows = panel_columns(runs, [None], None, label_keys)
    panels = []
    for row_title, members in rows:
        by_metric = {m: in_legend_order(build_curves(members, metric=m, kind="fl", label_keys=label_keys), palette)
                     for m in metrics}
        first = by_metric[metrics[0]]
        sizes = [len(c.finals) for c in first]
        reference = _paired_reference({c.label: c.method for c in first}, sizes)
        if reference is None and label_keys and len(first) > 1 and max(sizes) > 1:
            reference = first[-1].label
        panels.append((row_title, by_metric, reference, sizes))
    fig, axes = new_figure(sum(2 if ref else 1 for _, _, ref, _ in panels), len(metrics))
    row_index = 0
    for row_title, by_metric, reference, _ in panels:
        for col, metric in enumerate(metrics):
            ax, curves = axes[row_index][col], by_metric[metric]
            for curve in curves:
                style, text = palette[curve.label]
                ax.plot(curve.rounds, curve.values, ms=3, label=math_label(text), **style.line(len(curve.rounds)))
                interval_band(ax, curve.rounds, curve.low, curve.high, style.color, crowd=len(curves))
            ax.set_title(row_title, fontsize=10)
            ax.set_xlabel("communication round $t$")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            integer_ticks(ax.xaxis, [t for c in curves for t in c.rounds])
            axes_look(ax)
            coincidence_note(ax, coincident([(palette[c.label][1], c.rounds, c.values) for c in curves]))
            if reference is None:
                continue
            base = next(c for c in curves if c.label == reference)
            others = [c for c in curves if c.label != reference and c.communicates]
            for curve in others:
                rounds, diffs = paired_series(curve, base)
                _draw_difference(axes[row_index + 1][col], rounds, diffs, palette[curve.label][0],
                                 palette[curve.label][1], len(others))
            _difference_look(axes[row_index + 1][col], metric, palette[reference][1], "communication round $t$",
                             [t for c in curves for t in c.rounds])
        row_index += 2 if reference else 1
    fig.suptitle(title + seeds_note([n for *_, sizes in panels for n in sizes]), fontsize=11)
    return save_figure(fig, path)


_MAX_FACETS = 4
_PER_ROW = 2  # panels side by side at most: a wider figure is unreadable at a page's width


def facet_values(runs: Sequence[Run], key: str | None) -> list[Any]:
    """Up to _MAX_FACETS values of the facet key, evenly spaced and including both ends."""
    limit = _MAX_FACETS
    if key is None:
        return [None]
    values = sorted({r.setting(key) for r in runs})
    if len(values) <= limit:
        return values
    picks = {round(i * (len(values) - 1) / (limit - 1)) for i in range(limit)}
    return [values[i] for i in sorted(picks)]


def _draw_tradeoff(ax: Axes, runs: Sequence[Run], *, metric: str, kind: str, palette: Palette,
                   label_keys: Sequence[str]) -> list[Curve]:
    """One panel: a curve per label (with its band over seeds), LocalTrain as its 0-byte point and
    final-value line, the front. Returns the curves drawn."""
    curves = in_legend_order(build_curves(runs, metric=metric, kind=kind, label_keys=label_keys), palette)
    for curve in curves:
        style, text = palette[curve.label]
        if curve.communicates:
            ax.plot(curve.num_bytes, curve.values, ms=3, label=math_label(text), **style.line(len(curve.values)))
            interval_band(ax, curve.num_bytes, curve.low, curve.high, style.color, crowd=len(curves))
        else:
            ax.axhline(curve.values[-1], ls=":", color=style.color, label=f"{math_label(text)} (0 bytes, final)")
            ax.plot([0.0], [curve.values[-1]], **{**style.line(), "linestyle": "none"})
            if curve.low is not None and curve.high is not None:  # its final value's interval, across the panel
                ax.axhspan(curve.low[-1], curve.high[-1], color=style.color, alpha=band_alpha(len(curves)),
                           linewidth=0, gid=BAND_GID)
    front = pareto_front(curves, metric=metric)
    ax.step([b for b, _ in front], [v for _, v in front], where="post", color="black", lw=2.5, alpha=0.35,
            label="Pareto front")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    byte_ticks(ax, "x")
    coincidence_note(ax, coincident([(palette[c.label][1], c.num_bytes, c.values) for c in curves if c.communicates]))
    return curves


def label_keys_of(runs: Sequence[Run]) -> list[str]:
    return [key for key in LABEL_KEYS if varies(runs, key)]


def plot_tradeoff(runs: Sequence[Run], path: Path, *, facet_key: str | None, view: ByteView = FL_VIEW) -> Path:
    """Rows: personal and global metric; columns: facet values (and methods, when an algorithm
    setting varies). x = cumulative training bytes of `view`."""
    metrics = [personal_metric(runs), global_metric(runs)]
    label_keys = label_keys_of(runs)
    palette = palette_of(runs, label_keys)
    columns = panel_columns(runs, facet_values(runs, facet_key), facet_key, label_keys)
    width = min(len(columns), _PER_ROW)
    fig, axes = new_figure(2 * math.ceil(len(columns) / width), width)
    sizes: list[int] = []
    for i, (title, members) in enumerate(columns):
        for row, metric in enumerate(metrics):
            ax = axes[2 * (i // width) + row][i % width]
            drawn = _draw_tradeoff(ax, members, metric=metric, kind=view.kind, palette=palette, label_keys=label_keys)
            sizes += [len(c.finals) for c in drawn]
            ax.set_xlabel(byte_label(view.label))
            ax.set_title(title, fontsize=10)
            axes_look(ax)
    for i in range(len(columns), width * math.ceil(len(columns) / width)):
        for row in range(2):
            axes[2 * (i // width) + row][i % width].remove()  # an odd number of columns: no empty frames
    fig.suptitle(f"trade-off: error/accuracy vs {view.title} (a point per evaluated round)"
                 + seeds_note(sizes), fontsize=11)
    return save_figure(fig, path)


def tradeoff_table(runs: Sequence[Run], *, facet_key: str | None, targets: Sequence[float] | None,
                   stem: Path) -> tuple[str, str, tuple[Path, Path]]:
    """Bytes to reach each target of the personal metric, per facet and method, plus finals."""
    kind, _ = byte_axis(runs)
    metric = personal_metric(runs)
    facets = facet_values(runs, facet_key)
    members = [r for r in runs if facet_key is None or r.setting(facet_key) in facets]
    keys = label_keys_of(runs)
    curves = in_legend_order(build_curves(members, metric=metric, kind=kind, facet_key=facet_key, label_keys=keys),
                             styles(runs, keys))
    extra: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for other in dict.fromkeys([global_metric(runs), "acc_personal", "acc_global"]):
        if other != metric and all(other in r.summary["final"] for r in members):
            others = build_curves(members, metric=other, kind=kind, facet_key=facet_key, label_keys=keys)
            for curve in others:
                references = references_in([c for c in others if c.facet == curve.facet])
                extra[(curve.facet, curve.label)][f"final {curve.tag or other}"] = final_cell(curve, references,
                                                                                             metric=other)
    rows = tradeoff_rows(curves, metric=metric, targets=targets, extra=extra)
    return metric, markdown_table(rows), write_table(rows, stem=stem)


def choose_figures(runs: Sequence[Run], out: Path, prefix: str, fmt: str = "png") -> dict[str, Path]:
    """Draw what the runs' varied settings call for (see the module docstring)."""
    synthetic = personal_metric(runs) == "ITR"
    accuracy = ["acc_personal", "acc_global"]
    figures: dict[str, Path] = {}
    if synthetic and varies(runs, "data.R"):
        figures["stat_error_vs_R"] = plot_vs_setting(runs, "data.R", ["ITR", "ATR"],
                                                     out / f"{prefix}stat_error_vs_R.{fmt}",
                                                     "statistical error vs heterogeneity (final round)")
    if varies(runs, "algorithm.num_local_steps"):
        metrics = ["ITR", "ATR"] if synthetic else accuracy
        figures["local_steps"] = plot_vs_rounds(runs, metrics, out / f"{prefix}local_steps.{fmt}",
                                                "local-steps ablation", label_keys=["algorithm.num_local_steps"])
    if varies(runs, "data.classes_per_client"):
        figures["images"] = plot_vs_setting(runs, "data.classes_per_client", accuracy,
                                            out / f"{prefix}images_vs_classes.{fmt}", "accuracy vs classes per client")
    if varies(runs, "comm.codec") or varies(runs, "comm.downlink_codec"):  # a curve and row per (up, down) pair
        for view, members in [(FL_VIEW, list(runs)), *wire_views(runs)]:
            figures[f"codecs{view.suffix}"] = plot_codecs(members, out / f"{prefix}codecs{view.suffix}.{fmt}",
                                                          kind=view.kind, axis_label=view.label, title=view.title)
        figures["codecs_table"] = write_codec_table(runs, stem=out / f"{prefix}codecs_table")[1][0]
        if has_downlink_codec(runs):
            figures["codecs_pairs"] = write_pair_table(runs, stem=out / f"{prefix}codecs_pairs_table")[1][0]
    if len({r.method for r in runs}) >= FAMILY_METHODS and not any(varies(runs, key) for key in AXIS_KEYS):
        figures["family"], figures["family_table"] = write_family(runs, out, prefix=prefix, fmt=fmt)
    if not any(varies(runs, key) for key in AXIS_KEYS):
        name = "total_error_vs_rounds" if synthetic else "accuracy_vs_rounds"
        figures[name] = plot_vs_rounds(runs, ["ITR", "ATR"] if synthetic else accuracy, out / f"{prefix}{name}.{fmt}",
                                       "error per round" if synthetic else "accuracy per round")
    return figures


def render(results_dir: Path, out: Path, *, prefix: str = "", targets: Sequence[float] | None = None,
           fmt: str = "png") -> Rendered:
    runs = tuned_runs(results_dir, find_runs(results_dir))  # a tuned sweep: its picks only
    if not runs:
        raise SystemExit(f"pfl_dist.plot: error: no finished runs (summary.json) below {results_dir}")
    figures = choose_figures(runs, out, prefix, fmt)
    facet_key = next((key for key in FACET_KEYS if varies(runs, key)), None)
    figures["tradeoff"] = plot_tradeoff(runs, out / f"{prefix}tradeoff.{fmt}", facet_key=facet_key)
    for view, members in wire_views(runs):
        figures[f"tradeoff{view.suffix}"] = plot_tradeoff(members, out / f"{prefix}tradeoff{view.suffix}.{fmt}",
                                                          facet_key=facet_key, view=view)
    _, axis_label = byte_axis(runs)  # the table's bytes (tradeoff_table)
    metric, table, paths = tradeoff_table(runs, facet_key=facet_key, targets=targets,
                                          stem=out / f"{prefix}tradeoff_table")
    return Rendered(figures=figures, metric=metric, axis_label=axis_label, table_markdown=table, table_paths=paths)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="pfl_dist.plot", description=__doc__.split("\n")[0], tool="pfl_dist.plot")
    parser.add_argument("results_dir", type=Path, help="a sweep's out dir (or any folder of run dirs)")
    parser.add_argument("--out", type=Path, help="where figures go (default: RESULTS_DIR/figures)")
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. 'quick_'")
    parser.add_argument("--target", type=float, action="append", help="target of the personal metric (repeatable)")
    parser.add_argument("--format", choices=FORMATS, default="png",
                        help=f"figure file format (default png, at {DPI} dpi)")
    args = parser.parse_args(argv)
    out = args.out or args.results_dir / "figures"
    try:
        check_path_text(str(args.results_dir), "results_dir")
        check_path_text(str(out), "--out")
    except ConfigError as err:
        print(f"pfl_dist.plot: error: {err}", file=sys.stderr)
        return 2
    try:
        rendered = render(args.results_dir, out, prefix=args.prefix, targets=args.target, fmt=args.format)
    except ConfigError as err:  # a tuned out dir whose sweep.yaml copy is damaged
        print(f"pfl_dist.plot: error: {err}", file=sys.stderr)
        return 2
    warning = world_size_warning(find_runs(args.results_dir))  # wire bytes of different W side by side
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(rendered.table_markdown, end="")
    print(f"table: {rendered.table_paths[0]} and {rendered.table_paths[1]}")
    for path in rendered.figures.values():
        print(f"figure: {path}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
