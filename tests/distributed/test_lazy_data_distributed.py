"""Lazy client data (data.lazy=true) on 2 ranks: each rank generates (synthetic), reads (client
files) or asks a plug-in dataset's client(i) for the sampled and cohort clients it hosts; the run
is the 2-rank eager run bit for bit (and, synthetic, the one-process run to 1e-12)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.data_fixtures import write_reference_csv_clients
from tests.helpers import read_metrics, read_summary, run_inprocess, run_torchrun_points, user_folder

pytestmark = pytest.mark.distributed

BASE = ("data.num_clients=24", "data.samples_per_client=30", "data.dim=6", "data.num_classes=3", "run.seed=3",
        "algorithm.num_local_steps=5", "algorithm.sample_fraction=0.25", "train.num_rounds=4",
        "train.eval_every=2", "train.dtype=float64", "train.eval_clients=7")
METHODS = ("fedclup", "scaffold")
POINTS = {f"{name}_{lazy}": (*BASE, f"algorithm.name={name}", f"data.lazy={lazy}")
          for name in METHODS for lazy in ("true", "false")}


def test_two_lazy_ranks_are_the_eager_run_and_the_one_process_run(tmp_path: Path) -> None:
    # Execute: lazy and eager on 2 ranks (one torchrun job), lazy on one process
    run_torchrun_points(tmp_path / "two", 2, POINTS)
    for name in METHODS:
        lazy, eager = (read_summary(tmp_path / "two" / f"{name}_{v}") for v in ("true", "false"))
        one = run_inprocess(tmp_path / "one", *POINTS[f"{name}_true"], name=name)
        # Assert: 2 lazy ranks = 2 eager ranks bit for bit; = one process to 1e-12 (summation order)
        assert lazy["world_size"] == 2 and one["world_size"] == 1
        assert lazy["global_model_sha256"] == eager["global_model_sha256"]
        assert lazy["final"] == eager["final"] and lazy["participation"] == eager["participation"]
        assert lazy["participation"] == one["participation"] and lazy["evaluation"] == one["evaluation"]
        for got, want in zip(read_metrics(tmp_path / "two" / f"{name}_true"), read_metrics(tmp_path / "one" / name),
                             strict=True):
            assert got["round"] == want["round"]
            assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-12, abs=1e-12)
            assert got["personal"] == pytest.approx(want["personal"], rel=1e-12, abs=1e-12)


def assert_two_lazy_ranks_are_the_eager_run(out: Path, name: str, base: tuple[str, ...]) -> list[dict[str, Any]]:
    """`base` with data.lazy true and false on 2 ranks (one torchrun job): the same run bit for bit,
    every metric of every evaluation. -> the lazy run's metrics."""
    points = {f"{name}_{lazy}": (*base, f"data.lazy={lazy}") for lazy in ("true", "false")}
    run_torchrun_points(out, 2, points)
    lazy, eager = (read_summary(out / f"{name}_{v}") for v in ("true", "false"))
    assert lazy["world_size"] == eager["world_size"] == 2
    assert lazy["global_model_sha256"] == eager["global_model_sha256"]
    assert lazy["final"] == eager["final"] and lazy["participation"] == eager["participation"]
    metrics = [r["metrics"] for r in read_metrics(out / f"{name}_true")]
    assert metrics == [r["metrics"] for r in read_metrics(out / f"{name}_false")]
    return metrics


def test_two_lazy_ranks_on_client_files_are_the_eager_run(tmp_path: Path) -> None:
    # Prepare: CSV clients (scaled; true models) read lazily by 2 ranks, each its own clients' files
    folder = write_reference_csv_clients(tmp_path / "files", num_clients=14, num_samples=20, dim=5, seed=4)
    base = ("data.kind=client_files", f"data.data_dir={folder}", "data.num_clients=14", "data.dim=5",
            "data.test_fraction=0.2", "data.val_fraction=0.2", "run.seed=3", "algorithm.name=scaffold",
            "algorithm.num_local_steps=3", "algorithm.sample_fraction=0.3", "train.num_rounds=4",
            "train.eval_every=2", "train.dtype=float64", "train.eval_clients=5")
    # Execute / Assert: 2 lazy ranks = 2 eager ranks bit for bit, every metric of every evaluation
    assert_two_lazy_ranks_are_the_eager_run(tmp_path / "two", "files", base)


def test_two_lazy_ranks_on_a_plugin_dataset_are_the_eager_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: tests/unit/test_lazy_dataset.py's ragged dataset (client_size; float32 and float64
    # clients of 6..19 train rows) in a folder of its own on PYTHONPATH, read lazily by 2 ranks
    from tests.unit.test_lazy_dataset import USER_DATASET

    user_folder(tmp_path, monkeypatch, user_lazy=textwrap.dedent(USER_DATASET))
    base = ("data.kind=user_lazy:ragged", "data.num_clients=14", "data.val_fraction=0.2", "run.seed=3",
            "algorithm.name=scaffold", "algorithm.num_local_steps=3", "algorithm.sample_fraction=0.3",
            "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64", "train.eval_clients=5")
    # Execute / Assert: 2 lazy ranks = 2 eager ranks bit for bit, every metric of every evaluation
    metrics = assert_two_lazy_ranks_are_the_eager_run(tmp_path / "two", "plugin", base)
    assert "eval/acc_global_se" in metrics[-1]
