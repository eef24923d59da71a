"""How every figure draws a method: one fixed colour family and marker per method.

The family and marker are the method's own (pfl_dist/methods.py, recorded in each run's
summary.json): FedAvg is always blue circles, LocalTrain grey squares, FedCLUP red triangles,
FedProx green diamonds, in every figure of every sweep. Several curves of one method (lambda values, or local
steps K in the ablation) are shades of its colour, light to dark in legend order (small to large
lambda, then the varied setting), with the same marker; `lam: auto` is drawn dashed. A method
not in the table gets a family chosen from its name, so it too looks the same everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib import colormaps

from pfl_dist.methods import METHODS

_OTHER_FAMILIES = (("Purples", "v"), ("Oranges", "P"), ("PuRd", "X"), ("YlOrBr", "*"))
_SINGLE_SHADE = 0.75  # a method with one curve
_SHADES = (0.35, 0.95)  # lightest and darkest shade of a method with several curves


@dataclass(frozen=True)
class Style:
    color: Any
    marker: str
    linestyle: str = "-"


def family(method: str) -> tuple[str, str]:
    """(colormap, marker) of a method: its own, or one chosen from its name for an unknown one."""
    if method in METHODS:
        return METHODS[method].colors, METHODS[method].marker
    return _OTHER_FAMILIES[zlib.crc32(method.encode()) % len(_OTHER_FAMILIES)]


def method_styles(curves: Sequence[tuple[str, str, bool]],
                  families: dict[str, tuple[str, str]] | None = None) -> dict[str, Style]:
    """Styles for (label, method, is lam=auto) in legend order: shades by position within the method.
    `families`: method -> (colormap, marker) as the runs recorded them (else `family`)."""
    styles: dict[str, Style] = {}
    for method in dict.fromkeys(m for _, m, _ in curves):
        labels = list(dict.fromkeys((label, auto) for label, m, auto in curves if m == method))
        cmap_name, marker = (families or {}).get(method) or family(method)
        cmap = colormaps[cmap_name]
        low, high = _SHADES
        for i, (label, auto) in enumerate(labels):
            shade = _SINGLE_SHADE if len(labels) == 1 else low + (high - low) * i / (len(labels) - 1)
            styles[label] = Style(color=cmap(shade), marker=marker, linestyle="--" if auto else "-")
    return styles


def math_label(text: str) -> str:
    """Legend and title text with mathtext Greek letters ('FedCLUP λ=0.5' -> 'FedCLUP $\\lambda$=0.5')."""
    return text.replace("λ", r"$\lambda$").replace("μ", r"$\mu$")
