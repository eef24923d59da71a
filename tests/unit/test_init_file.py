"""model.init_file: the initial global model from .npy ((d, C) or flat) or .pt (named tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.errors import DataError
from pfl_dist.models.cnn import CNNModel
from pfl_dist.models.init_file import initial_model, model_shapes, read_init_file
from pfl_dist.tasks.synthetic import SyntheticTask

CPU = torch.device("cpu")


def _task(dtype: torch.dtype = torch.float64) -> SyntheticTask:
    cfg = load_config(None, ["data.num_clients=2", "data.dim=5", "data.num_classes=3"])
    return SyntheticTask(cfg, client_ids=range(2), device=CPU, dtype=dtype)


def test_npy_matrix_flat_and_pt_give_the_same_model(tmp_path: Path) -> None:
    # Prepare: one (d, C) = (5, 3) matrix stored three ways.
    matrix = np.arange(15, dtype=np.float64).reshape(5, 3) / 7
    np.save(tmp_path / "w.npy", matrix)
    np.save(tmp_path / "flat.npy", matrix.flatten())
    torch.save({"weight": torch.from_numpy(matrix)}, tmp_path / "w.pt")
    task = _task()
    # Execute
    models = [initial_model(str(tmp_path / name), task) for name in ("w.npy", "flat.npy", "w.pt")]
    # Assert: the flat layout views as W (d, C) with logits = x @ W.
    for model in models:
        assert torch.equal(model, torch.from_numpy(matrix.flatten()))
        assert torch.equal(task.model.weight_matrix(model.unsqueeze(0))[0], torch.from_numpy(matrix))
    assert torch.equal(initial_model(None, task), task.init_model())
    assert initial_model(str(tmp_path / "w.npy"), _task(torch.float32)).dtype == torch.float32


def test_cnn_from_named_tensors(tmp_path: Path) -> None:
    model = CNNModel(62)
    flat = model.init_params(4, dtype=torch.float32)
    torch.save(model.state_dict(flat), tmp_path / "cnn.pt")
    assert torch.equal(read_init_file(tmp_path / "cnn.pt", model_shapes(model)).float(), flat)
    with pytest.raises(DataError, match=r"fc2.weight has shape \(62, 128\), the model's is \(10, 128\)"):
        read_init_file(tmp_path / "cnn.pt", model_shapes(CNNModel(10)))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("transposed.npy", np.zeros((3, 5)), r"shape \(3, 5\) does not match the model \(weight \(5, 3\)\)"),
    ("short.npy", np.zeros(14), r"shape \(14,\) does not match"),
    ("nan.npy", np.full(15, np.nan), "NaN or infinite"),
    ("strings.npy", np.array(["a"] * 15), "expected a numeric array"),
    ("names.pt", {"weights": torch.zeros(5, 3)}, r"missing \['weight'\], unexpected \['weights'\]"),
    ("shape.pt", {"weight": torch.zeros(3, 5)}, r"weight has shape \(3, 5\), the model's is \(5, 3\)"),
    ("tensor.pt", torch.zeros(15), "expected a dict of named tensors"),
    ("corrupt.pt", b"not a zip file", "not a readable .pt file"),
    ("corrupt.npy", b"\x93NUMPY garbage", "not a readable .npy file"),
    ("missing.npy", None, "file not found"),
])
def test_a_file_that_does_not_match_the_model_is_one_line(tmp_path: Path, name: str, content: object,
                                                          message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(DataError, match=message) as info:
        initial_model(str(path), _task())
    assert str(info.value).startswith(f"model.init_file {path}: ") and "\n" not in str(info.value)
