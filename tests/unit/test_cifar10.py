"""data.kind cifar10: the python pickle batches read exactly, partitioned like the other image
datasets, and the CNN sized for 3x32x32 (vmap over clients = per-client autograd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.data.cifar import load_cifar10
from pfl_dist.models.cnn import CNNModel, PaperCNN
from pfl_dist.sampling import client_block
from pfl_dist.tasks.images import ImageTask, client_index_sets
from tests.data_fixtures import write_cifar10

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    directory = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    return directory, write_cifar10(directory, per_batch=60, test=100)


def _config(directory: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["data.kind=cifar10", f"data.data_dir={directory}", "data.num_clients=6",
                              "data.num_partitions=10", *overrides])


def test_batches_are_read_as_channel_planes(cifar: tuple[Path, dict[str, np.ndarray]]) -> None:
    directory, written = cifar
    dataset = load_cifar10(str(directory))
    assert dataset.train.images.shape == (300, 3, 32, 32) and dataset.test.images.shape == (100, 3, 32, 32)
    assert dataset.input_shape == (3, 32, 32) and dataset.num_classes == 10
    assert np.array_equal(dataset.train.images, written["train_x"])
    assert np.array_equal(dataset.train.labels, written["train_y"])
    assert np.array_equal(dataset.test.labels, written["test_y"])
    # Pixel (channel 2, row 5, column 7) of training image 61 (batch 2, image 1) is byte
    # 2 * 1024 + 5 * 32 + 7 of that image's row in the pickled (N, 3072) array.
    import pickle
    with open(directory / "data_batch_2", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"]
    assert dataset.train.images[61, 2, 5, 7] == raw[1, 2 * 1024 + 5 * 32 + 7]


def test_partition_and_features(cifar: tuple[Path, dict[str, np.ndarray]]) -> None:
    directory, written = cifar
    cfg = _config(directory)
    labels = written["train_y"]
    full = client_index_sets(cfg, labels, client_ids=range(6))
    # Each client holds 300 // (10 partitions x 2 classes) = 15 images of each of its 2 classes,
    # none twice, split 90/10 into train and test.
    for c in full:
        held = np.concatenate([c.train, c.test])
        assert len(held) == 30 and len(set(held.tolist())) == 30 and len(c.test) == 3
        assert sorted(np.bincount(labels[held]).tolist())[-2:] == [15, 15]
    # Rank 1 of 2 holds clients 3..5 as 3x32x32 pixels / 255 of exactly those samples.
    task = ImageTask(cfg, client_ids=client_block(1, world_size=2, num_clients=6), device=CPU, dtype=torch.float32)
    assert [c.client_id for c in task.clients] == [3, 4, 5]
    for row, split in enumerate(task.clients):
        assert np.array_equal(split.train, full[split.client_id].train)
        expected = torch.from_numpy(written["train_x"][split.train] / 255.0).float()
        assert torch.equal(task.train_x[row, : len(split.train)], expected.reshape(-1, 3072))
    assert task.model.num_params == 3072 * 10 + 10  # logreg on 3072 pixels, 10 classes
    cnn = ImageTask(_config(directory, "model.kind=cnn", "algorithm.local_lr=0.05", "algorithm.global_lr=1/lam"),
                    client_ids=range(2), device=CPU, dtype=torch.float32)
    assert cnn.train_x.shape[2:] == (3, 32, 32) and cnn.global_x.shape[1:] == (3, 32, 32)
    assert torch.equal(cnn.train_x[1, :27], torch.from_numpy(written["train_x"][cnn.clients[1].train] / 255.0).float())


def test_cnn_for_cifar_vmap_equals_per_client_autograd() -> None:
    vectorized = CNNModel(10, input_shape=(3, 32, 32))
    looped = CNNModel(10, input_shape=(3, 32, 32), vectorize=False)
    assert vectorized.vectorize
    assert vectorized.num_params == 896 + 18496 + (64 * 8 * 8 * 128 + 128) + 1290  # fc1 takes 4096 inputs
    params = torch.stack([vectorized.init_params(s, dtype=torch.float64) for s in (0, 1, 2)])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 4, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]])
    weights = torch.tensor([[0.25] * 4, [1 / 3] * 3 + [0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    grad_v = vectorized.weighted_grad(params, x, y, weights)
    grad_l = looped.weighted_grad(params, x, y, weights)
    assert torch.allclose(grad_v, grad_l, atol=1e-12) and grad_v.abs().sum() > 0
    module = PaperCNN(10, (3, 32, 32)).double()
    module.load_state_dict(vectorized.state_dict(params[2]))
    assert torch.allclose(vectorized.logits(params, x)[2], module(x[2]), atol=1e-12)
