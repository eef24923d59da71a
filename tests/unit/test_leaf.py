"""data.kind leaf: LEAF JSON (3 files, 25 writers) read into one client per writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pfl_dist.config import load_config
from pfl_dist.data.leaf import load_leaf
from pfl_dist.sampling import client_block
from pfl_dist.tasks.images import ImageTask
from tests.data_fixtures import write_leaf
from tests.helpers import run_inprocess

CPU = torch.device("cpu")


def _files_in_order(directory: Path) -> list[tuple[str, list[list[float]], list[int]]]:
    """(writer, x, y) in sorted-file, then file order, read with json alone."""
    out = []
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text())
        out += [(u, doc["user_data"][u]["x"], doc["user_data"][u]["y"]) for u in doc["users"]]
    return out


def test_every_writer_is_a_client_with_its_own_samples(tmp_path: Path) -> None:
    counts = write_leaf(tmp_path, num_writers=25, num_files=3)
    dataset = load_leaf(str(tmp_path), min_samples=1, num_clients=25, seed=0)
    train, test = _files_in_order(tmp_path / "train"), _files_in_order(tmp_path / "test")
    test_by_user = {u: (x, y) for u, x, y in test}
    assert dataset.clients is not None and len(dataset.clients) == 25
    assert dataset.input_shape == (1, 28, 28) and dataset.num_classes == 62
    for (train_idx, test_idx), (user, x, y) in zip(dataset.clients, train, strict=True):
        assert (len(train_idx), len(test_idx)) == counts[user]
        assert np.array_equal(dataset.train.images[train_idx], np.asarray(x, dtype=np.float32))
        assert np.array_equal(dataset.train.labels[train_idx], y)
        assert np.array_equal(dataset.train.images[test_idx], np.asarray(test_by_user[user][0], dtype=np.float32))
        assert np.array_equal(dataset.train.labels[test_idx], test_by_user[user][1])
    assert len(dataset.test) == sum(n for _, n in counts.values())


def test_minimum_samples_and_a_seeded_cap(tmp_path: Path) -> None:
    # Prepare: which writers have >= 8 training samples, identified by their first sample.
    write_leaf(tmp_path, num_writers=25, num_files=3)
    train = _files_in_order(tmp_path / "train")
    eligible = [u for u, _, y in train if len(y) >= 8]
    first_sample = {np.asarray(x[0], dtype=np.float32).tobytes(): u for u, x, _ in train}
    assert 5 < len(eligible) < 25
    # Execute: 5 clients chosen with seeds 0 and 1, and all eligible writers.
    chosen = {}
    for seed in (0, 1):
        dataset = load_leaf(str(tmp_path), min_samples=8, num_clients=5, seed=seed)
        assert dataset.clients is not None
        chosen[seed] = [first_sample[dataset.train.images[tr[0]].tobytes()] for tr, _ in dataset.clients]
    everyone = load_leaf(str(tmp_path), min_samples=8, num_clients=len(eligible), seed=0)
    # Assert: 5 distinct eligible writers in file order, a different choice per seed; the cap at
    # the number of eligible writers takes them all.
    for seed in (0, 1):
        assert len(set(chosen[seed])) == 5 and set(chosen[seed]) <= set(eligible)
        assert chosen[seed] == [u for u in eligible if u in chosen[seed]]
    assert chosen[0] != chosen[1]
    assert everyone.clients is not None and len(everyone.clients) == len(eligible)


def test_partition_is_the_same_on_one_and_three_ranks(tmp_path: Path) -> None:
    write_leaf(tmp_path, num_writers=25, num_files=3)
    cfg = load_config(None, ["data.kind=leaf", f"data.data_dir={tmp_path}", "data.num_clients=12",
                             "data.min_samples_per_client=4"])
    one = ImageTask(cfg, client_ids=range(12), device=CPU, dtype=torch.float32)
    ranks = [ImageTask(cfg, client_ids=client_block(r, world_size=3, num_clients=12), device=CPU, dtype=torch.float32)
             for r in range(3)]
    joined = [c for task in ranks for c in task.clients]
    assert [c.client_id for c in joined] == list(range(12))
    for a, b in zip(one.clients, joined, strict=True):
        assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    for task in ranks:
        for row, split in enumerate(task.clients):
            n = len(split.train)
            assert torch.equal(task.train_x[row, :n], one.train_x[split.client_id, :n])
            assert torch.equal(task.train_y[row, :n], one.train_y[split.client_id, :n])


def test_the_cnn_trains_with_62_classes(tmp_path: Path) -> None:
    write_leaf(tmp_path / "leaf", num_writers=25, num_files=3)
    summary = run_inprocess(tmp_path / "runs", "data.kind=leaf", f"data.data_dir={tmp_path / 'leaf'}",
                            "data.num_clients=4", "model.kind=cnn", "algorithm.local_lr=0.05",
                            "algorithm.global_lr=1/lam", "algorithm.batch_size=4", "algorithm.local_epochs=1",
                            "train.num_rounds=1", "train.eval_every=1")
    weights = torch.load(tmp_path / "runs" / "run" / "final" / "global.pt", weights_only=True)
    assert weights["fc2.weight"].shape == (62, 128) and weights["conv1.weight"].shape == (32, 1, 3, 3)
    assert summary["final"]["eval/acc_personal"] >= 0 and np.isfinite(summary["final"]["eval/loss_global"])
    assert summary["comm"]["uplink_bytes"] == 4 * (320 + 18496 + 401536 + 128 * 62 + 62) * 4
