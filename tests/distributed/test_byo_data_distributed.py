"""Bring-your-own data on real torchrun/gloo workers: client files on 1 and 2 ranks, LEAF on 1 and
3 ranks, one CIFAR-10 CNN round on 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist import inputs
from pfl_dist.config import load_config
from pfl_dist.launch import TORCHRUN_ENV
from tests.data_fixtures import write_cifar10, write_leaf, write_reference_csv_clients
from tests.helpers import REPO, global_weights, read_summary, run_inprocess, run_torchrun

pytestmark = pytest.mark.distributed


def _final_global(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "global.pt", weights_only=True)  # type: ignore[no-any-return]


def test_client_files_on_one_and_two_ranks(tmp_path: Path) -> None:
    # Prepare: 10 clients in the reference CSV layout with true models, and an initial model.
    data = write_reference_csv_clients(tmp_path / "data", num_clients=10, num_samples=40)
    np.save(tmp_path / "init.npy", np.random.default_rng(2).standard_normal((10, 2)))
    args = ("data.kind=client_files", f"data.data_dir={data}", "data.num_clients=10",
            f"model.init_file={tmp_path / 'init.npy'}", "algorithm.num_local_steps=20",
            "algorithm.sample_fraction=0.5", "train.num_rounds=4", "train.eval_every=2")
    # Execute
    single = run_inprocess(tmp_path, *args, name="w1")
    double = run_torchrun(tmp_path, 2, *args, name="w2")
    # Assert: the same final model and metrics (float32) to 1e-5, ITR and ATR reported.
    diff = float((global_weights(tmp_path / "w1") - global_weights(tmp_path / "w2")).abs().max())
    assert diff <= 1e-5, diff
    for key in ("eval/ITR", "eval/ATR", "train/loss_personal", "train/acc_personal", "train/loss_global"):
        assert double["final"][key] == pytest.approx(single["final"][key], abs=1e-5), key
    assert double["world_size"] == 2 and single["world_size"] == 1


def test_only_rank_0_hashes_the_input_files_and_shares_the_digests_through_the_communicator(
        tmp_path: Path) -> None:
    # Prepare: the authors' 3-client CSV sample and an initial model; run.name=auto
    data = shutil.copytree(REPO / "tests" / "data" / "fedclup_csv_sample", tmp_path / "data")
    np.save(tmp_path / "init.npy", np.full((10, 2), 0.1))
    args = ["data.kind=client_files", f"data.data_dir={data}", "data.num_clients=3", "data.dim=10",
            "data.num_classes=2", f"model.init_file={tmp_path / 'init.npy'}", "train.num_rounds=2",
            "algorithm.num_local_steps=3"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(REPO / "tests/distributed/input_hash_worker.py"), str(out), *args]
    env = {**os.environ, **TORCHRUN_ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # Execute
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # Assert: rank 0 read the four data files and the init file once, rank 1 none; both ranks
    # agree on the auto run dir, whose summary holds the digests of the files as they are.
    assert result.returncode == 0, result.stderr
    seen = [json.loads((out / f"inputs_rank{rank}.json").read_text()) for rank in range(2)]
    assert sorted(Path(p).name for p in seen[0]["hashed"]) == [
        "1_client_data.csv", "2_client_data.csv", "3_client_data.csv", "init.npy", "local_true_model.npy"]
    assert seen[1]["hashed"] == []
    assert seen[0]["run_dir"] == seen[1]["run_dir"]
    expected = load_config(None, [f"run.out_dir={out}", *args])
    expected.set_world_size(2)
    summary = read_summary(Path(seen[0]["run_dir"]))
    assert summary["inputs"] == inputs.digests(expected.inputs) and Path(seen[0]["run_dir"]) == expected.run_dir
    # The digests travel in one counted telemetry all-reduce: c10d saw exactly the ledger's ops.
    ledger = summary["comm"]["num_collectives"] + summary["comm_telemetry"]["num_collectives"]
    for rank in range(2):
        collectives = [op for op in seen[rank]["ops"] if op != "barrier"]
        assert len(collectives) == ledger and set(collectives) == {"allreduce_"}
        assert seen[rank]["payload_bytes"] == (summary["comm"]["payload_bytes"]
                                               + summary["comm_telemetry"]["payload_bytes"]) // 2


def test_leaf_on_one_and_three_ranks(tmp_path: Path) -> None:
    write_leaf(tmp_path / "leaf", num_writers=25, num_files=3)
    args = ("data.kind=leaf", f"data.data_dir={tmp_path / 'leaf'}", "data.num_clients=9",
            "data.min_samples_per_client=4", "algorithm.batch_size=4", "algorithm.local_epochs=1",
            "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam", "train.num_rounds=2", "train.eval_every=2")
    single = run_inprocess(tmp_path, *args, name="w1")
    triple = run_torchrun(tmp_path, 3, *args, name="w3")
    a, b = _final_global(tmp_path / "w1"), _final_global(tmp_path / "w3")
    assert a["weight"].shape == (784, 62)
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    for key in ("eval/acc_personal", "eval/naive_acc", "eval/loss_global"):
        assert triple["final"][key] == pytest.approx(single["final"][key], abs=1e-5), key


def test_one_cifar10_cnn_round_on_two_ranks(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=60, test=100)
    args = ("data.kind=cifar10", f"data.data_dir={tmp_path / 'cifar'}", "data.num_clients=4",
            "data.num_partitions=10", "model.kind=cnn", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
            "algorithm.batch_size=8", "algorithm.local_epochs=1", "train.num_rounds=1", "train.eval_every=1")
    single = run_inprocess(tmp_path, *args, name="w1")
    double = run_torchrun(tmp_path, 2, *args, name="w2")
    a, b = _final_global(tmp_path / "w1"), _final_global(tmp_path / "w2")
    assert a["conv1.weight"].shape == (32, 3, 3, 3) and a["fc1.weight"].shape == (128, 4096)
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    params = 896 + 18496 + 524416 + 1290
    assert double["comm"]["uplink_bytes"] == single["comm"]["uplink_bytes"] == 4 * params * 4  # 4 clients, float32
    assert double["final"]["eval/acc_global"] == pytest.approx(single["final"]["eval/acc_global"], abs=1e-6)
