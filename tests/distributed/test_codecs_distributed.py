"""Every codec on real gloo ranks: the ledger's bytes are the bytes c10d was handed, the uplink
is the clients' encoded messages, and 1 rank and 4 ranks agree. The distributed runs are the
session's shared jobs (tests/distributed/conftest.py: `counted_runs`, `four_rank_runs`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pfl_dist.sampling import sample_clients
from tests.distributed.conftest import BASE, CODECS, ROUNDS, counted
from tests.helpers import global_weights, read_summary, run_inprocess

pytestmark = pytest.mark.distributed

NUM_PARAMS = 10 * 2  # BASE: d = 10, C = 2, float32 weight matrix (10, 2)


def message_bytes(codec: str) -> int:
    """One client's message, from each codec's definition (float32 model of 20 numbers)."""
    name, _, param = codec.partition(":")
    if name == "none":
        return NUM_PARAMS * 4
    if name in ("fp16", "bf16"):
        return NUM_PARAMS * 2
    if name == "qsgd":
        levels, _, bucket = param.partition(":")
        bits = math.ceil(math.log2(2 * int(levels) + 1))  # 2s + 1 symbols
        buckets = math.ceil(NUM_PARAMS / int(bucket or 512))
        return buckets * 4 + math.ceil(NUM_PARAMS * bits / 8)  # a scale per bucket + packed signed levels
    k = max(1, round(float(param) * NUM_PARAMS)) if name in ("topk", "randk") else 0
    if name == "topk":
        return k * (4 + 4)  # float32 values + int32 indices
    if name == "randk":
        return k * 4  # values only: the coordinates come from the shared seed
    assert name == "powersgd" and param == "1"
    return (10 + 2) * 1 * 4  # P (10 x 1) and Q (2 x 1) of the one weight matrix


def expected_uplink(codec: str) -> int:
    sampled = sum(len(sample_clients(t, seed=0, num_clients=8, sample_fraction=0.5)) for t in range(ROUNDS))
    return sampled * message_bytes(codec)


@pytest.mark.parametrize("codec", CODECS)
def test_ledger_bytes_are_the_bytes_handed_to_c10d(counted_runs: Path, codec: str) -> None:
    # Prepare / Execute: 2 ranks under the dispatch-mode counter (the session's counted job)
    summary, seen_by_rank = counted(counted_runs, f"codec-{codec}")
    train, telemetry = summary["comm"], summary["comm_telemetry"]
    # Assert: per collective type, count and bytes per rank (ledger totals are over 2 ranks)
    for seen in seen_by_rank:
        ops = [op for op in seen["ops"] if op != "barrier"]
        assert set(ops) <= {"allreduce_", "_allgather_base_"}
        assert ops.count("allreduce_") == train["all_reduce_num_collectives"] + telemetry["all_reduce_num_collectives"]
        assert ops.count("_allgather_base_") == train["all_gather_num_collectives"]
        all_reduce_bytes = (train["all_reduce_payload_bytes"] + telemetry["all_reduce_payload_bytes"]) // 2
        assert seen["bytes_by_op"].get("allreduce_", 0) == all_reduce_bytes
        assert seen["bytes_by_op"].get("_allgather_base_", 0) == train["all_gather_payload_bytes"] // 2
        assert seen["gathered_bytes"] == train["all_gather_payload_bytes"]  # W x each rank's share
        assert seen["payload_bytes"] == (train["payload_bytes"] + telemetry["payload_bytes"]) // 2
    assert train["uplink_bytes"] == expected_uplink(codec)
    assert train["uplink_bytes_dense"] == expected_uplink("none")
    gathers = codec.split(":")[0] in ("qsgd", "topk")
    assert (train["all_gather_num_collectives"] > 0) == gathers
    # Ring formulas at W = 2, per rank: all-reduce 2(W-1)/W x payload = payload; all_gather
    # (W-1)/W of the gathered total 2B = B, its own payload
    assert train["all_reduce_wire_bytes_model"] == train["all_reduce_payload_bytes"]
    assert train["all_gather_wire_bytes_model"] == train["all_gather_payload_bytes"]


@pytest.mark.parametrize("codec", CODECS[1:])
def test_one_rank_and_four_ranks_agree_per_codec(tmp_path: Path, four_rank_runs: Path, codec: str) -> None:
    # Execute: one rank here; 4 ranks in the session's 4-rank job
    one = run_inprocess(tmp_path, *BASE, f"comm.codec={codec}", name="one")
    four_dir = four_rank_runs / f"codec-{codec}"
    four = read_summary(four_dir)
    # Assert
    single = global_weights(tmp_path / "one")
    difference = float((single - global_weights(four_dir)).abs().max())
    print(f"{codec}: max |w_g(1 rank) - w_g(4 ranks)| = {difference:.3g}")
    # fp16/bf16 all-reduce the ranks' partial sums in half precision, and how the clients are
    # split over ranks changes the rounding. Per round, 1 rank rounds the scaled mean update once
    # and W ranks round their W partial sums and the W - 1 additions of the ring, each summand
    # and partial sum bounded by B = sum_i w_i max|Delta_i| (times the exact power-of-two scale):
    # the two mean updates differ by at most (W + 1) (eps / 2) B (tests/unit/test_codecs.py has the
    # step by step bound). Here Delta_i = w_i - w_g with |w_i|, |w_g| <= max|w_g| (the stable
    # step sizes of BASE keep the models at w_g's scale), so B <= 2 max|w_g|, and with stable steps
    # a round does not amplify an earlier round's difference: over ROUNDS rounds at most
    # ROUNDS (W + 1) eps max|w_g|, epsilon x the number of half-precision summands per round x
    # the rounds x w_g's scale.
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(codec)
    world_size = 4
    tolerance = 1e-5 if half is None else ROUNDS * (world_size + 1) * torch.finfo(half).eps * float(
        single.abs().max())
    assert difference <= tolerance
    for key in ("uplink_bytes", "uplink_bytes_dense", "downlink_bytes", "num_collectives",
                "all_reduce_num_collectives", "all_gather_num_collectives"):
        assert one["comm"][key] == four["comm"][key], key
    events = EventAccumulator(str(four_dir), size_guidance={"scalars": 0})
    events.Reload()
    ratios = [p.value for p in events.Scalars("comm/compression_ratio")]
    assert len(ratios) == ROUNDS
    assert ratios == pytest.approx([message_bytes("none") / message_bytes(codec)] * ROUNDS, rel=1e-6)
