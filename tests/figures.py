"""What a figure shows, read from the figure objects the plotting code saves: run dirs written
by hand (summary.json and metrics.jsonl as a run writes them, no training), so a figure can be
given exactly the data that shows a problem (identical curves, world sizes, seven codecs of one
method, bytes of any size), and the panels, curves, tick labels and notes of what was drawn.
The `drawn` fixture (tests/unit/conftest.py) collects every figure a test saves."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from pfl_dist.methods import METHODS
from pfl_dist.sweep.results import Run

UNIT_TICK = re.compile(r"^\d+(\.\d+)? (B|KB|MB|GB|TB)$")


@dataclass
class Saved:
    """A figure as it was saved, and the dpi it was saved at."""

    figure: Figure
    dpi: Any


def write_fake_run(directory: Path, *, method: str, lam: float | str = 0.0, codec: str = "none",
                   kind: str = "fashion_mnist", world_size: int = 2, fl_per_round: float = 2e6,
                   wire_per_round: float | None = None, accuracy: Sequence[float] = (0.5, 0.6, 0.7, 0.8),
                   global_accuracy: Sequence[float] | None = None, k: int = 5) -> Run:
    """A finished run: one record per round 0..len(accuracy)-1, bytes growing linearly per round
    (none for a method that sends nothing); wire bytes default to FL bytes x (W - 1) / W."""
    info = METHODS[method]
    wire = fl_per_round * (world_size - 1) / world_size if wire_per_round is None else wire_per_round
    sends = 1.0 if info.communicates else 0.0
    config = {"algorithm": {"name": method, "lam": lam, "num_local_steps": k, "sample_fraction": 1.0},
              "data": {"kind": kind, "R": 1.0, "classes_per_client": 2, "num_clients": 4},
              "comm": {"codec": codec}, "train": {"num_rounds": len(accuracy) - 1}, "run": {"seed": 0}}
    glob = list(global_accuracy if global_accuracy is not None else accuracy)
    records = [{"round": t, "metrics": {"eval/acc_personal": acc, "eval/acc_global": glob[t]},
                "comm": {"wire_bytes_model": sends * wire * t, "uplink_bytes": sends * fl_per_round * t / 2,
                         "downlink_bytes": sends * fl_per_round * t / 2}} for t, acc in enumerate(accuracy)]
    last = records[-1]["comm"]
    summary = {"config": config, "world_size": world_size, "num_rounds_completed": len(accuracy) - 1,
               "method": info.to_dict(), "final": {"acc_personal": accuracy[-1], "acc_global": glob[-1]},
               "comm": {**last, "uplink_bytes_dense": last["uplink_bytes"], "num_collectives": len(accuracy) - 1},
               "time": {"wall_s": 1.0, "round_s_median": 0.1}}
    return save_run(directory, summary, records)


def save_run(directory: Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> Run:
    """A run dir as the sweep reads it: summary.json and metrics.jsonl (one record per line)."""
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (directory / "summary.json").write_text(json.dumps(summary))
    return Run(directory)


def titled(saved: Sequence[Saved], start: str) -> list[Figure]:
    return [s.figure for s in saved if s.figure.get_suptitle().startswith(start)]


def data_axes(fig: Figure) -> list[Axes]:
    """The figure's panels (not its colour bars or legends): axes with an x label."""
    return [ax for ax in fig.axes if ax.get_xlabel()]


def shown_tick_labels(fig: Figure, ax: Axes, which: str) -> list[Text]:
    """The tick labels drawn on an axis (ticks inside the view, with text), after a draw."""
    FigureCanvasAgg(fig).draw()
    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = sorted(axis.get_view_interval())
    span = high - low
    return [tick.label1 for tick in axis.get_major_ticks(len(axis.get_majorticklocs()))
            if low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span
            and tick.label1.get_visible() and tick.label1.get_text()]


def overlapping(fig: Figure, labels: Sequence[Text]) -> list[tuple[str, str]]:
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def data_lines(ax: Axes) -> list[Line2D]:
    """The curves of a panel: lines of more than one point with a legend label (not the Pareto
    front, reference lines or lone markers)."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 1 and not line.get_label().startswith("_")
            and line.get_label() != "Pareto front" and "0 bytes" not in line.get_label()]


def notes(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.texts if "identical" in text.get_text()]
