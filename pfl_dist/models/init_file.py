"""`model.init_file`: the initial global model read from a file instead of the seeded initialisation.

Two formats:
- `.npy` (numpy, no pickles): a flat array of the model's P parameters in the flat layout, or,
  for a linear model without bias, its (d, C) weight matrix (logits = x @ W);
- `.pt`: a dict of named tensors, exactly the names and shapes of the model's state dict (the
  run's own final/global.pt is one), read with `torch.load(weights_only=True)`.
Any other content (wrong shape, missing or extra names, non-finite values, an unreadable file)
is a `DataError` naming the file and the problem. The launcher checks the file before any rank
starts (each task's `preflight`), and every rank reads it again to build its model.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pfl_dist.errors import DataError

Shapes = dict[str, tuple[int, ...]]


class FlatModel(Protocol):
    num_params: int

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        ...


class HasModel(Protocol):
    def init_model(self) -> torch.Tensor:
        ...

    def model_state_dict(self, model: torch.Tensor) -> dict[str, torch.Tensor]:
        ...


def model_shapes(model: FlatModel) -> Shapes:
    """The model's named parameter shapes, in flat-layout order."""
    return {name: tuple(t.shape) for name, t in model.state_dict(torch.zeros(model.num_params)).items()}


def _describe(shapes: Shapes) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items())


def _from_npy(path: Path, shapes: Shapes, num_params: int) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"model.init_file {path}: not a readable .npy file ({str(err).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise DataError(f"model.init_file {path}: expected a numeric array, got dtype {array.dtype}")
    matrix = list(shapes.values()) == [array.shape] and array.ndim == 2
    if array.shape != (num_params,) and not matrix:
        single = " or a weight matrix " + str(next(iter(shapes.values()))) if len(shapes) == 1 else ""
        raise DataError(f"model.init_file {path}: shape {array.shape} does not match the model "
                        f"({_describe(shapes)}): expected a flat array of {num_params} values{single}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).flatten()


def _from_pt(path: Path, shapes: Shapes) -> torch.Tensor:
    try:
        named = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise DataError(f"model.init_file {path}: not a readable .pt file "
                        f"({(str(err).splitlines() or [type(err).__name__])[0]})") from None
    if not isinstance(named, dict) or not all(isinstance(t, torch.Tensor) for t in named.values()):
        raise DataError(f"model.init_file {path}: expected a dict of named tensors ({_describe(shapes)})")
    if set(named) != set(shapes):
        missing, extra = sorted(set(shapes) - set(named)), sorted(set(named) - set(shapes))
        raise DataError(f"model.init_file {path}: names do not match the model "
                        f"(missing {missing or 'none'}, unexpected {extra or 'none'})")
    for name, shape in shapes.items():
        if tuple(named[name].shape) != shape:
            raise DataError(f"model.init_file {path}: {name} has shape {tuple(named[name].shape)}, "
                            f"the model's is {shape}")
        if named[name].is_complex():
            raise DataError(f"model.init_file {path}: {name} is complex, the model is real")
    return torch.cat([named[name].detach().to(torch.float64).flatten() for name in shapes])


def read_init_file(path: str | Path, shapes: Shapes) -> torch.Tensor:
    """The flat float64 model (P,) stored in `path`, checked against the named `shapes`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model.init_file {path}: file not found")
    num_params = sum(int(np.prod(shape)) for shape in shapes.values())
    flat = _from_npy(path, shapes, num_params) if path.suffix == ".npy" else _from_pt(path, shapes)
    if not bool(torch.isfinite(flat).all()):
        raise DataError(f"model.init_file {path}: contains NaN or infinite values")
    return flat


def check_init_file(path: str | None, model: FlatModel) -> None:
    """The launcher's check: `path` (if set) holds a model of the right shape."""
    if path is not None:
        read_init_file(path, model_shapes(model))


def initial_model(path: str | None, task: HasModel) -> torch.Tensor:
    """The run's initial global model: the task's seeded one, or the one in `path`, in the task's
    dtype and device."""
    model = task.init_model()
    if path is None:
        return model
    shapes = {name: tuple(t.shape) for name, t in task.model_state_dict(model).items()}
    return read_init_file(path, shapes).to(dtype=model.dtype, device=model.device)
