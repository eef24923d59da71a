"""LEAF benchmark data (FEMNIST): JSON files in `train/` and `test/`, each writer one client.

Every JSON file holds `users` (writer ids), `num_samples` (one count per user) and `user_data`
(user -> {"x": [[784 floats in [0, 1]], ...], "y": [class, ...]}). A dataset is split across
several files, in both folders; a writer's test samples are in test/. Files are read in sorted
name order and writers kept in the order they appear, so every rank sees the same list.

Clients: the writers with at least `min_samples` training samples; of those, `num_clients`
are chosen by the run's seed (pfl_dist/data/partition.py `select_clients`) and kept in list
order. FEMNIST samples are 28x28 grey images (stored flat) of 62 classes (digits, upper and
lower case letters).

The result is an `ImageDataset` whose natural partition (`clients`) lists each client's
training and test sample indices into `train`; `test` holds every chosen writer's test samples
(in client order), the set the global model is evaluated on. Plain numpy; any problem is one
`DataError` line naming the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pfl_dist.data.images import ImageDataset, ImageSplit
from pfl_dist.data.layout import leaf_split_files
from pfl_dist.data.partition import select_clients
from pfl_dist.errors import DataError

INPUT_SHAPE = (1, 28, 28)  # FEMNIST
NUM_CLASSES = 62
SAMPLE_SIZE = 28 * 28
LEAF_DEPTH = 5  # the document, user_data, a user, x, a sample

Writers = dict[str, tuple[np.ndarray, np.ndarray]]  # user -> (x (n, 784) float32, y (n,) int64)


def _read_file(path: Path) -> Writers:
    if not path.is_file():  # a FIFO or a device named *.json would block or never end
        raise DataError(f"{path}: not a regular file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({type(err).__name__})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RecursionError:  # valid JSON nested deeper than the parser's recursion limit
        raise DataError(f"{path}: not a LEAF file: its JSON nests deeper than {sys.getrecursionlimit()} levels "
                        f"(a LEAF file nests {LEAF_DEPTH})") from None
    if not isinstance(doc, dict) or not all(key in doc for key in ("users", "num_samples", "user_data")):
        raise DataError(f"{path}: not a LEAF file (needs 'users', 'num_samples' and 'user_data')")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
        raise DataError(f"{path}: 'users' and 'num_samples' must be lists of the same length")
    if not isinstance(data, dict):
        raise DataError(f"{path}: 'user_data' must map users to their samples")
    writers: Writers = {}
    for user, count in zip(users, counts, strict=True):
        writers[str(user)] = _user_arrays(path, str(user), count, data.get(user))
    return writers


def _user_arrays(path: Path, user: str, count: Any, samples: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(samples, dict) or "x" not in samples or "y" not in samples:
        raise DataError(f"{path}: user {user} has no 'x' and 'y' in 'user_data'")
    try:
        x = np.asarray(samples["x"], dtype=np.float32)
        y_raw = np.asarray(samples["y"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: user {user}: 'x' must be lists of {SAMPLE_SIZE} numbers and 'y' numbers") from None
    if x.size == 0:
        x = x.reshape(0, SAMPLE_SIZE)
    if x.ndim != 2:
        raise DataError(f"{path}: user {user}: 'x' must be a list of samples, each a list of {SAMPLE_SIZE} numbers")
    if x.shape[0] != y_raw.shape[0] or y_raw.ndim != 1 or x.shape[0] != count:
        raise DataError(f"{path}: user {user}: num_samples says {count}, 'x' has {x.shape[0]} rows and "
                        f"'y' {y_raw.size} labels")
    if x.shape[0] and x.shape[1] != SAMPLE_SIZE:
        raise DataError(f"{path}: user {user}: samples have {x.shape[1]} values, FEMNIST's have "
                        f"{SAMPLE_SIZE} (28x28)")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: user {user}: 'x' holds NaN or infinite values")
    bad = (y_raw != np.round(y_raw)) | (y_raw < 0) | (y_raw >= NUM_CLASSES)
    if bad.any():
        raise DataError(f"{path}: user {user}: label {y_raw[np.argmax(bad)]:g} is not a class in 0..{NUM_CLASSES - 1}")
    return x.reshape(-1, SAMPLE_SIZE), y_raw.astype(np.int64)


def read_split(directory: Path) -> Writers:
    """Every writer of one folder (train/ or test/), in sorted-file then file order."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (a LEAF dataset has train/ and test/ folders of JSON files)")
    files = leaf_split_files(directory)
    if not files:
        raise DataError(f"{directory}: holds no .json files")
    writers: Writers = {}
    for path in files:
        for user, arrays in _read_file(path).items():
            if user in writers:
                raise DataError(f"{path}: user {user} appears in more than one file of {directory.name}/")
            writers[user] = arrays
    return writers


def eligible_writers(train: Writers, *, min_samples: int) -> list[str]:
    return [user for user, (_, y) in train.items() if len(y) >= min_samples]


def load_leaf(data_dir: str | None, *, min_samples: int, num_clients: int, seed: int) -> ImageDataset:
    if data_dir is None:
        raise DataError("data.kind leaf needs data.data_dir: a folder with train/ and test/ folders of LEAF JSON files")
    root = Path(data_dir)
    train, test = read_split(root / "train"), read_split(root / "test")
    eligible = eligible_writers(train, min_samples=min_samples)
    if len(eligible) < num_clients:
        raise DataError(f"{root}: {len(eligible)} writers have >= {min_samples} training samples "
                        f"(data.min_samples_per_client), data.num_clients asks for {num_clients}")
    chosen = [eligible[i] for i in select_clients(len(eligible), num_clients=num_clients, seed=seed)]
    empty = np.zeros((0, SAMPLE_SIZE), dtype=np.float32), np.zeros(0, dtype=np.int64)
    pool_x, pool_y, test_x, test_y, clients = [], [], [], [], []
    start = 0
    for user in chosen:
        (x_train, y_train), (x_test, y_test) = train[user], test.get(user, empty)
        n_train, n_test = len(y_train), len(y_test)
        pool_x += [x_train, x_test]
        pool_y += [y_train, y_test]
        test_x.append(x_test)
        test_y.append(y_test)
        clients.append((np.arange(start, start + n_train), np.arange(start + n_train, start + n_train + n_test)))
        start += n_train + n_test
    return ImageDataset(
        name="leaf",
        train=ImageSplit(images=np.concatenate(pool_x), labels=np.concatenate(pool_y)),
        test=ImageSplit(images=np.concatenate(test_x), labels=np.concatenate(test_y)),
        num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, clients=tuple(clients),
    )
