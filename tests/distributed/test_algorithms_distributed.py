"""Every algorithm on real gloo ranks: 1 rank and 4 ranks agree; the uplink of FedRep/FedPer is
the body and SCAFFOLD's is twice the model, counted at c10d; Ditto and SCAFFOLD resume bitwise
after a kill (their per-client state is in the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.methods import METHODS
from pfl_dist.models.cnn import PaperCNN
from pfl_dist.sampling import sample_clients
from tests.distributed.conftest import BASE, ROUNDS
from tests.faults import checkpoint_complete, compare_runs, run_reference, start_torchrun, wait_for, worker_pids
from tests.helpers import REPO, global_weights, read_summary, run_inprocess, run_torchrun, write_learnable_mnist

pytestmark = pytest.mark.distributed

GROUPED = tuple(name for name, info in METHODS.items() if info.parameter_groups)  # need the CNN's body/head
IMAGE_ROUNDS = 2


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def image_overrides(mnist_dir: Path, method: str) -> tuple[str, ...]:
    """8 image clients with the paper's CNN, half sampled per round, one epoch of batch 32."""
    return ("data.kind=mnist", f"data.data_dir={mnist_dir}", "data.num_partitions=30", "data.num_clients=8",
            "model.kind=cnn", f"algorithm.name={method}", "algorithm.batch_size=32", "algorithm.local_epochs=1",
            "algorithm.local_lr=0.05", "algorithm.sample_fraction=0.5", f"train.num_rounds={IMAGE_ROUNDS}",
            "train.eval_every=1")


def overrides_for(method: str, mnist_dir: Path) -> tuple[str, ...]:
    if method in GROUPED:
        return image_overrides(mnist_dir, method)
    return (*BASE, f"algorithm.name={method}")


def final_model(run_dir: Path) -> torch.Tensor:
    """final/global.pt as one flat vector (every named tensor, in order: the CNN has eight)."""
    named = torch.load(run_dir / "final" / "global.pt", weights_only=True)
    return torch.cat([t.flatten() for t in named.values()])


def participants(num_rounds: int) -> int:
    return sum(len(sample_clients(t, seed=0, num_clients=8, sample_fraction=0.5)) for t in range(num_rounds))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_rank_and_four_ranks_agree(tmp_path: Path, mnist_dir: Path, method: str) -> None:
    # Execute
    overrides = overrides_for(method, mnist_dir)
    one = run_inprocess(tmp_path, *overrides, name="one")
    four = run_torchrun(tmp_path, 4, *overrides, name="four", timeout=600)
    # Assert: the same w_g and the same byte counters
    difference = float((final_model(tmp_path / "one") - final_model(tmp_path / "four")).abs().max())
    print(f"{method}: max |w_g(1 rank) - w_g(4 ranks)| = {difference:.3g}")
    assert difference <= 1e-5
    for key in ("uplink_bytes", "uplink_bytes_dense", "downlink_bytes", "num_collectives",
                "all_reduce_num_collectives", "all_gather_num_collectives"):
        assert one["comm"][key] == four["comm"][key], key
    assert one["personal"]["acc_personal_mean"] == pytest.approx(four["personal"]["acc_personal_mean"], abs=0.02)
    assert one["method"] == four["method"] == METHODS[method].to_dict()


def run_counted(out: Path, overrides: tuple[str, ...]) -> tuple[dict[str, object], list[dict[str, object]]]:
    """2 ranks under the dispatch-mode counter -> (summary, what each rank handed c10d)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(REPO / "tests/distributed/collective_counter_worker.py"), str(out), *overrides]
    env = {**os.environ, **TORCHRUN_ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p.parent for p in out.glob("*/summary.json")]
    return read_summary(run_dir), [json.loads((out / f"dispatch_rank{r}.json").read_text()) for r in range(2)]


def assert_ledger_is_c10d(summary: dict, seen: list[dict]) -> None:  # type: ignore[type-arg]
    train, telemetry = summary["comm"], summary["comm_telemetry"]
    for rank_seen in seen:
        assert rank_seen["bytes_by_op"].get("allreduce_", 0) == (train["all_reduce_payload_bytes"]
                                                                + telemetry["all_reduce_payload_bytes"]) // 2
        assert rank_seen["payload_bytes"] == (train["payload_bytes"] + telemetry["payload_bytes"]) // 2


@pytest.mark.parametrize("method", GROUPED)
def test_body_head_methods_send_the_body_only(tmp_path: Path, mnist_dir: Path, method: str) -> None:
    # Prepare: the CNN's body is everything but fc2 (float32)
    model = PaperCNN(10)
    body_bytes = 4 * sum(p.numel() for name, p in model.named_parameters() if not name.startswith("fc2."))
    model_bytes = 4 * sum(p.numel() for p in model.parameters())
    # Execute
    summary, seen = run_counted(tmp_path, image_overrides(mnist_dir, method))
    # Assert: uplink = body bytes x participants; the training all-reduce carries the body (+2 control words)
    train = summary["comm"]
    assert train["uplink_bytes"] == body_bytes * participants(IMAGE_ROUNDS)
    assert train["uplink_bytes_dense"] == body_bytes * participants(IMAGE_ROUNDS) < model_bytes * participants(
        IMAGE_ROUNDS)
    assert train["all_reduce_payload_bytes"] == 2 * IMAGE_ROUNDS * (body_bytes + 2 * 4)  # summed over 2 ranks
    assert_ledger_is_c10d(summary, seen)


def test_scaffold_uplink_is_twice_the_model(tmp_path: Path) -> None:
    # Prepare: BASE's float32 model, d = 10 x C = 2
    model_bytes = 10 * 2 * 4
    # Execute
    summary, seen = run_counted(tmp_path, (*BASE, "algorithm.name=scaffold"))
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
    job = start_torchrun(tmp_path, "crashed", nproc=2, max_restarts=0, overrides=overrides)
    assert wait_for(lambda: checkpoint_complete(tmp_path / "crashed", 6, 2), timeout=300), job.output()
    os.kill(worker_pids(job.process.pid)[1], signal.SIGKILL)
    assert job.wait(120) != 0
    resumed = start_torchrun(tmp_path, "crashed", nproc=2, max_restarts=0, overrides=overrides)
    assert resumed.wait(300) == 0, resumed.output()
    # Assert: the checkpoint holds the algorithm's per-client state; the resumed run is the uninterrupted one
    resumed_from = read_summary(tmp_path / "crashed")["resumed_from"]
    assert len(resumed_from) == 1 and 6 <= resumed_from[0] < RESUME_ROUNDS
    shard = torch.load(tmp_path / "crashed" / "ckpt" / f"round_{resumed_from[0]:06d}" / "shard_00001_of_00002.pt",
                       weights_only=True)
    assert shard["clients"][state].shape == (4, 20)  # rank 1's 4 clients x P
    assert float(shard["clients"][state].abs().sum()) > 0
    if method == "scaffold":
        assert float(shard["replicated"]["algorithm"]["control"].abs().sum()) > 0
    assert compare_runs(tmp_path / "crashed", reference) == []
    assert torch.equal(global_weights(tmp_path / "crashed"), global_weights(reference))
