"""Figures and the trade-off table from tiny sweeps trained in-process (no process group), and
the trade-off math (Pareto front, bytes to reach a target, byte axis) on hand-made curves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

from pfl_dist.checkpoint import StopRequest
from pfl_dist.netem import sweep as netem_sweep
from pfl_dist.runtime import Runtime
from pfl_dist.sweep.plot import METRIC_LABELS, render, styles
from pfl_dist.sweep.plot import main as plot_main
from pfl_dist.sweep.results import find_runs, write_results_csv
from pfl_dist.sweep.spec import load_sweep
from pfl_dist.sweep.style import method_styles
from pfl_dist.sweep.tradeoff import Curve, byte_axis, bytes_to_reach, default_targets, pareto_front
from pfl_dist.sweep.worker import run_point
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
from tests.helpers import TINY, write_learnable_mnist, write_sweep

METHODS = {"fedavg": {"algorithm.name": "fedavg"}, "local": {"algorithm.name": "local", "algorithm.lam": 0.0},
           "clup": {"algorithm.name": "fedclup", "algorithm.lam": [0.1, 1.0]}}
METRICS_NETEM = ("acc_personal", "acc_global")
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_sweep(out: Path, overrides: dict[str, Any] = TINY, **fields: Any) -> Path:
    """Train every point of a sweep in this process on one Runtime, as the in-job worker does
    (one session per point), minus the ranks."""
    path = write_sweep(out.with_suffix(".yaml"), out_dir=str(out), overrides=overrides,
                       launch={"nproc_per_node": 1}, **fields)
    sweep = load_sweep(path)
    runtime = Runtime(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)
    for point in sweep.points:
        run_point(point.cfg, runtime, {"name": point.name, "variant": point.variant}, stop=StopRequest())
    write_results_csv(out / "results.csv", find_runs(out, [p.name for p in sweep.points]))
    return out


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("sweeps")
    (root / "mnist").mkdir()
    mnist = write_learnable_mnist(root / "mnist", num_train=600, num_test=100)
    images = {"data.kind": "mnist", "data.data_dir": str(mnist), "data.num_clients": 4, "data.num_partitions": 6,
              "algorithm.local_lr": 0.05, "algorithm.global_lr": "1/lam", "algorithm.batch_size": 16,
              "algorithm.local_epochs": 1, "train.num_rounds": 2, "train.eval_every": 1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread avoids sync costs on a busy box
    yield {
        "R": tiny_sweep(root / "r", variants=METHODS, grid={"data.R": [0.5, 2.0]}),
        "K": tiny_sweep(root / "k", grid={"algorithm.num_local_steps": [2, 5]}),
        "classes": tiny_sweep(root / "c", variants={k: METHODS[k] for k in ("fedavg", "local")},
                              grid={"data.classes_per_client": [2, 3]}, overrides=images),
        "none": tiny_sweep(root / "n", variants=METHODS),
    }
    torch.set_num_threads(threads)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


@pytest.mark.parametrize(("sweep", "figure", "file"), [
    ("R", "stat_error_vs_R", "stat_error_vs_R.png"),
    ("K", "local_steps", "local_steps.png"),
    ("classes", "images", "images_vs_classes.png"),
    ("none", "total_error_vs_rounds", "total_error_vs_rounds.png"),
])
def test_each_figure_is_drawn_from_what_the_sweep_varies(sweeps: dict[str, Path], tmp_path: Path, sweep: str,
                                                         figure: str, file: str) -> None:
    rendered = render(sweeps[sweep], tmp_path)
    assert set(rendered.figures) == {figure, "tradeoff"}
    assert rendered.figures[figure] == tmp_path / file
    assert_png(rendered.figures[figure])
    assert_png(rendered.figures["tradeoff"])


def test_tradeoff_table_has_a_row_per_method_and_facet(sweeps: dict[str, Path], tmp_path: Path) -> None:
    rendered = render(sweeps["R"], tmp_path, prefix="r_")
    rows = [line for line in rendered.table_markdown.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 * 4  # R in {0.5, 2.0} x {LocalTrain, FedCLUP 0.1, FedCLUP 1, FedAvg}
    assert rows[0].startswith("| R=0.5 | LocalTrain |") and rows[3].startswith("| R=0.5 | FedAvg |")
    assert "| 0 B |" in rows[0]  # LocalTrain sends nothing
    assert rendered.metric == "ITR" and "uplink + downlink" in rendered.axis_label  # 1 process: no wire
    assert rendered.table_paths == (tmp_path / "r_tradeoff_table.md", tmp_path / "r_tradeoff_table.csv")


def test_cli_writes_figures_and_prints_the_table(sweeps: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_main([str(sweeps["none"]), "--out", str(tmp_path), "--target", "100"]) == 0
    out = capsys.readouterr().out
    assert "bytes to ITR <= 100" in out and "figure: " + str(tmp_path / "tradeoff.png") in out
    assert "not reached" not in out  # every curve starts below ITR 100


def test_one_figure_legend_and_200_dpi(sweeps: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[tuple[Figure, Any]] = []
    real_savefig = Figure.savefig

    def savefig(fig: Figure, path: Any, **kwargs: Any) -> None:
        saved.append((fig, kwargs.get("dpi")))
        real_savefig(fig, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    render(sweeps["R"], tmp_path)
    assert len(saved) == 2  # stat_error_vs_R and the faceted trade-off figure
    for fig, dpi in saved:
        assert dpi == 200
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        labels = [text.get_text() for text in fig.legends[0].get_texts()]
        assert len(labels) == len(set(labels)) and "FedAvg" in labels and r"FedCLUP $\lambda$=0.1" in labels
        assert all("$" in ax.get_ylabel() for ax in fig.axes)  # mathtext axis labels


def test_a_method_looks_the_same_in_every_figure(sweeps: dict[str, Path]) -> None:
    everything = styles(find_runs(sweeps["R"]))  # LocalTrain, FedCLUP 0.1 and 1, FedAvg
    fewer = styles(find_runs(sweeps["classes"]))  # FedAvg and LocalTrain only
    assert fewer["FedAvg"] == everything["FedAvg"] and fewer["LocalTrain"] == everything["LocalTrain"]
    markers = {label: style.marker for label, style in everything.items()}
    assert markers["FedCLUP λ=0.1"] == markers["FedCLUP λ=1"]
    assert len({markers["FedAvg"], markers["LocalTrain"], markers["FedCLUP λ=1"]}) == 3
    assert everything["FedCLUP λ=0.1"].color != everything["FedCLUP λ=1"].color  # shades of one family
    assert method_styles([("FedAvg", "fedavg", False)])["FedAvg"] == fewer["FedAvg"]


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_format_option_writes_vector_figures(sweeps: dict[str, Path], tmp_path: Path, fmt: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_main([str(sweeps["none"]), "--out", str(tmp_path), "--format", fmt]) == 0
    written = sorted(p.name for p in tmp_path.glob(f"*.{fmt}"))
    assert written == sorted([f"total_error_vs_rounds.{fmt}", f"tradeoff.{fmt}"])
    head = (tmp_path / f"tradeoff.{fmt}").read_bytes()[:400]
    assert head.startswith(b"%PDF") if fmt == "pdf" else b"<svg" in head
    assert not list(tmp_path.glob("*.png"))


# --- the trade-off math ----------------------------------------------------------------------


def curve(label: str, num_bytes: list[float], values: list[float]) -> Curve:
    return Curve(label=label, facet="", rounds=list(range(len(values))), num_bytes=num_bytes, values=values,
                 communicates=True)


def test_pareto_front_keeps_only_undominated_points() -> None:
    fast = curve("a", [0, 10, 20, 30], [9.0, 5.0, 4.0, 3.9])
    slow = curve("b", [0, 10, 20, 30], [9.0, 7.0, 3.0, 2.0])
    assert pareto_front([fast, slow], metric="ITR") == [(0, 9.0), (10, 5.0), (20, 3.0), (30, 2.0)]
    acc = curve("c", [0, 10, 20], [0.5, 0.9, 0.8])
    assert pareto_front([acc], metric="acc_personal") == [(0, 0.5), (10, 0.9)]


def test_bytes_to_reach_and_default_targets() -> None:
    a = curve("a", [0, 10, 20, 30], [9.0, 5.0, 4.0, 3.9])
    b = curve("b", [0, 10, 20, 30], [9.0, 7.0, 3.0, 2.0])
    assert bytes_to_reach(a, 5.0, metric="ITR") == (10, 1)
    assert bytes_to_reach(a, 3.0, metric="ITR") is None
    assert bytes_to_reach(b, 3.0, metric="ITR") == (20, 2)
    assert default_targets([a, b], metric="ITR") == [3.9, 2.95]  # worst final, median final
    assert default_targets([a, a], metric="ITR") == [3.9]


def test_byte_axis_falls_back_to_fl_bytes_when_nothing_crossed_a_wire(sweeps: dict[str, Path]) -> None:
    runs = find_runs(sweeps["none"])  # trained in one process: wire bytes are 0
    assert all(r.summary["comm"]["wire_bytes_model"] == 0 for r in runs)
    kind, label = byte_axis(runs)
    assert kind == "fl" and "uplink + downlink" in label


def test_round_step_and_class_axes_have_integer_ticks(sweeps: dict[str, Path], tmp_path: Path,
                                                      drawn: list[Saved]) -> None:
    for sweep in ("none", "K", "classes"):  # x: rounds (4 here), rounds (with K), classes (2 and 3)
        render(sweeps[sweep], tmp_path / sweep)
    integer_axes = [ax for s in drawn for ax in data_axes(s.figure)
                    if "round" in ax.get_xlabel() or "classes per client" in ax.get_xlabel()]
    assert len(integer_axes) == 2 + 2 + 2
    for ax in integer_axes:
        labels = [label.get_text().replace("\u2212", "-") for label in shown_tick_labels(ax.get_figure(), ax, "x")]
        assert len(labels) >= 2 and all(re.fullmatch(r"-?\d+", text) for text in labels), labels


def test_byte_axes_tick_in_units_and_labels_do_not_overlap(sweeps: dict[str, Path], tmp_path: Path,
                                                           drawn: list[Saved]) -> None:
    render(sweeps["R"], tmp_path)
    (fig,) = titled(drawn, "trade-off")
    for ax in data_axes(fig):
        labels = shown_tick_labels(fig, ax, "x")
        assert all(UNIT_TICK.match(label.get_text()) for label in labels), [label.get_text() for label in labels]
        assert not overlapping(fig, labels)
        assert "[" not in ax.get_xlabel()  # the unit is on the ticks, not a scale in the label


def family_runs(root: Path) -> Path:
    """FedAvg, Ditto, APFL and FedAvg-FT train the same global model (the same global accuracy
    and bytes at every round, as in RESULTS §8) but differ in personal accuracy; FedCLUP differs
    in both; LocalTrain sends nothing."""
    shared = [0.1, 0.2, 0.35, 0.43]
    for i, method in enumerate(("fedavg", "ditto", "apfl", "fedavg_ft")):
        write_fake_run(root / method, method=method, lam=0.5 if method == "ditto" else 0.0,
                       accuracy=[0.4, 0.5 + i / 20, 0.6 + i / 20, 0.7 + i / 20], global_accuracy=shared)
    write_fake_run(root / "fedclup", method="fedclup", lam=0.2, accuracy=[0.4, 0.7, 0.75, 0.8],
                   global_accuracy=[0.1, 0.15, 0.17, 0.18])
    write_fake_run(root / "local", method="local", accuracy=[0.4, 0.8, 0.82, 0.82], global_accuracy=[0.1] * 4)
    return root


def test_curves_that_coincide_exactly_are_named_in_a_note(tmp_path: Path, drawn: list[Saved]) -> None:
    render(family_runs(tmp_path / "runs"), tmp_path / "figures")
    panels = [ax for name in ("trade-off", "accuracy per round") for fig in titled(drawn, name)
              for ax in data_axes(fig)]
    assert len(panels) >= 4  # personal and global accuracy vs bytes (FL, wire) and vs rounds
    for ax in panels:
        if "global" in ax.get_ylabel():
            (note,) = notes(ax)
            assert all(name in note for name in ("FedAvg", "Ditto", "APFL", "FedAvg-FT")), note
            assert "FedCLUP" not in note and "LocalTrain" not in note
        else:
            assert notes(ax) == []  # their personal models differ


def test_the_default_byte_axis_is_fl_bytes_and_wire_bytes_never_mix_world_sizes(tmp_path: Path,
                                                                                 drawn: list[Saved]) -> None:
    # Prepare: FedAvg ran on 2 processes, FedCLUP on 4 (the same FL bytes, other wire bytes)
    root = tmp_path / "runs"
    write_fake_run(root / "fedavg", method="fedavg", world_size=2)
    write_fake_run(root / "fedclup", method="fedclup", lam=0.5, world_size=4)
    write_fake_run(root / "local", method="local", world_size=2)
    # Execute
    render(root, tmp_path / "figures")
    # Assert: one FL figure with every run, then a wire figure per world size with its runs only
    figures = titled(drawn, "trade-off")
    fl = [fig for fig in figures if all("uplink + downlink" in ax.get_xlabel() for ax in data_axes(fig))]
    assert len(fl) == 1
    fedclup = r"FedCLUP $\lambda$=0.5"
    assert {line.get_label() for ax in data_axes(fl[0]) for line in data_lines(ax)} == {"FedAvg", fedclup}
    wire = {}
    for fig in figures:
        if fig is fl[0]:
            continue
        sizes = {size for ax in data_axes(fig) for size in re.findall(r"W = (\d+) ranks", ax.get_xlabel())}
        assert len(sizes) == 1 and all("wire" in ax.get_xlabel() for ax in data_axes(fig))
        wire[sizes.pop()] = {line.get_label() for ax in data_axes(fig) for line in data_lines(ax)}
    assert wire == {"2": {"FedAvg"}, "4": {fedclup}}


def test_netem_figure_has_the_shared_look(tmp_path: Path, drawn: list[Saved]) -> None:
    methods = {"FedAvg": "fedavg", "LocalTrain": "local", "FedCLUP λ=0.5": "fedclup"}
    curves = {metric: [Curve(label=label, facet=f"rate={rate}", rounds=[0, 1, 2], num_bytes=[0.0, 1.0, 2.0],
                             values=[0.1, 0.2 + i / 10, 0.3 + i / 10], communicates=True,
                             seconds=[0.0, 1.0 + i, 2.0 + i])
                       for rate in ("1 Mbit/s", "10 Mbit/s") for i, label in enumerate(methods)]
              for metric in METRICS_NETEM}
    palette = method_styles([(label, name, False) for label, name in methods.items()])
    netem_sweep.plot(curves, tmp_path / "time_to_accuracy.png", palette=palette, num_nodes=4)
    (saved,) = drawn
    assert saved.dpi == 200
    assert len(saved.figure.legends) == 1 and all(ax.get_legend() is None for ax in saved.figure.axes)
    assert {ax.get_ylabel() for ax in data_axes(saved.figure)} == {METRIC_LABELS[m] for m in METRICS_NETEM}


def test_a_varied_setting_of_methods_that_send_nothing_is_drawn(tmp_path: Path, drawn: list[Saved]) -> None:
    for k in (5, 10):  # LocalTrain alone at two K: no method to give a column of its own
        write_fake_run(tmp_path / "runs" / f"local_{k}", method="local", k=k, kind="synthetic")
    rendered = render(tmp_path / "runs", tmp_path / "figures")
    assert set(rendered.figures) == {"local_steps", "tradeoff"}
    for saved in drawn:
        assert all(ax.get_lines() for ax in saved.figure.axes)
        labels = [text.get_text() for text in saved.figure.legends[0].get_texts()]
        assert any("K=5" in label for label in labels) and any("K=10" in label for label in labels), labels
