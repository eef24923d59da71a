"""Figures from finished runs: `python -m pfl_dist.plot RESULTS_DIR [--out DIR] [--prefix P] [--target X]
[--format png|pdf|svg]`.

What is drawn follows from what the runs vary (config values in each summary.json):
- data.R varies                      -> stat_error_vs_R.png: final ITR and ATR vs R (the paper's figure)
- algorithm.num_local_steps varies   -> local_steps.png: ITR and ATR per round, one curve per K
- data.classes_per_client varies     -> images_vs_classes.png: personal/global accuracy vs classes
- comm.codec varies                  -> codecs.png and codecs_table.md/.csv (pfl_dist/sweep/codecs.py)
- none of these                      -> total_error_vs_rounds.png (synthetic) or accuracy_vs_rounds.png
- always                             -> tradeoff.png: the personal and global metric vs cumulative
  training bytes, one curve per method/lambda, Pareto front marked (faceted by the varied key),
  plus tradeoff_table.md/.csv: final values, total bytes and bytes to reach target values.
Curves and points are means over seeds; error bars show the standard deviation when seeds > 1.
Every method has one colour family and marker in every figure (pfl_dist.sweep.style), each
figure has one legend, and PNGs are written at 200 dpi (PDF and SVG on request).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API needs no pyplot state and no display backend

from pfl_dist.config import check_path_text
from pfl_dist.errors import ConfigError, OneLineParser
from pfl_dist.sweep.codecs import plot_codecs, write_codec_table
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.style import Style, math_label, method_styles
from pfl_dist.sweep.tradeoff import (
    Curve,
    build_curves,
    byte_axis,
    global_metric,
    markdown_table,
    pareto_front,
    personal_metric,
    run_label,
    tradeoff_rows,
    write_table,
)

AXIS_KEYS = ("data.R", "algorithm.num_local_steps", "data.classes_per_client", "comm.codec")
FACET_KEYS = ("data.kind", "data.R", "data.classes_per_client")  # problem settings: one panel per value
LABEL_KEYS = ("algorithm.num_local_steps", "comm.codec")  # algorithm settings: one curve per value
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
DPI = 200


@dataclass(frozen=True)
class Rendered:
    figures: dict[str, Path]
    metric: str
    axis_label: str
    table_markdown: str
    table_paths: tuple[Path, Path]


def series_key(run: Run) -> tuple[Any, ...]:
    """Legend order, from the method facts each run recorded: methods that never communicate
    (LocalTrain), then those with a lambda (small ... large, auto last), then the rest; by name
    within a group."""
    lam = run.config["algorithm"]["lam"]
    info = run.info
    group = 0 if not info.communicates else 1 if info.uses_lam else 2
    auto = info.uses_lam and lam == "auto"
    return group, run.method, auto, float(lam) if isinstance(lam, (int, float)) and info.uses_lam else 0.0


def styles(runs: Sequence[Run], label_keys: Sequence[str] = ()) -> dict[str, Style]:
    """The style of every curve label, in legend order (most to least personalized): the
    method's colour family and marker, one shade per curve of the method."""
    def order(run: Run) -> tuple[Any, ...]:
        return (*series_key(run), *(run.setting(k) for k in label_keys))

    ordered = sorted(runs, key=order)
    curves = [(run_label(r, label_keys), r.method, r.info.uses_lam and r.config["algorithm"]["lam"] == "auto")
              for r in ordered]
    return method_styles(curves, families={r.method: (r.info.colors, r.info.marker) for r in ordered})


def varies(runs: Sequence[Run], key: str) -> bool:
    return len({repr(r.setting(key)) for r in runs}) > 1


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _figure(num_rows: int, num_cols: int) -> tuple[Figure, Any]:
    fig = Figure(figsize=(max(7.0, 5.2 * num_cols), 4.0 * num_rows + 0.8), layout="constrained")
    return fig, fig.subplots(num_rows, num_cols, squeeze=False)


def _save(fig: Figure, path: Path) -> Path:
    """One legend for the whole figure, below the panels (every panel's labelled artists, each
    label once, in drawing order), then the file; PNG at DPI."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False, fontsize=8,
                   ncol=min(len(handles), 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _axes_look(ax: Axes) -> None:
    ax.grid(alpha=0.3)
    ax.xaxis.label.set_fontsize(9)
    ax.yaxis.label.set_fontsize(9)


def in_legend_order(curves: list[Curve], palette: dict[str, Style]) -> list[Curve]:
    """Keep the facets' numeric order; within a facet, most to least personalized."""
    facets, order = list(dict.fromkeys(c.facet for c in curves)), list(palette)
    return sorted(curves, key=lambda c: (facets.index(c.facet), order.index(c.label)))


def plot_vs_setting(runs: Sequence[Run], key: str, metrics: Sequence[str], path: Path, title: str) -> Path:
    """Final metrics against a setting, one line per method label, mean +- std over seeds."""
    palette = styles(runs)
    fig, axes = _figure(1, len(metrics))
    for ax, metric in zip(axes[0], metrics, strict=True):
        by_label: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            by_label[run.label][float(run.setting(key))].append(run.summary["final"][metric])
        for label in (lab for lab in palette if lab in by_label):
            points = by_label[label]
            xs = sorted(points)
            stats = [_mean_std(points[x]) for x in xs]
            style = palette[label]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker=style.marker, ms=4, capsize=2,
                        label=math_label(label), color=style.color, linestyle=style.linestyle)
        ax.set_xlabel(SETTING_LABELS.get(key, key))
        ax.set_ylabel(f"final {METRIC_LABELS.get(metric, metric)}")
        _axes_look(ax)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_vs_rounds(runs: Sequence[Run], metrics: Sequence[str], path: Path, title: str,
                   label_keys: Sequence[str] = ()) -> Path:
    """Metric per evaluated round; one curve per method label (and per value of label_keys, e.g. K)."""
    palette = styles(runs, label_keys)
    fig, axes = _figure(1, len(metrics))
    for ax, metric in zip(axes[0], metrics, strict=True):
        curves = in_legend_order(build_curves(runs, metric=metric, kind="wire", label_keys=label_keys), palette)
        for curve in curves:
            style = palette[curve.label]
            ax.plot(curve.rounds, curve.values, marker=style.marker if len(curve.rounds) < 60 else None, ms=3,
                    label=math_label(curve.label), color=style.color, linestyle=style.linestyle)
        ax.set_xlabel("communication round $t$")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        _axes_look(ax)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


_MAX_FACETS = 4


def byte_scale(max_bytes: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if max_bytes >= scale:
            return scale, unit
    return 1.0, "B"


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


def _draw_tradeoff(ax: Axes, runs: Sequence[Run], *, metric: str, kind: str, palette: dict[str, Style],
                   label_keys: Sequence[str]) -> str:
    """One panel: a curve per label, LocalTrain as its 0-byte point and final-value line, the front."""
    curves = in_legend_order(build_curves(runs, metric=metric, kind=kind, label_keys=label_keys), palette)
    scale, unit = byte_scale(max((max(c.num_bytes) for c in curves if c.num_bytes), default=0.0))
    for curve in curves:
        xs = [b / scale for b in curve.num_bytes]
        style, label = palette[curve.label], math_label(curve.label)
        if curve.communicates:
            ax.plot(xs, curve.values, marker=style.marker, ms=3, label=label, color=style.color,
                    linestyle=style.linestyle)
        else:
            ax.axhline(curve.values[-1], ls=":", color=style.color, label=f"{label} (0 bytes, final)")
            ax.plot([0.0], [curve.values[-1]], marker=style.marker, color=style.color)
    front = pareto_front(curves, metric=metric)
    ax.step([b / scale for b, _ in front], [v for _, v in front], where="post", color="black", lw=2.5, alpha=0.35,
            label="Pareto front")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return unit


def label_keys_of(runs: Sequence[Run]) -> list[str]:
    return [key for key in LABEL_KEYS if varies(runs, key)]


def plot_tradeoff(runs: Sequence[Run], path: Path, *, facet_key: str | None) -> tuple[Path, str]:
    """Rows: personal and global metric; columns: facet values. x = cumulative training bytes."""
    kind, axis_label = byte_axis(runs)
    metrics = [personal_metric(runs), global_metric(runs)]
    facets = facet_values(runs, facet_key)
    label_keys = label_keys_of(runs)
    palette = styles(runs, label_keys)
    fig, axes = _figure(2, len(facets))
    for col, value in enumerate(facets):
        members = [r for r in runs if facet_key is None or r.setting(facet_key) == value]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            unit = _draw_tradeoff(ax, members, metric=metric, kind=kind, palette=palette, label_keys=label_keys)
            ax.set_xlabel(f"{axis_label} [{unit}]")
            if facet_key is not None:
                ax.set_title(f"{FACET_NAMES.get(facet_key, facet_key.split('.')[-1])} = {value}", fontsize=10)
            _axes_look(ax)
    fig.suptitle("trade-off: error/accuracy vs training bytes (a point per evaluated round)", fontsize=11)
    return _save(fig, path), axis_label


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
    extra: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for other in dict.fromkeys([global_metric(runs), "acc_personal", "acc_global"]):
        if other != metric and all(other in r.summary["final"] for r in members):
            for curve in build_curves(members, metric=other, kind=kind, facet_key=facet_key, label_keys=keys):
                extra[(curve.facet, curve.label)][f"final {other}"] = curve.values[-1]
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
    if varies(runs, "comm.codec"):
        figures["codecs"] = plot_codecs(runs, out / f"{prefix}codecs.{fmt}", dpi=DPI)
        figures["codecs_table"] = write_codec_table(runs, stem=out / f"{prefix}codecs_table")[1][0]
    if not any(varies(runs, key) for key in AXIS_KEYS):
        name = "total_error_vs_rounds" if synthetic else "accuracy_vs_rounds"
        figures[name] = plot_vs_rounds(runs, ["ITR", "ATR"] if synthetic else accuracy, out / f"{prefix}{name}.{fmt}",
                                       "error per round" if synthetic else "accuracy per round")
    return figures


def render(results_dir: Path, out: Path, *, prefix: str = "", targets: Sequence[float] | None = None,
           fmt: str = "png") -> Rendered:
    runs = find_runs(results_dir)
    if not runs:
        raise SystemExit(f"pfl_dist.plot: error: no finished runs (summary.json) below {results_dir}")
    figures = choose_figures(runs, out, prefix, fmt)
    facet_key = next((key for key in FACET_KEYS if varies(runs, key)), None)
    figures["tradeoff"], axis_label = plot_tradeoff(runs, out / f"{prefix}tradeoff.{fmt}", facet_key=facet_key)
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
    rendered = render(args.results_dir, out, prefix=args.prefix, targets=args.target, fmt=args.format)
    print(rendered.table_markdown, end="")
    print(f"table: {rendered.table_paths[0]} and {rendered.table_paths[1]}")
    for path in rendered.figures.values():
        print(f"figure: {path}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
