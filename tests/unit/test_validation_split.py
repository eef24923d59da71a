"""data.val_fraction: each client's validation rows (pfl_dist/data/partition.py
`validation_split_client`, pfl_dist/tasks/images.py `with_validation`) and the val/... metrics.

The split is checked for what it promises (disjoint, covering, deterministic, the same for any
block of clients a rank holds, the test rows untouched), the val metrics against a computation
written here from the rows themselves, and the default against the split of a config without the key.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.config import Config, load_config
from pfl_dist.data.partition import train_test_split_client, validation_split_client
from pfl_dist.errors import ConfigError, DataError
from pfl_dist.sweep.results import Run, find_runs, write_results_csv
from pfl_dist.tasks.images import ImageTask, client_index_sets, dataset_for
from tests.faults import scalar_points
from tests.helpers import read_metrics, run_inprocess, run_main, write_learnable_mnist

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def small(mnist_dir: Path, *overrides: str) -> Config:
    """30 partitions of 2 classes x 100 images (90 train / 10 test each), 6 clients used."""
    return load_config(None, [f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                              "data.num_clients=6", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
                              "algorithm.batch_size=16", "algorithm.local_epochs=1", "train.dtype=float64",
                              *overrides])


def task(cfg: Config, clients: range) -> ImageTask:
    return ImageTask(cfg, client_ids=clients, device=CPU, dtype=torch.float64)


# --- the split -----------------------------------------------------------------------------


def test_validation_split_is_disjoint_covering_and_keyed_by_seed_and_client() -> None:
    indices = np.arange(100, 190)
    train, val = validation_split_client(indices, val_fraction=0.2, seed=4, client_id=7)
    assert len(val) == 18 and len(train) == 72  # round-half-up(90 x 0.2)
    assert not set(train) & set(val) and sorted([*train, *val]) == indices.tolist()
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again = validation_split_client(indices, val_fraction=0.2, seed=4, client_id=7)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again, strict=True))
    other_client = validation_split_client(indices, val_fraction=0.2, seed=4, client_id=8)[1]
    other_seed = validation_split_client(indices, val_fraction=0.2, seed=5, client_id=7)[1]
    assert not np.array_equal(val, other_client) and not np.array_equal(val, other_seed)
    # its own stream: not the rows the test split of the same key would take
    assert not np.array_equal(val, train_test_split_client(indices, test_fraction=0.2, seed=4, client_id=7)[1])


def test_validation_split_of_zero_is_the_identity_and_too_few_rows_fail() -> None:
    train, val = validation_split_client(np.arange(5), val_fraction=0.0, seed=0, client_id=0)
    assert train.tolist() == [0, 1, 2, 3, 4] and val.size == 0
    assert validation_split_client(np.arange(2), val_fraction=0.01, seed=0, client_id=0)[1].size == 1  # at least 1
    with pytest.raises(DataError, match="cannot keep 1 for validation"):
        validation_split_client(np.arange(1), val_fraction=0.1, seed=0, client_id=3)


def test_image_clients_split_train_rows_and_keep_their_test_rows(mnist_dir: Path) -> None:
    # Prepare: the same config without and with validation rows.
    plain = task(small(mnist_dir, "run.seed=2"), range(6)).clients
    split = task(small(mnist_dir, "run.seed=2", "data.val_fraction=0.25"), range(6)).clients
    for before, after in zip(plain, split, strict=True):
        # Assert: the test rows are the same; train + val are the former training rows, disjoint.
        assert np.array_equal(before.test, after.test)
        assert len(after.val) == math.floor(len(before.train) * 0.25 + 0.5) > 0
        assert not set(after.train) & set(after.val) and not set(after.val) & set(after.test)
        assert sorted([*after.train, *after.val]) == before.train.tolist()
        assert before.val.size == 0


def test_image_validation_rows_are_the_same_on_any_block_of_clients(mnist_dir: Path) -> None:
    # One rank holding every client, and three ranks holding two each (world size 1 vs 3).
    cfg = small(mnist_dir, "data.val_fraction=0.1", "run.seed=1")
    whole = task(cfg, range(6)).clients
    blocks = [c for start in (0, 2, 4) for c in task(cfg, range(start, start + 2)).clients]
    for a, b in zip(whole, blocks, strict=True):
        assert a.client_id == b.client_id
        assert all(np.array_equal(getattr(a, part), getattr(b, part)) for part in ("train", "val", "test"))


def test_validation_rows_are_never_trained_on(mnist_dir: Path) -> None:
    # The training tensors (all that full batches and minibatches read) hold exactly the clients'
    # training rows, which hold no validation row.
    cfg = small(mnist_dir, "data.val_fraction=0.2")
    rank = task(cfg, range(6))
    source = dataset_for(cfg).train
    for i, client in enumerate(rank.clients):
        n = rank.train_counts[i]
        assert n == len(client.train)
        expected = torch.from_numpy(source.images[client.train].reshape(n, -1) / 255.0)
        assert torch.equal(rank.train_x[i, :n].reshape(n, -1), expected)
        assert not rank.train_x[i, n:].any()  # padding only past them
        assert not set(client.val) & set(client.train)


def test_val_metrics_are_computed_on_the_validation_rows(mnist_dir: Path) -> None:
    # Prepare: random personal models for the 6 clients, on two blocks of clients (2 ranks).
    cfg = small(mnist_dir, "data.val_fraction=0.2", "model.kind=logreg")
    source = dataset_for(cfg).train
    generator = torch.Generator().manual_seed(0)
    ranks = [task(cfg, range(0, 3)), task(cfg, range(3, 6))]
    models = torch.randn(6, ranks[0].num_params, generator=generator, dtype=torch.float64) * 0.05
    global_model = models[0]
    # Execute: each rank's sums, added as the evaluation all-reduce adds them.
    sums: dict[str, torch.Tensor] = {}
    for rank, block in zip(ranks, (slice(0, 3), slice(3, 6)), strict=True):
        for key, value in rank.metric_sums(models[block], global_model).items():
            sums[key] = sums[key] + value if key in sums else value
    metrics = ranks[0].finalize_metrics(sums, global_model)
    # Assert: a manual computation from the validation indices (logits of classes a client never
    # trained on are excluded, log-probabilities floored at log(1e-12)).
    correct = loss = count = 0.0
    for rank in ranks:
        for client in rank.clients:
            w = models[client.client_id].numpy()
            weight, bias = w[: 784 * 10].reshape(784, 10), w[784 * 10:]  # (d, C) then the bias
            trained = np.unique(source.labels[client.train])
            x = source.images[client.val].reshape(len(client.val), -1) / 255.0
            logits = x @ weight + bias
            logits[:, [c for c in range(10) if c not in trained]] = -np.inf
            log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            y = source.labels[client.val]
            correct += float((logits.argmax(axis=1) == y).sum())
            loss -= float(np.maximum(log_probs[np.arange(len(y)), y], math.log(1e-12)).sum())
            count += len(y)
    assert metrics["val/acc_personal"] == pytest.approx(correct / count, abs=1e-12)
    assert metrics["val/loss_personal"] == pytest.approx(loss / count, rel=1e-10)
    assert count == sum(len(c.val) for r in ranks for c in r.clients) > 0
    # and the test metrics are those of the test rows, as without validation rows
    assert metrics["acc_personal"] == float(sums["correct_personal"]) / float(sums["num_test_personal"])
    assert float(sums["num_test_personal"]) == sum(len(c.test) for r in ranks for c in r.clients)


def test_default_has_no_validation_rows_or_metrics(mnist_dir: Path) -> None:
    cfg = small(mnist_dir)
    assert cfg.data.val_fraction == 0
    rank = task(cfg, range(6))
    labels = dataset_for(cfg).train.labels
    for before, after in zip(client_index_sets(cfg, labels, client_ids=range(6)), rank.clients, strict=True):
        assert np.array_equal(before.train, after.train) and after.val.size == 0
    models = rank.init_model().expand(6, -1)
    metrics = rank.finalize_metrics(rank.metric_sums(models, models[0]), models[0])
    assert not [name for name in metrics if name.startswith("val")]


# --- a run's outputs -----------------------------------------------------------------------


def test_a_run_logs_val_metrics_wherever_eval_metrics_go(tmp_path: Path, mnist_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_inprocess(tmp_path, f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=30",
                            "data.num_clients=4", "algorithm.name=fedavg", "algorithm.local_lr=0.05",
                            "algorithm.batch_size=16", "algorithm.local_epochs=1", "train.num_rounds=2",
                            "train.eval_every=1", "data.val_fraction=0.2")
    run_dir = tmp_path / "run"
    printed = capsys.readouterr().out
    assert "val/acc_personal" in printed and "eval/acc_personal" in printed  # the progress lines
    final = summary["final"]
    assert {"val/acc_personal", "val/loss_personal", "eval/acc_personal"} <= set(final)
    assert all("val/acc_personal" in r["metrics"] for r in read_metrics(run_dir))
    assert read_metrics(run_dir)[-1]["metrics"]["val/acc_personal"] == final["val/acc_personal"]
    assert scalar_points(run_dir)["val/acc_personal"][-1][1] == pytest.approx(final["val/acc_personal"])
    run = Run(run_dir)
    assert run.summary["final"]["val/acc_personal"] == final["val/acc_personal"]  # not shadowing eval's
    assert run.summary["final"]["acc_personal"] == final["eval/acc_personal"]
    write_results_csv(tmp_path / "results.csv", find_runs(tmp_path))
    with open(tmp_path / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["val/acc_personal"]) == final["val/acc_personal"]
    assert float(row["eval/acc_personal"]) == final["eval/acc_personal"]


def test_bad_val_fraction_is_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    for value in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match=r"^data.val_fraction must be in \[0, 1\)"):
            load_config(None, [f"data.val_fraction={value}"])
    with pytest.raises(ConfigError, match="data.kind .synthetic. does not use data.val_fraction=0.1"):
        load_config(None, ["data.val_fraction=0.1"])
    # 2 training rows per client (3 images, 1 for test): 0.9 of them leaves none to train
    result = run_main(f"data.data_dir={mnist_dir}", "data.kind=mnist", "data.num_partitions=1000",
                      "data.num_clients=2", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam",
                      "data.val_fraction=0.9", f"run.out_dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("pfl_dist: error: data.val_fraction=0.9: client ")
    assert "too few to hold validation rows out and still train" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
