"""comm.downlink_codec on real gloo ranks: every rank derives the same received model from the
seeded broadcast with no collective of its own, so a 2-rank run is the 1-process run (to float64
summation order) and issues exactly the collectives of the run without a downlink codec. If the
ranks derived different received models (a rank-seeded draw, a rank-local h), the clients of rank
1 would train from another model and w_g would differ by the codec's noise, not by 1e-12."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import BASE
from tests.helpers import global_weights, read_summary, run_inprocess, run_torchrun_points

pytestmark = pytest.mark.distributed

POINTS = {
    # top-k up decodes in client-id order (world-size free), qsgd:4 down draws per round
    "fedavg": (*BASE, "train.dtype=float64", "algorithm.name=fedavg", "algorithm.local_lr=0.05",
               "comm.codec=topk:0.2", "comm.downlink_codec=qsgd:4"),
    # SCAFFOLD receives [x, c]: its c is read from the received copy too
    "scaffold": (*BASE, "train.dtype=float64", "algorithm.name=scaffold", "algorithm.local_lr=0.05",
                 "comm.downlink_codec=randk:0.5"),
}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("downlink")
    run_torchrun_points(out, 2, POINTS)
    return out


@pytest.mark.parametrize("name", list(POINTS))
def test_two_ranks_receive_the_model_one_process_receives(two_rank_runs: Path, tmp_path: Path, name: str) -> None:
    # Execute: the same configs on one process, and without the downlink codec
    one = run_inprocess(tmp_path, *POINTS[name], name="one")
    dense = run_inprocess(tmp_path, *(o for o in POINTS[name] if not o.startswith("comm.downlink")), name="dense")
    two = read_summary(two_rank_runs / name)
    assert two["world_size"] == 2
    # Assert: the same w_g (up to the order of float64 sums), not the dense run's
    difference = float((global_weights(two_rank_runs / name) - global_weights(tmp_path / "one")).abs().max())
    assert difference < 1e-12
    assert float((global_weights(tmp_path / "dense") - global_weights(tmp_path / "one")).abs().max()) > 1e-6
    # no collective of its own: the counts and payloads of the run without a downlink codec
    for key in ("num_collectives", "all_reduce_num_collectives", "all_gather_num_collectives", "uplink_bytes"):
        assert two["comm"][key] == one["comm"][key] == dense["comm"][key], key
    assert two["comm"]["downlink_bytes"] == one["comm"]["downlink_bytes"] < dense["comm"]["downlink_bytes"]
    assert torch.isfinite(global_weights(two_rank_runs / name)).all()
