"""Codec state is per-client (error-feedback residuals) and replicated (PowerSGD's Q) state of
the checkpoint: a run killed mid-way and resumed ends bitwise equal to an uninterrupted one, and
residuals re-shard by client id onto another world size. FedAvg's message is a fresh increment
(a residual per client); FedCLUP's is its kept w_i (no residual: pfl_dist/exchange/base.py
`feedback_rule`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfl_dist.checkpoint import SavedRows
from tests.faults import (
    compare_runs,
    crash_after_checkpoint,
    run_reference,
    start_torchrun,
)
from tests.helpers import global_weights, read_summary

pytestmark = pytest.mark.distributed

NPROC = 2
NUM_ROUNDS = 12
BASE = ("data.num_clients=8", "data.samples_per_client=100", f"train.num_rounds={NUM_ROUNDS}",
        "train.eval_every=3", "algorithm.num_local_steps=50", "algorithm.sample_fraction=0.5",
        "algorithm.lam=0.5", "checkpoint.every=2")


def crash_and_resume(out: Path, overrides: tuple[str, ...], *, kill_after: int) -> tuple[Path, int]:
    """Rank 1 SIGKILLed once round `kill_after` is checkpointed, then the same command again;
    -> (the run dir, the round resumed from)."""
    crash_after_checkpoint(out, "crashed", kill_after, nproc=NPROC, overrides=overrides)
    resumed = start_torchrun(out, "crashed", nproc=NPROC, max_restarts=0, overrides=overrides)
    assert resumed.wait(300) == 0, resumed.output()
    resumed_from = read_summary(out / "crashed")["resumed_from"]
    assert resumed_from == [kill_after]  # the kill came at the held checkpoint
    return out / "crashed", resumed_from[0]


@pytest.mark.parametrize(("method", "codec"), [("fedavg", "topk:0.2"), ("fedclup", "powersgd:1")])
def test_kill_and_resume_is_bitwise_with_codec_state(tmp_path: Path, method: str, codec: str) -> None:
    # Prepare
    overrides = (*BASE, f"algorithm.name={method}", f"comm.codec={codec}")
    reference = run_reference(tmp_path / "reference_out", nproc=NPROC, overrides=overrides)
    # Execute
    run_dir, resumed_from = crash_and_resume(tmp_path, overrides, kill_after=6)
    # Assert: the checkpoint holds the codec's state, and the resumed run is the uninterrupted one
    folder = run_dir / "ckpt" / f"round_{resumed_from:06d}"
    shard = torch.load(folder / "shard_00001_of_00002.pt", weights_only=True)
    rows = SavedRows.of_shard(folder / "shard_00001_of_00002.json")  # the client rows, by segments
    if method == "fedavg":
        assert rows["codec_residual"].shape == (4, 20)  # rank 1's 4 clients x P
        assert float(rows["codec_residual"].abs().sum()) > 0
    else:
        assert "codec_residual" not in rows  # kept state is its own memory
    if codec.startswith("powersgd"):
        assert shard["replicated"]["exchange"]["q"].shape == (2,) and bool(shard["replicated"]["exchange"]["warm"])
    assert compare_runs(run_dir, reference) == []


def test_error_feedback_residuals_reshard_by_client_id(tmp_path: Path) -> None:
    # Prepare: top-k aggregates every client's message in client-id order, so its w_g does not
    # depend on the world size; resuming 2-rank checkpoints on 4 ranks must keep each client's
    # residual with that client.
    overrides = (*BASE, "algorithm.name=fedavg", "comm.codec=topk:0.2")
    reference = run_reference(tmp_path / "reference_out", nproc=NPROC, overrides=overrides)
    crash_after_checkpoint(tmp_path, "reshard", 6, nproc=NPROC, overrides=overrides)
    # Execute
    resumed = start_torchrun(tmp_path, "reshard", nproc=4, max_restarts=0, overrides=overrides)
    assert resumed.wait(300) == 0, resumed.output()
    # Assert
    assert "re-sharded from 2 ranks" in resumed.output()
    difference = float((global_weights(tmp_path / "reshard") - global_weights(reference)).abs().max())
    assert difference < 1e-5
    got, want = read_summary(tmp_path / "reshard"), read_summary(reference)
    for key in ("uplink_bytes", "downlink_bytes", "num_collectives", "all_gather_num_collectives"):
        assert got["comm"][key] == want["comm"][key]


def test_kill_and_resume_is_bitwise_with_downlink_error_feedback(tmp_path: Path) -> None:
    # Prepare: top-k on the downlink, whose error-feedback memory is the replicated reference h
    # (the last received model, pfl_dist/exchange/downlink.py), rand-k with residuals on the uplink
    overrides = (*BASE, "algorithm.name=fedavg", "comm.codec=randk:0.5", "comm.downlink_codec=topk:0.1")
    reference = run_reference(tmp_path / "reference_out", nproc=NPROC, overrides=overrides)
    # Execute
    run_dir, resumed_from = crash_and_resume(tmp_path, overrides, kill_after=6)
    # Assert: every rank's shard holds the same h, and the resumed run is the uninterrupted one
    shards = [torch.load(run_dir / "ckpt" / f"round_{resumed_from:06d}" / f"shard_0000{rank}_of_00002.pt",
                         weights_only=True) for rank in range(NPROC)]
    references = [shard["replicated"].get("downlink", {}).get("reference") for shard in shards]
    assert references[0] is not None and references[0].shape == (20,)
    assert all(torch.equal(references[0], other) for other in references[1:] if other is not None)
    assert compare_runs(run_dir, reference) == []
