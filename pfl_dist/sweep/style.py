"""How every figure draws a method: one fixed colour family and marker per method.

The family and marker are the method's own (pfl_dist/methods.py): FedAvg is always blue circles,
LocalTrain grey squares, FedCLUP red triangles, FedProx green diamonds, Ditto orange plus signs,
and so on, twelve hue families that tests/unit/test_plot.py checks are told apart, in every
figure of every sweep. A family is a matplotlib sequential colormap (Blues, Reds, Greys) or a
'#rrggbb' base colour, drawn as a map from a light tint through the colour (at the single-curve
shade) to a dark shade. Several curves of one method (lambda values, or local steps K in the
ablation) are shades of its family, light to dark in legend order (small to large lambda, then
the varied setting), with the same marker; `lam: auto` is drawn dashed. A known method is drawn
with today's table even in runs that recorded an older family; a method not in the table gets
the family its runs recorded (summary.json "method"), else one chosen from its name, so it too
looks the same everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, LinearSegmentedColormap, to_rgb, to_rgba

from pfl_dist.methods import METHODS

_OTHER_FAMILIES = (("Purples", "v"), ("Oranges", "P"), ("PuRd", "X"), ("YlOrBr", "*"))
_SINGLE_SHADE = 0.75  # a method with one curve
_SHADES = (0.35, 0.95)  # lightest and darkest shade of a method with several curves
# A '#rrggbb' family: its map starts at the colour mixed with this much white and ends at it
# mixed with this much black (shade 0.95 is then a little lighter than that).
_TINT, _DARKEN = 0.85, 0.45


@dataclass(frozen=True)
class Style:
    color: Any
    marker: str
    linestyle: str = "-"


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
            styles[label] = Style(color=color, marker=marker, linestyle="--" if auto else "-")
    return styles


def math_label(text: str) -> str:
    """Legend and title text with mathtext Greek letters ('FedCLUP λ=0.5' -> 'FedCLUP $\\lambda$=0.5')."""
    return text.replace("λ", r"$\lambda$").replace("μ", r"$\mu$")
