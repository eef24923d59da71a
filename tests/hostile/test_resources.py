"""The memory estimate behind the refusal of configs that cannot fit (family 2): it matches what
the synthetic task really allocates, the image model sizes it assumes are the models' own, and
the check refuses exactly when the estimate exceeds the available memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.data.images import IMAGE_SHAPE
from pfl_dist.errors import ConfigError
from pfl_dist.resources import IMAGE_NUM_PARAMS, NUM_IMAGE_CLASSES, available_bytes, check_memory, estimate_rank_bytes
from pfl_dist.sampling import client_block
from pfl_dist.tasks.images import build_image_model
from pfl_dist.tasks.synthetic import SyntheticTask


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


@pytest.mark.parametrize("kind", ["cnn", "logreg", "linear"])
def test_image_model_sizes_are_the_models_own(kind: str) -> None:
    # The estimate covers the MNIST-layout kinds (IMAGE_TRAIN_SIZES): 1 x 28 x 28 pixels, 10 classes.
    model = build_image_model(kind, input_shape=(1, *IMAGE_SHAPE), num_classes=NUM_IMAGE_CLASSES)
    assert IMAGE_NUM_PARAMS[kind] == model.num_params


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
