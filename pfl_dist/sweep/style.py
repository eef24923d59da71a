"""How every figure looks: one fixed colour family and marker per method, and the axes, notes
and legend that every figure of pfl_dist shares (the sweep figures, the codec and family figures
and the netem time-to-accuracy figure).

The family and marker are the method's own (pfl_dist/methods.py): FedAvg is always blue circles,
LocalTrain grey squares, FedCLUP red triangles, FedProx green diamonds, Ditto orange plus signs,
and so on, a hue family per method that tests/unit/test_style.py checks are told apart, in every
figure of every sweep. A family is a matplotlib sequential colormap (Blues, Reds, Greys) or a
'#rrggbb' base colour, drawn as a map from a light tint through the colour (at the single-curve
shade) to a dark shade. Several curves of one method (lambda values) are shades of its family,
light to dark in legend order (small to large lambda); `lam: auto` is drawn dashed. Neighbouring
shades of many curves are too close to tell apart in print, so from 3 curves of a method on, each
also gets its own line style (solid, dotted, dash-dot, long dash, sparse dots, dash-dot-dot,
then the same with hollow markers). A known method is drawn with today's table even in runs
that recorded an older family; a method not in the table gets the family its runs recorded
(summary.json "method"), else one chosen from its name, so it too looks the same everywhere.

A varied algorithm setting (a codec, local steps K) is drawn one method per panel (the panel
title names the method), its values in their own colours and markers (`value_styles`: tab10 for
codecs, the same in codecs.png and tradeoff.png; viridis, light to dark, for numbers): shades of
one method's colour cannot tell seven codecs apart.

Axes: byte axes are labelled in decimal units (1 KB = 1000 B, as pfl_dist.outputs.format_bytes)
on linear and log scales, integer-valued axes (rounds, K, classes) have integer ticks only, and
curves that are exactly the same points get a note in their panel naming them (they are drawn on
top of each other, so only the last would be seen). One legend per figure, below the panels;
PNG at 200 dpi.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, LinearSegmentedColormap, to_rgb, to_rgba
from matplotlib.figure import Figure  # the object API needs no pyplot state and no display backend
from matplotlib.ticker import Formatter, Locator, LogLocator, MaxNLocator, NullFormatter

from pfl_dist.methods import METHODS
from pfl_dist.outputs import write_bytes_atomic

_OTHER_FAMILIES = (("Purples", "v"), ("Oranges", "P"), ("PuRd", "X"), ("YlOrBr", "*"))
_SINGLE_SHADE = 0.75  # a method with one curve
_SHADES = (0.35, 0.95)  # lightest and darkest shade of a method with several curves
# A '#rrggbb' family: its map starts at the colour mixed with this much white and ends at it
# mixed with this much black (shade 0.95 is then a little lighter than that).
_TINT, _DARKEN = 0.85, 0.45
# From this many curves of one method on, shades alone are not told apart: add line styles.
_MANY_SHADES = 3
# solid, dotted, dash-dot, long dash, sparse dots, long dash-dot-dot; never "--": that is lam=auto
_LINESTYLES = ("-", ":", "-.", (0, (9, 3)), (0, (1, 4)), (0, (9, 2, 1, 2, 1, 2)))
_AUTO_LINESTYLE = "--"
_MARKED = 25  # markers on a curve at most
# The markers of a varied algorithm setting's values (codecs, K), in the setting's order.
VALUE_MARKERS = ("o", "s", "^", "v", "D", "P", "*", "X", "h", "<", ">", "p", "d", "8")
DPI = 200


@dataclass(frozen=True)
class Style:
    color: Any
    marker: str
    linestyle: Any = "-"
    fillstyle: str = "full"

    def line(self, points: int = 0) -> dict[str, Any]:
        """The keyword arguments of Axes.plot that draw a curve of `points` points in this style:
        beyond _MARKED points a marker on every n-th only, so the line style stays visible."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle, "fillstyle": self.fillstyle,
                "markevery": max(1, math.ceil(points / _MARKED))}


def family(method: str) -> tuple[str, str]:
    """(colour family, marker) of a method: its own, or one chosen from its name for an unknown one."""
    if method in METHODS:
        return METHODS[method].colors, METHODS[method].marker
    return _OTHER_FAMILIES[zlib.crc32(method.encode()) % len(_OTHER_FAMILIES)]


def family_colormap(colors: str) -> Colormap:
    """A family as a colormap: a matplotlib colormap name, or '#rrggbb' -> white tint, the colour
    at the single-curve shade, dark shade."""
    if not colors.startswith("#"):
        return colormaps[colors]
    base = np.array(to_rgb(colors))
    light, dark = base + (1 - base) * _TINT, base * (1 - _DARKEN)
    return LinearSegmentedColormap.from_list(colors, [(0.0, tuple(light)), (_SINGLE_SHADE, tuple(base)),
                                                      (1.0, tuple(dark))])


def representative_color(colors: str) -> tuple[float, float, float, float]:
    """The colour of a family's single curve (RGBA): a '#rrggbb' family's own colour exactly."""
    return to_rgba(colors) if colors.startswith("#") else family_colormap(colors)(_SINGLE_SHADE)


def value_styles(values: Sequence[str], *, numeric: bool = False, dashed: str | None = None) -> dict[str, Style]:
    """A colour and marker per value of a varied algorithm setting (a codec, K), in the given order:
    tab10 colours for named values, light-to-dark viridis for numbers; `dashed`: a reference value
    (the dense codec) drawn dashed. The same values give the same styles in every figure."""
    ordered = list(dict.fromkeys(values))
    if numeric:
        colors = [colormaps["viridis"](0.9 * i / max(1, len(ordered) - 1)) for i in range(len(ordered))]
    else:
        colors = [colormaps["tab10" if len(ordered) <= 10 else "tab20"](i % 20) for i in range(len(ordered))]
    return {value: Style(color=colors[i], marker=VALUE_MARKERS[i % len(VALUE_MARKERS)],
                         linestyle="--" if value == dashed else "-") for i, value in enumerate(ordered)}


def _dash_and_fill(index: int, count: int, auto: bool) -> tuple[Any, str]:
    """A method's `index`-th of `count` curves: solid and filled while shades suffice, else a line
    style per curve (then the same with hollow markers)."""
    if count < _MANY_SHADES:
        return (_AUTO_LINESTYLE if auto else "-"), "full"
    style = _AUTO_LINESTYLE if auto else _LINESTYLES[index % len(_LINESTYLES)]
    return style, "full" if (index // len(_LINESTYLES)) % 2 == 0 else "none"


def method_styles(curves: Sequence[tuple[str, str, bool]],
                  families: dict[str, tuple[str, str]] | None = None) -> dict[str, Style]:
    """Styles for (label, method, is lam=auto) in legend order: shades by position within the method.
    `families`: method -> (colour family, marker) as the runs recorded them, used for methods that
    are not in pfl_dist/methods.py (a known method is drawn with today's family)."""
    styles: dict[str, Style] = {}
    for method in dict.fromkeys(m for _, m, _ in curves):
        labels = list(dict.fromkeys((label, auto) for label, m, auto in curves if m == method))
        recorded = None if method in METHODS else (families or {}).get(method)
        colors, marker = recorded or family(method)
        cmap = family_colormap(colors)
        low, high = _SHADES
        for i, (label, auto) in enumerate(labels):
            single = len(labels) == 1
            color = representative_color(colors) if single else cmap(low + (high - low) * i / (len(labels) - 1))
            linestyle, fill = _dash_and_fill(i, len(labels), auto)
            styles[label] = Style(color=color, marker=marker, linestyle=linestyle, fillstyle=fill)
    return styles


def math_label(text: str) -> str:
    """Legend and title text with mathtext Greek letters ('FedCLUP λ=0.5' -> 'FedCLUP $\\lambda$=0.5')."""
    return text.replace("λ", r"$\lambda$").replace("μ", r"$\mu$")


# --- figures, panels and the legend -----------------------------------------------------------


def new_figure(num_rows: int, num_cols: int, *, width: float = 5.2, height: float = 4.0) -> tuple[Figure, Any]:
    """A figure of num_rows x num_cols panels of about width x height inches, room for the legend."""
    fig = Figure(figsize=(max(7.0, width * num_cols), height * num_rows + 0.8), layout="constrained")
    return fig, fig.subplots(num_rows, num_cols, squeeze=False)


def axes_look(ax: Axes) -> None:
    ax.grid(alpha=0.3)
    ax.xaxis.label.set_fontsize(9)
    ax.yaxis.label.set_fontsize(9)


def save_figure(fig: Figure, path: Path, *, columns: int = 4, dpi: int = DPI) -> Path:
    """One legend for the whole figure, below the panels (every panel's labelled artists, each
    label once, in drawing order), then the file (PNG at `dpi`; PDF and SVG by the suffix)."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False, fontsize=8,
                   ncol=min(len(handles), columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())  # a reader never sees half a figure
    return path


# --- intervals over seeds ---------------------------------------------------------------------

BAND_ALPHA = 0.2  # one band alone; `crowd` bands in a panel are each fainter, so the curves stay visible
_MIN_BAND_ALPHA = 0.06
BAND_GID = "interval-band"  # how tests and tools find the bands among a panel's artists


def band_alpha(crowd: int) -> float:
    return max(_MIN_BAND_ALPHA, BAND_ALPHA / math.sqrt(max(1, crowd)))


def interval_band(ax: Axes, xs: Sequence[float], low: Sequence[float] | None, high: Sequence[float] | None,
                  color: Any, *, crowd: int = 1) -> None:
    """Shade the 95% t interval over seeds (pfl_dist/sweep/stats.py) around a mean curve, in the
    curve's colour, fainter when `crowd` bands share the panel; nothing without an interval (one seed)."""
    if low is not None and high is not None and len(xs):
        ax.fill_between(list(xs), list(low), list(high), color=color, alpha=band_alpha(crowd), linewidth=0,
                        gid=BAND_GID)


def seeds_note(n: Sequence[int]) -> str:
    """What a figure's title adds about seeds: '' for one seed, else how the curves and bands were made."""
    sizes = sorted(set(n))
    if not sizes or sizes[-1] < 2:
        return ""
    count = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return f"\nmean over {count} seeds; shaded: 95% Student t interval over the seeds"


# --- axes: bytes, integers --------------------------------------------------------------------

_BYTE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "B"))
DECIMAL_UNITS = "decimal units: 1 KB = 1000 B"  # what every byte axis label says about its ticks' units


def byte_label(text: str) -> str:
    """A byte axis label that says, on a second line (panels side by side leave no room for a
    longer first one), that its ticks' units are decimal: '...\n(decimal units: 1 KB = 1000 B)'."""
    return f"{text}\n({DECIMAL_UNITS})"


def byte_unit(num_bytes: float) -> tuple[float, str]:
    """The decimal unit format_bytes would write `num_bytes` in: (its size in bytes, its name)."""
    return next(((scale, unit) for scale, unit in _BYTE_UNITS if abs(num_bytes) >= scale), (1.0, "B"))


class ByteFormatter(Formatter):
    """Tick labels of a byte axis in decimal units: on a linear axis every tick in the unit of the
    largest one ('0 KB', '2.5 KB', '5 KB'), on a log axis each in its own ('500 KB', '1 MB')."""

    def __init__(self, *, log: bool) -> None:
        self.log = log
        self.unit = (1.0, "B")

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        self.unit = byte_unit(max((abs(v) for v in locs), default=0.0))

    def __call__(self, x: float, pos: int | None = None) -> str:
        scale, unit = byte_unit(x) if self.log else self.unit
        return f"{x / scale:.4g} {unit}"


class DecadeLocator(Locator):
    """Log-axis ticks at 1-9, 1-2-3-5, 1-2-5, 1-3, 1 or every n-th power of ten: the densest that
    puts at most `most` ticks in view, no two closer than 1/(most + 1) of the view (in decades),
    so the labels never run into each other."""

    _SUBS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5), (1, 2, 5), (1, 3))

    def __init__(self, most: int = 6) -> None:
        self.most = most

    def __call__(self) -> Any:
        assert self.axis is not None
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        low, high = sorted((max(vmin, 1e-300), max(vmax, 1e-300)))
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        span = max(math.log10(high / low), 1e-9)
        strides = [(subs, 1) for subs in self._SUBS] + [((1,), n) for n in range(1, last - first + 2)]
        for subs, stride in strides:
            ticks = [s * 10.0 ** e for e in range(first - first % stride, last + 1, stride) for s in subs]
            shown = np.log10([t for t in ticks if low <= t <= high])
            if len(shown) <= self.most and (len(shown) < 2 or np.diff(shown).min() >= span / (self.most + 1)):
                return np.array(ticks)
        return np.array([10.0 ** first])


def byte_ticks(ax: Axes, which: str = "x", *, log: bool = False) -> None:
    """Label the x or y axis of `ax` as bytes, ticks in KB/MB/GB (so the axis label needs no unit)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    if log:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_major_locator(DecadeLocator())
        axis.set_minor_locator(LogLocator(base=10, subs="auto"))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(ByteFormatter(log=log))


def integer_ticks(axis: Axis, values: Sequence[float]) -> None:
    """Integer ticks only when every value on the axis is an integer (rounds, K, classes)."""
    if values and all(float(v).is_integer() for v in values):
        axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


# --- curves that are exactly the same ---------------------------------------------------------


def coincident(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> list[list[str]]:
    """Groups of two or more labels whose curves are exactly the same points (x and y, every point)."""
    groups: dict[tuple[tuple[float, ...], tuple[float, ...]], list[str]] = {}
    for label, xs, ys in curves:
        if len(xs):
            groups.setdefault((tuple(xs), tuple(ys)), []).append(label)
    return [labels for labels in groups.values() if len(labels) > 1]


def coincidence_note(ax: Axes, groups: Sequence[Sequence[str]]) -> None:
    """Say in the panel which curves are identical (only the last drawn of them is visible), in
    the spot (a corner, or the middle of an edge) where the note hides the least of the lines."""
    if not groups:
        return
    text = "\n".join(" = ".join(math_label(label) for label in labels) + ": identical" for labels in groups)
    note = ax.text(0.0, 0.0, text, transform=ax.transAxes, fontsize=7, gid="coincidence-note",
                   bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.9})
    renderer = FigureCanvasAgg(ax.get_figure(root=True)).get_renderer()
    box = note.get_window_extent(renderer)
    frame = ax.get_window_extent(renderer)
    size = (box.width / frame.width + 0.02, box.height / frame.height + 0.03)  # with the bbox's padding
    points, weights = _plotted_points(ax)
    spots = [(0.98, 0.03), (0.02, 0.03), (0.98, 0.97), (0.02, 0.97), (0.5, 0.03), (0.5, 0.97), (0.02, 0.5),
             (0.98, 0.5)]

    def covered(spot: tuple[float, float]) -> float:
        x0 = spot[0] - size[0] * (1.0 if spot[0] > 0.9 else 0.5 if spot[0] > 0.1 else 0.0)
        y0 = spot[1] - size[1] * (1.0 if spot[1] > 0.9 else 0.5 if spot[1] > 0.1 else 0.0)
        inside = ((points[:, 0] >= x0) & (points[:, 0] <= x0 + size[0]) & (points[:, 1] >= y0)
                  & (points[:, 1] <= y0 + size[1]))
        return float(weights[inside].sum())

    x, y = min(spots, key=covered)
    note.set_position((x, y))
    note.set_horizontalalignment("right" if x > 0.9 else "center" if x > 0.1 else "left")
    note.set_verticalalignment("top" if y > 0.9 else "center" if y > 0.1 else "bottom")


def _plotted_points(ax: Axes, per_segment: int = 40) -> tuple[Any, Any]:
    """Every line of the panel as points in axes fractions with weights: its data points (markers)
    weigh 10, points filled in along its segments 1 (a line crossing a note's spot is hidden too)."""
    ax.get_xlim(), ax.get_ylim()  # apply pending autoscaling: the transforms below read the view limits
    points, weights = [np.empty((0, 2))], [np.empty(0)]
    for line in ax.get_lines():  # each in its own coordinates (axhline's x is in axes fractions)
        xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
        xy = (line.get_transform() - ax.transAxes).transform(xy) if len(xy) else xy
        xy = xy[np.isfinite(xy).all(axis=1)]
        points.append(xy)
        weights.append(np.full(len(xy), 10.0))
        if len(xy) > 1:
            t, index = np.linspace(0, len(xy) - 1, per_segment * (len(xy) - 1) + 1), np.arange(len(xy))
            points.append(np.column_stack([np.interp(t, index, xy[:, 0]), np.interp(t, index, xy[:, 1])]))
            weights.append(np.ones(len(t)))
    return np.concatenate(points), np.concatenate(weights)
