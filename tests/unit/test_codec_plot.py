"""The codec study's figure and table (pfl_dist/sweep/codecs.py) from a tiny sweep over codecs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.codecs import table_rows
from pfl_dist.sweep.plot import render
from pfl_dist.sweep.results import find_runs
from tests.unit.test_plot import PNG, tiny_sweep

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
