"""Every algorithm on real gloo ranks: 1 rank and 4 ranks agree; the uplink of FedRep/FedPer is
the body and SCAFFOLD's is twice the model, counted at c10d; Ditto and SCAFFOLD resume bitwise
after a kill (their per-client state is in the checkpoint). The 4-rank and counted runs are the
session's shared jobs (tests/distributed/conftest.py: `four_rank_runs`, `counted_runs`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfl_dist.checkpoint import SavedRows
from pfl_dist.methods import METHODS
from pfl_dist.models.cnn import PaperCNN
from pfl_dist.sampling import sample_clients
from tests.distributed.conftest import GROUPED, IMAGE_ROUNDS, ROUNDS, counted, method_overrides
from tests.faults import compare_runs, crash_after_checkpoint, run_reference, start_torchrun
from tests.helpers import global_weights, read_summary, run_inprocess

pytestmark = pytest.mark.distributed


def final_model(run_dir: Path) -> torch.Tensor:
    """final/global.pt as one flat vector (every named tensor, in order: the CNN has eight)."""
    named = torch.load(run_dir / "final" / "global.pt", weights_only=True)
    return torch.cat([t.flatten() for t in named.values()])


def participants(num_rounds: int) -> int:
    return sum(len(sample_clients(t, seed=0, num_clients=8, sample_fraction=0.5)) for t in range(num_rounds))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_rank_and_four_ranks_agree(tmp_path: Path, mnist_dir: Path, four_rank_runs: Path, method: str) -> None:
    # Execute: one rank here; 4 ranks in the session's 4-rank job
    one = run_inprocess(tmp_path, *method_overrides(method, mnist_dir), name="one")
    four_dir = four_rank_runs / f"method-{method}"
    four = read_summary(four_dir)
    # Assert: the same w_g and the same byte counters
    difference = float((final_model(tmp_path / "one") - final_model(four_dir)).abs().max())
    print(f"{method}: max |w_g(1 rank) - w_g(4 ranks)| = {difference:.3g}")
    assert difference <= 1e-5
    for key in ("uplink_bytes", "uplink_bytes_dense", "downlink_bytes", "num_collectives",
                "all_reduce_num_collectives", "all_gather_num_collectives"):
        assert one["comm"][key] == four["comm"][key], key
    assert one["personal"]["acc_personal_mean"] == pytest.approx(four["personal"]["acc_personal_mean"], abs=0.02)
    assert one["method"] == four["method"] == METHODS[method].to_dict()


def assert_ledger_is_c10d(summary: dict, seen: list[dict]) -> None:  # type: ignore[type-arg]
    train, telemetry = summary["comm"], summary["comm_telemetry"]
    for rank_seen in seen:
        assert rank_seen["bytes_by_op"].get("allreduce_", 0) == (train["all_reduce_payload_bytes"]
                                                                + telemetry["all_reduce_payload_bytes"]) // 2
        assert rank_seen["payload_bytes"] == (train["payload_bytes"] + telemetry["payload_bytes"]) // 2


@pytest.mark.parametrize("method", GROUPED)
def test_body_head_methods_send_the_body_only(counted_runs: Path, method: str) -> None:
    # Prepare: the CNN's body is everything but fc2 (float32)
    model = PaperCNN(10)
    body_bytes = 4 * sum(p.numel() for name, p in model.named_parameters() if not name.startswith("fc2."))
    model_bytes = 4 * sum(p.numel() for p in model.parameters())
    # Execute: 2 ranks under the dispatch-mode counter (the session's counted job, image_overrides)
    summary, seen = counted(counted_runs, f"method-{method}")
    # Assert: uplink = body bytes x participants; the training all-reduce carries the body (+2 control words)
    train = summary["comm"]
    assert train["uplink_bytes"] == body_bytes * participants(IMAGE_ROUNDS)
    assert train["uplink_bytes_dense"] == body_bytes * participants(IMAGE_ROUNDS) < model_bytes * participants(
        IMAGE_ROUNDS)
    assert train["all_reduce_payload_bytes"] == 2 * IMAGE_ROUNDS * (body_bytes + 2 * 4)  # summed over 2 ranks
    assert_ledger_is_c10d(summary, seen)


def test_scaffold_uplink_is_twice_the_model(counted_runs: Path) -> None:
    # Prepare: BASE's float32 model, d = 10 x C = 2
    model_bytes = 10 * 2 * 4
    # Execute: BASE with SCAFFOLD, 2 ranks under the counter (the session's counted job)
    summary, seen = counted(counted_runs, "method-scaffold")
    # Assert: model + control variate per participating client, both ways
    train = summary["comm"]
    assert train["uplink_bytes"] == 2 * model_bytes * participants(ROUNDS)
    assert train["downlink_bytes"] == 2 * model_bytes * participants(ROUNDS)
    assert train["all_reduce_payload_bytes"] == 2 * ROUNDS * (2 * model_bytes + 2 * 4)
    assert_ledger_is_c10d(summary, seen)


RESUME_ROUNDS = 12
RESUME = ("data.num_clients=8", "data.samples_per_client=100", f"train.num_rounds={RESUME_ROUNDS}",
          "train.eval_every=3", "algorithm.num_local_steps=50", "algorithm.sample_fraction=0.5",
          "algorithm.lam=0.5", "checkpoint.every=2")


@pytest.mark.parametrize(("method", "state"), [("ditto", "personal_models"), ("scaffold", "control_variates")])
def test_kill_and_resume_is_bitwise_with_per_client_state(tmp_path: Path, method: str, state: str) -> None:
    # Prepare
    overrides = (*RESUME, f"algorithm.name={method}")
    reference = run_reference(tmp_path / "reference_out", nproc=2, overrides=overrides)
    # Execute: rank 1 SIGKILLed once round 6 is checkpointed, then the same command again
    crash_after_checkpoint(tmp_path, "crashed", 6, nproc=2, overrides=overrides)
    resumed = start_torchrun(tmp_path, "crashed", nproc=2, max_restarts=0, overrides=overrides)
    assert resumed.wait(300) == 0, resumed.output()
    # Assert: the checkpoint holds the algorithm's per-client state; the resumed run is the uninterrupted one
    resumed_from = read_summary(tmp_path / "crashed")["resumed_from"]
    assert resumed_from == [6]  # the kill came at the held checkpoint
    folder = tmp_path / "crashed" / "ckpt" / f"round_{resumed_from[0]:06d}"
    shard = torch.load(folder / "shard_00001_of_00002.pt", weights_only=True)
    rows = SavedRows.of_shard(folder / "shard_00001_of_00002.json")  # the client rows, by segments
    assert rows[state].shape == (4, 20)  # rank 1's 4 clients x P
    assert float(rows[state].abs().sum()) > 0
    if method == "scaffold":
        assert float(shard["replicated"]["algorithm"]["control"].abs().sum()) > 0
    assert compare_runs(tmp_path / "crashed", reference) == []
    assert torch.equal(global_weights(tmp_path / "crashed"), global_weights(reference))
