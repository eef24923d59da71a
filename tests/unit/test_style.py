"""The colour families of pfl_dist/sweep/style.py: the built-in methods of pfl_dist/methods.py are
told apart in one figure, and several curves of one method are shades of its own family.

Colours are compared in CIELAB (CIE 15, sRGB with the D65 white, IEC 61966-2-1), converted here
with the standard formulas, not with the code under test."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from pfl_dist.methods import METHODS
from pfl_dist.sweep.style import Style, byte_ticks, family_colormap, method_styles, representative_color, value_styles
from tests.figures import UNIT_TICK, overlapping, shown_tick_labels

# CIE76 colour difference Delta E*ab that every two methods' single-curve colours must reach.
# 2.3 is a just noticeable difference between two patches side by side; curves are thin lines
# and small markers, spread over a figure and matched against its legend, so the bar is ten
# times that and more. The families before this test failed it by far: FedProx's Greens and
# FedRep's BuGn gave the same colour (0.0), FedAvg's Blues and FedAvg-FT's PuBu 3.8.
MIN_DELTA_E = 30.0
_D65 = (0.95047, 1.0, 1.08883)


def cielab(rgb: Sequence[float]) -> tuple[float, float, float]:
    """sRGB in [0, 1] -> (L*, a*, b*)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    r, g, b = linear
    xyz = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b, 0.2126729 * r + 0.7151522 * g + 0.0721750 * b,
           0.0193339 * r + 0.1191920 * g + 0.9503041 * b)
    fx, fy, fz = (t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29
                  for t in (v / w for v, w in zip(xyz, _D65, strict=True)))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: Sequence[float], b: Sequence[float]) -> float:
    return math.dist(cielab(a), cielab(b))


def hue_and_chroma(rgb: Sequence[float]) -> tuple[float, float]:
    _, a, b = cielab(rgb)
    return math.degrees(math.atan2(b, a)) % 360, math.hypot(a, b)


def test_the_built_in_methods_are_told_apart_by_colour_and_marker() -> None:
    colours = {name: representative_color(info.colors) for name, info in METHODS.items()}
    assert len(colours) == len(METHODS) >= 12
    distances = {(a, b): delta_e(colours[a], colours[b]) for a, b in itertools.combinations(colours, 2)}
    close = {pair: round(d, 1) for pair, d in distances.items() if d < MIN_DELTA_E}
    assert not close, f"methods drawn in colours closer than Delta E {MIN_DELTA_E}: {close}"
    assert len({info.marker for info in METHODS.values()}) == len(METHODS)


def test_fedavg_stays_blue_localtrain_grey_and_fedclup_red() -> None:
    fedavg, _ = hue_and_chroma(representative_color(METHODS["fedavg"].colors))
    _, local_chroma = hue_and_chroma(representative_color(METHODS["local"].colors))
    fedclup, fedclup_chroma = hue_and_chroma(representative_color(METHODS["fedclup"].colors))
    assert 250 <= fedavg <= 290  # CIELAB hue angle of blue (#1f77b4: 265; pure #0000ff: 306)
    assert local_chroma < 2  # grey: no hue
    assert 20 <= fedclup <= 50 and fedclup_chroma > 50  # red (#ff0000: 40)


@pytest.mark.parametrize("name", list(METHODS))
def test_several_curves_of_a_method_are_shades_of_its_family(name: str) -> None:
    info = METHODS[name]
    curves = [(f"{info.label} {i}", name, False) for i in range(4)]
    shades = [style.color for style in method_styles(curves).values()]
    lightness = [cielab(colour)[0] for colour in shades]
    assert lightness == sorted(lightness, reverse=True) and len(set(lightness)) == 4  # light to dark
    own = representative_color(info.colors)
    if info.colors.startswith("#"):  # a base colour's shades keep its hue (matplotlib's maps drift a little)
        assert all(abs(hue_and_chroma(colour)[0] - hue_and_chroma(own)[0]) < 10 for colour in shades)
    assert method_styles([(info.label, name, False)])[info.label].color == own


def test_a_hex_family_runs_from_a_light_tint_through_its_colour_to_a_dark_shade() -> None:
    cmap = family_colormap("#ff7f00")
    assert representative_color("#ff7f00") == pytest.approx((1.0, 127 / 255, 0.0, 1.0))
    assert cielab(cmap(0.0))[0] > 90 and cielab(cmap(1.0))[0] < cielab(cmap(0.75))[0] - 15
    assert delta_e(cmap(0.75), (1.0, 127 / 255, 0.0)) < 1  # the colour itself at the single-curve shade


def test_a_known_method_uses_todays_family_and_an_unknown_one_what_its_runs_recorded() -> None:
    recorded = {"fedprox": ("Greens", "D"), "mymethod": ("Oranges", "P")}  # fedprox: an old run's family
    styles = method_styles([("FedProx", "fedprox", False), ("Mine", "mymethod", False)], families=recorded)
    assert styles["FedProx"].color == representative_color(METHODS["fedprox"].colors)
    assert styles["Mine"].color == representative_color("Oranges") and styles["Mine"].marker == "P"


# Two curves of one figure are told apart when they differ in marker, marker fill or line style,
# or when their colours are at least this far apart (CIE76). Shades of one family closer than
# this (7 curves of FedAvg's Blues are 11-14 apart; 3 of FedAvg-FT's pink 19) look alike in print.
MIN_CURVE_DELTA_E = 20.0


def told_apart(a: Style, b: Style) -> bool:
    return (a.marker != b.marker or a.fillstyle != b.fillstyle or a.linestyle != b.linestyle
            or delta_e(to_rgb(a.color), to_rgb(b.color)) >= MIN_CURVE_DELTA_E)


@pytest.mark.parametrize("name", list(METHODS))
def test_any_number_of_curves_of_one_method_are_told_apart(name: str) -> None:
    info = METHODS[name]
    for count in range(1, 13):
        styles = method_styles([(f"{info.label} λ={i}", name, i == count - 1 and count > 2) for i in range(count)])
        alike = [(a, b) for a, b in itertools.combinations(styles, 2) if not told_apart(styles[a], styles[b])]
        assert not alike, f"{count} curves of {info.label}: drawn alike: {alike}"


def test_codec_values_get_their_own_colours_and_markers() -> None:
    codecs = ["none", "fp16", "bf16", "qsgd:4", "topk:0.01", "randk:0.1", "powersgd:2"]
    styles = value_styles(codecs, dashed="none")
    assert list(styles) == codecs and len({s.marker for s in styles.values()}) == len(codecs)
    assert styles["none"].linestyle == "--" and all(styles[c].linestyle == "-" for c in codecs[1:])
    close = [(a, b) for a, b in itertools.combinations(codecs, 2)
             if delta_e(to_rgb(styles[a].color), to_rgb(styles[b].color)) < MIN_CURVE_DELTA_E]
    assert not close
    numbers = value_styles(["25", "50", "100"], numeric=True)
    lightness = [cielab(to_rgb(s.color))[0] for s in numbers.values()]
    assert lightness == sorted(lightness)  # viridis: dark to light in the values' order


@pytest.mark.parametrize(("low", "high"), [(300.0, 9e4), (6.5e6, 7e7), (3.3e7, 4.1e8), (1e5, 2e7), (5e7, 6e7),
                                           (800.0, 1.2e4), (1e3, 1e12), (2e9, 3e9)])
def test_log_byte_ticks_carry_units_and_never_overlap(low: float, high: float) -> None:
    fig = Figure(figsize=(4.5, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([low, high], [0, 1])
    byte_ticks(ax, "x", log=True)
    ax.set_xlim(low, high)
    labels = shown_tick_labels(fig, ax, "x")
    texts = [label.get_text() for label in labels]
    assert len(texts) >= 2 and all(UNIT_TICK.match(text) for text in texts), texts
    assert not overlapping(fig, labels), texts


def test_linear_byte_ticks_share_the_largest_ticks_unit() -> None:
    fig = Figure(figsize=(4.5, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 5280], [0, 1])
    byte_ticks(ax, "x")
    texts = [label.get_text() for label in shown_tick_labels(fig, ax, "x")]
    assert texts[0] == "0 KB" and texts[-1].endswith(" KB") and all(text.endswith(" KB") for text in texts), texts
