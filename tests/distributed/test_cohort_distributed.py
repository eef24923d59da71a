"""Evaluation on a cohort (train.eval_clients=N) on 2 ranks reports the metrics and standard
errors of the same run on one process: each rank evaluates the cohort members it hosts, also none."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfl_dist.sampling import client_block, eval_cohort
from tests.helpers import read_metrics, read_summary, run_inprocess, run_torchrun_points

pytestmark = pytest.mark.distributed

BASE = ("data.num_clients=12", "data.samples_per_client=40", "algorithm.num_local_steps=10",
        "algorithm.sample_fraction=0.5", "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64")
POINTS = {
    "spread": (*BASE, "run.seed=1", "train.eval_clients=5"),
    "rank0_only": (*BASE, "run.seed=12", "train.eval_clients=3"),  # cohort [0, 3, 5]: rank 1 hosts none
}


def test_two_ranks_report_the_one_process_cohort_metrics(tmp_path: Path) -> None:
    # Prepare: the second point's cohort lies on rank 0's clients only
    assert set(eval_cohort(seed=12, num_clients=12, size=3)) <= set(client_block(0, world_size=2, num_clients=12))
    # Execute
    run_torchrun_points(tmp_path / "two", 2, POINTS)
    for name, overrides in POINTS.items():
        one = run_inprocess(tmp_path / "one", *overrides, name=name)
        two = read_summary(tmp_path / "two" / name)
        assert (one["world_size"], two["world_size"]) == (1, 2)
        # Assert: every evaluation's metrics, standard errors included, to 1e-12
        assert "train/acc_personal_se" in two["final"] and two["final"].keys() == one["final"].keys()
        assert two["participation"] == one["participation"] and two["evaluation"] == one["evaluation"]
        for got, want in zip(read_metrics(tmp_path / "two" / name), read_metrics(tmp_path / "one" / name),
                             strict=True):
            assert got["round"] == want["round"]
            assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-12, abs=1e-12)
            assert got["personal"] == pytest.approx(want["personal"], rel=1e-12, abs=1e-12)
