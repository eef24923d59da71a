"""The codec study's figure and table (pfl_dist/sweep/codecs.py) from a tiny sweep over codecs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.codecs import codec_of, table_rows
from pfl_dist.sweep.plot import render
from pfl_dist.sweep.results import find_runs
from tests.figures import (
    UNIT_TICK,
    Saved,
    data_axes,
    data_lines,
    notes,
    overlapping,
    shown_tick_labels,
    titled,
    write_fake_run,
)
from tests.unit.test_plot import PNG, tiny_sweep
from tests.unit.test_style import delta_e

CODECS = ["none", "fp16", "topk:0.5"]


@pytest.fixture(scope="module")
def codec_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("codecs")
    return tiny_sweep(root / "codecs", variants={"fedavg": {"algorithm.name": "fedavg"},
                                                 "clup": {"algorithm.name": "fedclup", "algorithm.lam": 0.5}},
                      grid={"comm.codec": CODECS})


def test_codec_figure_and_one_curve_per_codec_in_the_tradeoff(codec_sweep: Path, tmp_path: Path) -> None:
    rendered = render(codec_sweep, tmp_path)
    assert set(rendered.figures) == {"codecs", "codecs_table", "tradeoff"}
    assert rendered.figures["codecs"].read_bytes()[:8] == PNG
    rows = [line for line in rendered.table_markdown.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 * len(CODECS)  # codecs are curves of their own, not averaged as seeds
    assert any("codec=topk:0.5" in row for row in rows)


def test_codec_table_bytes_to_the_dense_target(codec_sweep: Path) -> None:
    # Prepare
    runs = find_runs(codec_sweep)
    # Execute
    rows = table_rows(runs)
    # Assert: per method, the dense run's final personal accuracy minus 1 point is the target,
    # and each codec's entry is its first evaluated record at or above it
    assert [(r["method"], r["codec"]) for r in rows] == [(m, c) for m in ("FedAvg", "FedCLUP λ=0.5") for c in CODECS]
    for row in rows:
        run = next(r for r in runs if r.label == row["method"] and r.setting("comm.codec") == row["codec"])
        dense = next(r for r in runs if r.label == row["method"] and r.setting("comm.codec") == "none")
        target = dense.summary["final"]["acc_personal"] - 0.01
        assert row["target"] == f"{run.tag('acc_personal')} >= {target:.4g}"
        hits = [r for r in run.records if r["metrics"]["acc_personal"] >= target]
        expected = (f"{format_bytes(hits[0]['comm']['wire_bytes_model'])} (round {hits[0]['round']})" if hits
                    else "not reached")
        assert row["wire bytes (W=1) to target"] == expected  # trained in one process
        comm = run.summary["comm"]
        assert row["compression"] == f"{comm['uplink_bytes_dense'] / comm['uplink_bytes']:.1f}x"
    assert next(r for r in rows if r["codec"] == "none")["compression"] == "1.0x"
    assert next(r for r in rows if r["codec"] == "fp16")["compression"] == "2.0x"


SEVEN = ["none", "fp16", "bf16", "qsgd:4", "topk:0.01", "randk:0.1", "powersgd:2"]


def fake_codec_sweep(root: Path) -> Path:
    """The codecs sweep's shape, written by hand: FedAvg on Fashion-MNIST; FedAvg and FedCLUP
    on synthetic data with all seven codecs (fp16 and bf16 the same points there), LocalTrain
    beside them; MB-sized and KB-sized bytes."""
    for i, codec in enumerate(SEVEN[:3]):
        write_fake_run(root / f"cnn_fedavg_{i}", method="fedavg", codec=codec, fl_per_round=3.4e6 / (i + 1),
                       accuracy=[0.4, 0.5 + i / 30, 0.6, 0.7])
    for method, lam in (("fedavg", 0.0), ("fedclup", 0.02)):
        for i, codec in enumerate(SEVEN):
            j = 1 if codec in ("fp16", "bf16") else i  # fp16 and bf16: the same bytes and accuracies
            write_fake_run(root / f"syn_{method}_{i}", method=method, lam=lam, codec=codec, kind="synthetic",
                           fl_per_round=8e3 / (1 + j), accuracy=[0.5, 0.6 + j / 50, 0.7 + j / 60, 0.8 + j / 70])
    write_fake_run(root / "syn_local", method="local", kind="synthetic", accuracy=[0.5, 0.7, 0.75, 0.78])
    return root


def told_apart(a: Line2D, b: Line2D) -> bool:
    """Two curves of one panel can be told apart: another marker, fill, line style, or a colour
    at least Delta E 20 away (tests/unit/test_style.py)."""
    return (a.get_marker() != b.get_marker() or a.get_fillstyle() != b.get_fillstyle()
            or a.get_linestyle() != b.get_linestyle() or delta_e(to_rgb(a.get_color()), to_rgb(b.get_color())) >= 20)


def test_every_codec_curve_of_the_tradeoff_figure_is_told_apart(tmp_path: Path, drawn: list[Saved]) -> None:
    render(fake_codec_sweep(tmp_path / "runs"), tmp_path / "figures")
    fig = titled(drawn, "trade-off")[0]  # the default view (FL bytes), then one per world size
    for ax in data_axes(fig):
        lines = data_lines(ax)
        assert lines, ax.get_title()
        same = [(a.get_label(), b.get_label()) for a, b in itertools.combinations(lines, 2) if not told_apart(a, b)]
        assert not same, f"{ax.get_title()}: curves drawn alike: {same}"
    synthetic = [ax for ax in data_axes(fig) if "synthetic" in ax.get_title()]
    assert synthetic and all(len(data_lines(ax)) == len(SEVEN) for ax in synthetic)  # a panel per method


def test_codec_figure_has_no_empty_panel_and_readable_byte_ticks(tmp_path: Path, drawn: list[Saved]) -> None:
    render(fake_codec_sweep(tmp_path / "runs"), tmp_path / "figures")
    fig = titled(drawn, "update codecs")[0]  # the default view (FL bytes), then one per world size
    panels = fig.axes
    assert [ax.get_title() for ax in panels if not data_lines(ax)] == []  # no empty panel
    assert len(panels) == 3  # Fashion-MNIST FedAvg, synthetic FedAvg and FedCLUP: LocalTrain sends nothing
    for ax in panels:
        labels = shown_tick_labels(fig, ax, "x")
        assert len(labels) >= 2 and all(UNIT_TICK.match(label.get_text()) for label in labels), \
            [label.get_text() for label in labels]
        assert not overlapping(fig, labels)
    synthetic = [ax for ax in panels if "synthetic" in ax.get_title()]
    assert all(any("fp16" in note and "bf16" in note for note in notes(ax)) for ax in synthetic)


def test_codec_table_has_a_row_per_uplink_downlink_pair(tmp_path: Path) -> None:
    # Prepare: FedAvg with fp16 or none in each direction (2 x 2 runs)
    sweep = tiny_sweep(tmp_path / "pairs", variants={"fedavg": {"algorithm.name": "fedavg"}},
                       grid={"comm.codec": ["none", "fp16"], "comm.downlink_codec": ["none", "fp16"]})
    runs = find_runs(sweep)
    # Execute
    rows = table_rows(runs)
    rendered = render(sweep, tmp_path / "figures")
    # Assert: four rows, not two averaged as seeds; the downlink's bytes and compression beside the uplink's
    assert [r["codec"] for r in rows] == ["none", "none, down fp16", "fp16", "fp16, down fp16"]
    for row in rows:
        run = next(r for r in runs if codec_of(r) == row["codec"])
        comm = run.summary["comm"]
        assert row["downlink bytes"] == format_bytes(comm["downlink_bytes"])
        assert row["downlink compression"] == f"{comm['downlink_bytes_dense'] / comm['downlink_bytes']:.1f}x"
    assert rows[0]["downlink compression"] == "1.0x" and rows[1]["downlink compression"] != "1.0x"
    assert {"codecs", "codecs_table"} <= set(rendered.figures)
    # the trade-off table: a curve per pair too, not two pairs averaged as seeds
    tradeoff = [line for line in rendered.table_markdown.splitlines()[2:] if line.startswith("|")]
    assert len(tradeoff) == 4 and sum("down=fp16" in row for row in tradeoff) == 2
    # runs without a downlink codec keep the table they had: no downlink columns
    assert "downlink bytes" not in table_rows([r for r in runs if r.setting("comm.downlink_codec") == "none"])[0]
