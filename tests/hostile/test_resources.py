"""The memory estimate behind the refusal of configs that cannot fit (family 2): it matches what
the synthetic and client-file tasks really allocate and stays at or below what the CIFAR-10 and
LEAF tasks allocate, the image model sizes it assumes are the models' own, the sizes it reads
from file headers are the files' own, and the check refuses exactly when the estimate exceeds
the available memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist import train
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import Config, load_config
from pfl_dist.data import cifar, leaf
from pfl_dist.data.client_files import samples_at_least
from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE
from pfl_dist.errors import ConfigError
from pfl_dist.methods import INCREMENT, METHOD_NAMES, METHODS
from pfl_dist.models import MODELS, WORKING_COPIES
from pfl_dist.resources import available_bytes, check_memory, estimate_rank_bytes
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import client_block
from pfl_dist.tasks.client_files import ClientFilesTask
from pfl_dist.tasks.images import ImageTask, build_image_model
from pfl_dist.tasks.synthetic import SyntheticTask
from pfl_dist.train import Trainer
from tests.data_fixtures import write_cifar10, write_leaf
from tests.hostile.hostile import assert_one_line, run_main


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("num_clients", "world_size"), [(5, 1), (5, 2), (7, 3)])
def test_the_estimate_is_what_the_synthetic_task_allocates(dtype: str, num_clients: int, world_size: int) -> None:
    cfg = load_config(None, [f"data.num_clients={num_clients}", "data.samples_per_client=30", "data.dim=6",
                             "data.num_classes=3", f"train.dtype={dtype}"])
    block = client_block(0, world_size=world_size, num_clients=num_clients)  # rank 0 hosts the most clients
    task = SyntheticTask(cfg, client_ids=block, device=torch.device("cpu"), dtype=getattr(torch, dtype))
    data_bytes, model_bytes = estimate_rank_bytes(cfg, world_size=world_size)
    assert data_bytes == task.features.nbytes + task.labels.nbytes
    local_models = task.init_model().repeat(len(block), 1)
    assert model_bytes == 3 * local_models.nbytes


@pytest.mark.parametrize("codec", ["none", "topk:0.5"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_estimate_counts_the_rows_a_real_trainer_keeps(method: str, codec: str, tmp_path: Path) -> None:
    # Prepare: a real Trainer of each built-in with a dense and an error-feedback codec (a residual
    # is kept only for a fresh increment: FedAvg's yes, FedCLUP's w_i - w_g no)
    data = (["data.kind=fashion_mnist", "model.kind=cnn"] if METHODS[method].parameter_groups  # a body/head split
            else ["data.samples_per_client=20", "data.dim=6", "data.num_classes=3"])
    cfg = load_config(None, [*data, "data.num_clients=5", f"algorithm.name={method}", f"comm.codec={codec}",
                             "algorithm.local_lr=0.1", f"run.out_dir={tmp_path}", "train.dtype=float64"])
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    # Execute
    _, model_bytes = estimate_rank_bytes(cfg, world_size=1)
    # Assert: the working copies, the algorithm's rows of the model's size and the residual the store
    # holds, which is counted as one model (SCAFFOLD's is its 2-model wire, FedRep's the body:
    # counted once and not at all, so the estimate never exceeds what is allocated)
    num_params, working = trainer.global_model.numel(), WORKING_COPIES * 5 * trainer.global_model.nbytes
    kept = [t for t in trainer.store.rows("algo").values() if t.shape[1:] == (num_params,)]
    residuals = list(trainer.store.rows("codec").values())
    counted_residual = sum(trainer.global_model.nbytes * 5 for t in residuals if t.shape[1] >= num_params)
    assert model_bytes == working + sum(t.nbytes for t in kept) + counted_residual
    assert model_bytes <= working + sum(t.nbytes for t in trainer.store.state_dict().values())
    assert len(kept) == METHODS[method].kept_models
    assert len(residuals) == (codec != "none" and METHODS[method].message == INCREMENT)


def test_a_plugin_whose_rows_are_not_its_declared_kept_models_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "two_rows.py").write_text(
        "from pfl_dist.algorithms import FedAvg, Row\n"
        "from pfl_dist.methods import MethodInfo\n\n\n"
        "class TwoRows(FedAvg):\n"
        "    info = MethodInfo('tworows', 'TwoRows', colors='#123456', marker='8')\n\n"
        "    def client_rows(self):\n"
        "        return (*super().client_rows(), Row('momentum', 'zeros'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    outcome = run_main(train.main, ["algorithm.name=two_rows:TwoRows", "data.num_clients=4",
                                    f"run.out_dir={tmp_path / 'out'}"])
    assert_one_line(outcome, code=2, contains=["algorithm.name=two_rows:TwoRows", "keep 2 row(s)",
                                               "local_models, momentum", "kept_models=1", "kept_models=2"])


@pytest.mark.parametrize("kind", ["cnn", "logreg", "linear"])
@pytest.mark.parametrize(("input_shape", "num_classes"), [(MNIST_INPUT_SHAPE, MNIST_CLASSES),
                                                          (cifar.INPUT_SHAPE, cifar.NUM_CLASSES),
                                                          (leaf.INPUT_SHAPE, leaf.NUM_CLASSES)])
def test_image_model_sizes_are_the_models_own(kind: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
    model = build_image_model(kind, input_shape=input_shape, num_classes=num_classes)
    assert MODELS[kind].num_params(input_shape, num_classes) == model.num_params


def _write_clients(directory: Path, counts: list[int], *, fmt: str, dim: int) -> None:
    """Client files of `counts` samples each; CSV with a blank line and a comment the reader skips."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, n in enumerate(counts):
        x, y = rng.standard_normal((n, dim)), rng.integers(0, 3, size=n)
        if fmt == "npz":
            np.savez(directory / f"{k + 1}_client_data.npz", X=x, y=y)
            continue
        rows = [",".join(f"{v:.6g}" for v in (*features, label)) for features, label in zip(x, y, strict=True)]
        (directory / f"{k + 1}_client_data.csv").write_text("# written by the test\n" + rows[0] + "\n\n"
                                                            + "\n".join(rows[1:]))  # no newline at the end


@pytest.mark.parametrize("fmt", ["csv", "npz"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_estimate_is_what_the_client_files_task_allocates(tmp_path: Path, fmt: str, dtype: str) -> None:
    counts = [7, 30, 12, 5, 41]  # rank 1 of 2 (clients 3..4) holds the largest client
    _write_clients(tmp_path, counts, fmt=fmt, dim=6)
    assert [samples_at_least(tmp_path / f"{k + 1}_client_data.{fmt}", dim=6) for k in range(5)] == counts
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={tmp_path}", "data.num_clients=5",
                             "data.dim=6", "data.num_classes=3", "model.kind=logreg", f"train.dtype={dtype}"])
    allocated = []
    for rank in range(2):
        block = client_block(rank, world_size=2, num_clients=5)
        task = ClientFilesTask(cfg, client_ids=block, device=torch.device("cpu"), dtype=getattr(torch, dtype))
        as_read = sum(a.features.nbytes + a.labels.nbytes for a in task.arrays)
        data_bytes = task.features.nbytes + task.labels.nbytes + as_read + task.scale.nbytes
        model_bytes = 3 * task.init_model().repeat(len(block), 1).nbytes
        assert estimate_rank_bytes(cfg, world_size=2, rank=rank) == (data_bytes, model_bytes)
        allocated.append((data_bytes, model_bytes))
    assert estimate_rank_bytes(cfg, world_size=2) == max(allocated, key=sum)


def test_a_cifar_batch_image_count_is_read_from_its_opening(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=70, test=30)
    assert [cifar.batch_images_at_least(tmp_path / name) for name in cifar.TRAIN_BATCHES] == [70] * 5
    assert cifar.batch_images_at_least(tmp_path / cifar.TEST_BATCH) == 30
    (tmp_path / "junk").write_bytes(b"not a pickle at all")
    assert cifar.batch_images_at_least(tmp_path / "junk") == 0
    assert cifar.batch_images_at_least(tmp_path / "missing") == 0


def _image_task_bytes(cfg: Config, block: range) -> tuple[int, int]:
    task = ImageTask(cfg, client_ids=block, device=torch.device("cpu"), dtype=torch.float32)
    data_bytes = sum(t.nbytes for t in (task.train_x, task.train_y, task.test_x, task.test_y))
    return data_bytes, 3 * task.init_model().repeat(len(block), 1).nbytes


@pytest.mark.parametrize("kind", ["logreg", "cnn"])
def test_the_cifar_estimate_is_what_the_task_allocates(tmp_path: Path, kind: str) -> None:
    write_cifar10(tmp_path, per_batch=60, test=20)  # 300 images: 10 partitions of 2 classes x 15
    cfg = load_config(None, ["data.kind=cifar10", f"data.data_dir={tmp_path}", "data.num_clients=5",
                             "data.num_partitions=10", f"model.kind={kind}", "algorithm.name=fedavg",
                             "algorithm.local_lr=0.05"])
    data_bytes, model_bytes = estimate_rank_bytes(cfg, world_size=2)
    real_data, real_models = _image_task_bytes(cfg, client_block(0, world_size=2, num_clients=5))
    assert model_bytes == real_models
    assert data_bytes == real_data == 3 * 30 * (3072 * 4 + 8)  # 3 clients of 27 train + 3 test images


def test_the_leaf_estimate_counts_the_fewest_samples_a_chosen_writer_has(tmp_path: Path) -> None:
    write_leaf(tmp_path, num_writers=12, min_samples=6, max_samples=9)
    cfg = load_config(None, ["data.kind=leaf", f"data.data_dir={tmp_path}", "data.num_clients=4",
                             "data.min_samples_per_client=6"])
    data_bytes, model_bytes = estimate_rank_bytes(cfg, world_size=1)
    real_data, real_models = _image_task_bytes(cfg, range(4))
    assert model_bytes == real_models == 3 * 4 * (784 * 62 + 62) * 4
    assert data_bytes == 4 * 6 * (784 * 4 + 8) <= real_data  # each writer has 6..9 training samples


def test_a_cifar_config_too_big_for_memory_is_one_line_before_any_data_is_read(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=60, test=20)
    # 100,000 CNN clients, all trained each round: 2 working copies x 100,000 x 545,098 float32 values
    # = 436 GB; FedAvg's kept local models (218 GB dense) go to the lazy store (store.backend=auto on
    # any machine with less than 872 GB), counted as its cache's bound (256 MiB)
    outcome = run_main(train.main, ["data.kind=cifar10", f"data.data_dir={tmp_path / 'cifar'}",
                                    "data.num_clients=100000", "model.kind=cnn", "algorithm.local_lr=0.01",
                                    "algorithm.name=fedavg", f"run.out_dir={tmp_path / 'out'}"])
    assert_one_line(outcome, code=2, contains=["client models and state 436 GB", "is available", "model.kind"])
    assert not (tmp_path / "out").exists()


def test_the_check_refuses_exactly_beyond_the_available_memory() -> None:
    cfg = load_config(None, ["data.num_clients=4", "data.dim=1000"])
    need = sum(estimate_rank_bytes(cfg, world_size=2))
    check_memory(cfg, world_size=2, available=need)
    with pytest.raises(ConfigError, match=r"needs at least .* per rank .* but only"):
        check_memory(cfg, world_size=2, available=need - 1)
    check_memory(cfg, world_size=2, ranks_here=2, available=2 * need)
    with pytest.raises(ConfigError, match=r"2 ranks here"):
        check_memory(cfg, world_size=2, ranks_here=2, available=2 * need - 1)


def test_available_memory_is_read_and_plausible() -> None:
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    available = available_bytes()
    assert available is not None and 0 < available <= total
