"""A user's model from outside the repo (`model.kind=user_mlp:mlp`, examples/mlp.py copied to a
temporary folder on PYTHONPATH) trains on 2 torchrun ranks on Fashion-MNIST, and the ledger counts
exactly its parameter bytes (issue 23's acceptance); a killed rank's run resumes bit for bit."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from tests.faults import compare_runs, crash_after_checkpoint, run_reference, start_torchrun
from tests.helpers import HAS_FASHION, REPO, messages_sent, read_summary, run_inprocess, run_torchrun, user_folder

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not HAS_FASHION, reason="Debian package dataset-fashion-mnist not installed (make install)"),
]

ROUNDS, CLIENTS, FRACTION = 2, 4, 0.5


def test_a_user_mlp_outside_the_repo_trains_on_two_ranks_with_its_exact_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the user's module in a folder of its own, on PYTHONPATH (for the ranks) and sys.path (here)
    user_folder(tmp_path, monkeypatch, user_mlp=(REPO / "examples" / "mlp.py").read_text())
    try:
        module = importlib.import_module("user_mlp").mlp((1, 28, 28), 10)
    finally:
        sys.modules.pop("user_mlp", None)
    param_bytes = 4 * sum(p.numel() for p in module.parameters())  # float32
    messages = messages_sent(ROUNDS, num_clients=CLIENTS, sample_fraction=FRACTION)
    overrides = ("data.kind=fashion_mnist", f"data.num_clients={CLIENTS}", "model.kind=user_mlp:mlp",
                 "algorithm.name=fedavg", "algorithm.local_lr=0.05", "algorithm.batch_size=32",
                 "algorithm.local_epochs=1", f"algorithm.sample_fraction={FRACTION}", f"train.num_rounds={ROUNDS}",
                 f"train.eval_every={ROUNDS}")
    # Execute: FedAvg on 4 Fashion-MNIST clients, 2 ranks, 2 rounds; and the same in one process
    summary = run_torchrun(tmp_path, 2, *overrides, name="mlp")
    try:
        single = run_inprocess(tmp_path, *overrides, name="single")
    finally:
        sys.modules.pop("user_mlp", None)
    # Assert: 2 ranks trained it; uplink = messages x its parameter bytes, exactly; the final model loads
    assert summary["world_size"] == 2 and summary["config"]["model"]["kind"] == "user_mlp:mlp"
    assert param_bytes == 4 * (784 * 64 + 64 + 64 * 10 + 10)
    assert summary["participation"]["num_local_updates"] == messages == 4
    assert summary["comm"]["uplink_bytes"] == messages * param_bytes
    assert summary["comm"]["downlink_bytes"] == messages * param_bytes
    module.load_state_dict(torch.load(tmp_path / "mlp" / "final" / "global.pt", weights_only=True))
    final = summary["final"]
    assert final["eval/acc_personal"] > final["eval/naive_acc"], final
    # world-size independent: the 1-process run trains the same model (up to float32 summation order)
    two, one = (torch.load(tmp_path / name / "final" / "global.pt", weights_only=True) for name in ("mlp", "single"))
    assert all(torch.allclose(two[key], one[key], atol=1e-5, rtol=0) for key in two)
    assert single["comm"]["uplink_bytes"] == summary["comm"]["uplink_bytes"]


RESUME_ROUNDS = 8


def test_kill_and_resume_of_a_plugin_model_is_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the user's MLP outside the repo; an uninterrupted 2-rank reference
    user_folder(tmp_path, monkeypatch, user_mlp=(REPO / "examples" / "mlp.py").read_text())
    overrides = ("data.kind=fashion_mnist", f"data.num_clients={CLIENTS}", "model.kind=user_mlp:mlp",
                 "algorithm.name=fedavg", "algorithm.local_lr=0.05", "algorithm.batch_size=32",
                 "algorithm.local_epochs=1", f"algorithm.sample_fraction={FRACTION}",
                 f"train.num_rounds={RESUME_ROUNDS}", "train.eval_every=2", "checkpoint.every=2")
    reference = run_reference(tmp_path / "reference_out", nproc=2, overrides=overrides)
    # Execute: rank 1 SIGKILLed at round 4's checkpoint (held there), then the same command again
    crash_after_checkpoint(tmp_path, "crashed", 4, nproc=2, overrides=overrides)
    resumed = start_torchrun(tmp_path, "crashed", nproc=2, max_restarts=0, overrides=overrides)
    assert resumed.wait(300) == 0, resumed.output()
    # Assert: resumed from a checkpoint, the same run bit for bit, the same final model
    resumed_from = read_summary(tmp_path / "crashed")["resumed_from"]
    assert resumed_from == [4]
    assert compare_runs(tmp_path / "crashed", reference) == []
    final, expected = (torch.load(d / "final" / "global.pt", weights_only=True) for d in (tmp_path / "crashed",
                                                                                          reference))
    assert list(final) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(torch.equal(final[name], expected[name]) for name in expected)
