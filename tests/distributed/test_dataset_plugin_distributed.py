"""A user's dataset from outside the repo (`data.kind=user_blobs:blobs`, examples/my_dataset.py copied
to a temporary folder on PYTHONPATH, with examples/mlp.py as the model) trains on 2 torchrun ranks:
each rank asks client(i) for its own clients only, the uplink is messages x the model's parameter
bytes exactly, and the final global model is the 1-process run's (float64)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, messages_sent, run_inprocess, run_torchrun, user_folder

pytestmark = pytest.mark.distributed

ROUNDS, CLIENTS, FRACTION = 3, 4, 0.5
LOGGED = '''

import os

_client = Blobs.client


def _logged_client(self, i):
    """client(i), with the asking rank and i appended to $CALLS_LOG."""
    with open(os.environ["CALLS_LOG"], "a") as log:
        log.write(f"{os.environ.get('RANK', 'single')} {i}\\n")
    return _client(self, i)


Blobs.client = _logged_client
'''


def test_a_user_dataset_outside_the_repo_trains_on_two_ranks_like_on_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the user's dataset (logging its client(i) calls) and model in a folder of their own
    user_folder(tmp_path, monkeypatch, user_blobs=(REPO / "examples" / "my_dataset.py").read_text() + LOGGED,
                user_mlp=(REPO / "examples" / "mlp.py").read_text())
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CALLS_LOG", str(log))
    try:
        module = importlib.import_module("user_mlp").mlp((10,), 4)  # blobs' defaults: dim 10, 4 classes
    finally:
        sys.modules.pop("user_mlp", None)
    param_bytes = 8 * sum(p.numel() for p in module.parameters())  # float64
    messages = messages_sent(ROUNDS, num_clients=CLIENTS, sample_fraction=FRACTION)
    overrides = ("data.kind=user_blobs:blobs", f"data.num_clients={CLIENTS}", "data.params.num_clients=6",
                 "model.kind=user_mlp:mlp", "algorithm.name=fedavg", "algorithm.local_lr=0.1",
                 "algorithm.batch_size=16", "algorithm.local_epochs=1", f"algorithm.sample_fraction={FRACTION}",
                 f"train.num_rounds={ROUNDS}", f"train.eval_every={ROUNDS}", "train.dtype=float64")
    # Execute: FedAvg on 4 of the 6 clients, 2 ranks; and the same in one process
    summary = run_torchrun(tmp_path, 2, *overrides, name="two")
    two_ranks_calls = log.read_text().split("\n")
    log.unlink()
    try:
        single = run_inprocess(tmp_path, *overrides, name="single")
    finally:
        sys.modules.pop("user_mlp", None)
        sys.modules.pop("user_blobs", None)
    # Assert: each rank asked for its own two clients only (clients 4 and 5 never), one process for all four
    assert sorted(line for line in two_ranks_calls if line) == ["0 0", "0 1", "1 2", "1 3"]
    assert sorted(log.read_text().split()) == sorted(["single", "0", "single", "1", "single", "2", "single", "3"])
    # ... 2 ranks trained; uplink = messages x its parameter bytes, exactly; the same on one process
    assert summary["world_size"] == 2 and summary["config"]["data"]["kind"] == "user_blobs:blobs"
    assert param_bytes == 8 * (10 * 64 + 64 + 64 * 4 + 4)
    assert summary["participation"]["num_local_updates"] == messages
    assert summary["comm"]["uplink_bytes"] == messages * param_bytes == single["comm"]["uplink_bytes"]
    assert summary["inputs"] == single["inputs"] and set(summary["inputs"]) == {"data.kind"}
    # ... world-size independent: the same final global model (float64: to summation order)
    two, one = (torch.load(tmp_path / name / "final" / "global.pt", weights_only=True) for name in ("two", "single"))
    assert list(two) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(torch.allclose(two[key], one[key], atol=1e-12, rtol=0) for key in two)  # not bitwise: sum order
    assert summary["final"]["eval/acc_global"] == pytest.approx(single["final"]["eval/acc_global"], abs=1e-12)
