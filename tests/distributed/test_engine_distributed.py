"""Real torchrun/gloo workers: byte accounting, 1-rank vs N-rank equivalence, nothing bypassing
the Communicator, and the TensorBoard trade-off curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pfl_dist.sampling import sample_clients
from pfl_dist.tensorboard_views import wire_group
from tests.distributed.conftest import BASE, ROUNDS, counted
from tests.helpers import global_weights, read_metrics, read_summary, run_inprocess

pytestmark = pytest.mark.distributed

MODEL_BYTES = 10 * 2 * 4  # d x C float32


def test_one_collective_per_round_and_byte_formulas(four_rank_run: Path) -> None:
    comm = read_summary(four_rank_run)["comm"]
    assert comm["num_collectives"] == ROUNDS
    num_sampled = 4
    assert comm["uplink_bytes"] == ROUNDS * num_sampled * MODEL_BYTES
    assert comm["downlink_bytes"] == comm["uplink_bytes"]
    per_rank_payload = (10 * 2 + 2) * 4  # the flat buffer: weighted model sum, weight total, stop count
    assert comm["payload_bytes"] == ROUNDS * 4 * per_rank_payload
    assert comm["wire_bytes_model"] / comm["payload_bytes"] == pytest.approx(2 * 3 / 4, rel=0.01)
    assert comm["wire_bytes_measured"] is None  # no GLOO_SOCKET_IFNAME here


def test_one_rank_and_four_ranks_agree(four_rank_run: Path, tmp_path: Path) -> None:
    one = run_inprocess(tmp_path, *BASE)
    four = read_summary(four_rank_run)
    diff = (global_weights(tmp_path / "run") - global_weights(four_rank_run)).abs().max()
    assert float(diff) < 1e-5
    for key in ("uplink_bytes", "downlink_bytes", "num_collectives"):
        assert one["comm"][key] == four["comm"][key]
    assert one["participation"]["update_counts"] == four["participation"]["update_counts"]
    expected = np.zeros(8)
    for t in range(ROUNDS):
        expected[sample_clients(t, seed=0, num_clients=8, sample_fraction=0.5)] += 1
    assert four["participation"]["update_counts"] == expected.tolist()
    for name, value in one["final"].items():
        assert four["final"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_tradeoff_curve_steps_are_cumulative_training_wire_bytes(four_rank_run: Path) -> None:
    records = read_metrics(four_rank_run)
    assert [r["round"] for r in records] == [0, 3, 6]
    events = EventAccumulator(str(four_rank_run), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars(f"{wire_group(4)}/ITR/fedclup")
    assert [p.step for p in points] == [r["comm"]["wire_bytes_model"] for r in records]
    assert [p.value for p in points] == pytest.approx([r["metrics"]["eval/ITR"] for r in records], rel=1e-6)
    assert points[-1].step == read_summary(four_rank_run)["comm"]["wire_bytes_model"] > 0
    assert len(events.Scalars("comm/uplink_bytes")) == ROUNDS


def test_local_training_sends_no_training_bytes(four_rank_runs: Path) -> None:
    summary = read_summary(four_rank_runs / "local")  # BASE with algorithm.name=local, 4 ranks
    assert summary["comm"]["payload_bytes"] == 0
    assert summary["comm"]["wire_bytes_model"] == 0
    assert summary["comm"]["num_collectives"] == 0
    assert summary["comm_telemetry"]["num_collectives"] > 0  # evaluation still reduces metrics


def test_no_collective_bypasses_the_communicator(counted_runs: Path) -> None:
    summary, seen_by_rank = counted(counted_runs, "codec-none")  # BASE, 2 ranks under the counter
    ledger_collectives = summary["comm"]["num_collectives"] + summary["comm_telemetry"]["num_collectives"]
    ledger_payload = (summary["comm"]["payload_bytes"] + summary["comm_telemetry"]["payload_bytes"]) // 2
    for seen in seen_by_rank:
        collectives = [op for op in seen["ops"] if op != "barrier"]
        assert len(collectives) == ledger_collectives
        assert set(collectives) == {"allreduce_"}
        assert seen["payload_bytes"] == ledger_payload
    # forming and ending the process group (outside every run): barriers only
    for rank in range(2):
        outside = json.loads((counted_runs / f"outside_rank{rank}.json").read_text())
        assert set(outside["ops"]) <= {"barrier"} and outside["payload_bytes"] == 0, outside


def test_the_final_global_model_file_matches_the_summary_hash(four_rank_run: Path) -> None:
    import hashlib

    weights = global_weights(four_rank_run)
    summary = read_summary(four_rank_run)
    assert weights.dtype == torch.float32 and weights.shape == (10, 2)
    digest = hashlib.sha256(weights.contiguous().numpy().tobytes()).hexdigest()
    assert digest == summary["global_model_sha256"]
