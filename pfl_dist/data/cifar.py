"""CIFAR-10 from the "python version" directory (cifar-10-batches-py): data_batch_1..5 and test_batch.

Each batch is a pickled dict with `data`, a (N, 3072) uint8 array (per image 1024 red, then
1024 green, then 1024 blue values, each a row-major 32x32 plane) and `labels`, N ints in 0..9.
The files were written by Python 2, so keys come back as bytes; str keys are accepted too.

Unpickling runs code named in the file, so batches are read with an unpickler that only builds
the few types a CIFAR batch holds (dicts, lists, strings, numbers and numpy arrays); anything
else is refused as a corrupt file. Plain numpy; every problem is one `DataError` line naming
the file.
"""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from pfl_dist.data.images import ImageDataset, ImageSplit
from pfl_dist.data.layout import CIFAR10_TEST_BATCH, CIFAR10_TRAIN_BATCHES
from pfl_dist.errors import DataError

TRAIN_BATCHES = CIFAR10_TRAIN_BATCHES
TEST_BATCH = CIFAR10_TEST_BATCH
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10

# The only globals a CIFAR batch references: numpy's array reconstruction (numpy 1 and 2 names).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _field(batch: dict[Any, Any], name: str) -> Any:
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    return None


def read_batch(path: Path) -> ImageSplit:
    """One batch file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    if not path.is_file():
        problem = "not a regular file" if path.exists() else "file not found"
        raise DataError(f"{path}: {problem} (a CIFAR-10 python batches directory holds "
                        f"{', '.join(TRAIN_BATCHES)} and {TEST_BATCH})")
    try:
        with open(path, "rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(err).__name__}: {str(err)[:80]})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({os.strerror(err.errno) if err.errno else err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict)")
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 batch (no 'data' array or no 'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 (N, 3072)")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if label_array.shape != (data.shape[0],):
        raise DataError(f"{path}: {label_array.size} labels for {data.shape[0]} images")
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES):
        bad = int(np.argmax((label_array < 0) | (label_array >= NUM_CLASSES)))
        raise DataError(f"{path}: label {label_array[bad]} of image {bad} is not a class in 0..9")
    return ImageSplit(images=data.reshape(-1, *INPUT_SHAPE), labels=label_array)


_INT_OPS = ("BININT1", "BININT2", "BININT", "INT", "LONG1")


def batch_images_at_least(path: Path) -> int:
    """A batch's image count N from its pickle's opening, without loading it (0 when not found):
    the (N, 3072) shape numpy pickles just before the array's bytes, capped at what the file
    can hold. Reads the opcodes up to the shape (the labels list comes first, ~2 ops per image)."""
    if not path.is_file():  # missing, or a FIFO or device that would block
        return 0
    try:
        with open(path, "rb") as handle:
            recent: list[int] = []
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "TUPLE2" and len(recent) == 2 and recent[1] == 3072:
                    return min(recent[0], path.stat().st_size // 3072)
                if opcode.name in _INT_OPS and isinstance(arg, int):
                    recent = [*recent[-1:], arg]
                elif isinstance(arg, (bytes, str)) and len(arg) >= 3072:
                    return 0  # a large byte string (the array's bytes) before any shape
                else:
                    recent = []
    except (OSError, ValueError, EOFError):
        return 0
    return 0


def load_cifar10(data_dir: str | None) -> ImageDataset:
    if data_dir is None:
        raise DataError("data.kind cifar10 needs data.data_dir: the cifar-10-batches-py directory "
                        f"({', '.join(TRAIN_BATCHES)}, {TEST_BATCH})")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data.data_dir {directory}: no such directory")
    parts = [read_batch(directory / name) for name in TRAIN_BATCHES]
    train = ImageSplit(images=np.concatenate([p.images for p in parts]),
                       labels=np.concatenate([p.labels for p in parts]))
    if len(train) == 0:
        raise DataError(f"{directory}: the training batches hold no images")
    return ImageDataset(name="cifar10", train=train, test=read_batch(directory / TEST_BATCH),
                        num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE)
