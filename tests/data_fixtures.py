"""Small fixtures in the real on-disk formats of bring-your-own data: per-client CSV files as the
FedCLUP authors' generator writes them, LEAF JSON, and CIFAR-10 python pickle batches."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np


def write_reference_csv_clients(directory: Path, *, num_clients: int = 10, num_samples: int = 30, dim: int = 10,
                                num_classes: int = 2, R: float = 0.5, seed: int = 7) -> Path:
    """Clients in the reference layout: `<k>_client_data.csv` (unscaled features, then the label
    written as a float), `local_true_model.npy` (m, C, d) and `global_true_model.npy` (C, d).
    The data follows the paper's generator: W_k ~ N(0, R^2), x ~ N(v_k, diag(j^-1.2)),
    y = argmax(x W_k^T)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truths = R * rng.standard_normal((num_clients, num_classes, dim))
    for k in range(num_clients):
        center = rng.standard_normal(dim)
        x = center + rng.standard_normal((num_samples, dim)) * np.arange(1, dim + 1) ** -0.6
        y = np.argmax(x @ truths[k].T, axis=1).astype(np.float64)
        rows = [",".join(repr(float(v)) for v in (*features, label)) for features, label in zip(x, y, strict=True)]
        (directory / f"{k + 1}_client_data.csv").write_text("\n".join(rows) + "\n")
    np.save(directory / "local_true_model.npy", truths)
    np.save(directory / "global_true_model.npy", truths.mean(axis=0))
    return directory


def write_leaf(directory: Path, *, num_writers: int = 25, num_files: int = 3, seed: int = 0,
               min_samples: int = 3, max_samples: int = 12) -> dict[str, tuple[int, int]]:
    """A FEMNIST-shaped LEAF dataset: train/ and test/ folders, each with `num_files` JSON files
    holding `users`, `num_samples` and `user_data` (x: 784 floats in [0, 1], y: 0..61). Writers
    are spread over the files; returns writer -> (train samples, test samples)."""
    rng = np.random.default_rng(seed)
    writers = [f"f{1000 + i:04d}_{i % 7:02d}" for i in range(num_writers)]
    counts = {w: (int(rng.integers(min_samples, max_samples + 1)), int(rng.integers(1, 4))) for w in writers}
    for split, index in (("train", 0), ("test", 1)):
        (directory / split).mkdir(parents=True, exist_ok=True)
        for f in range(num_files):
            users = writers[f::num_files]
            user_data = {}
            for user in users:
                n = counts[user][index]
                x = rng.random((n, 784)).round(4)
                y = rng.integers(0, 62, size=n)
                user_data[user] = {"x": x.tolist(), "y": y.tolist()}
            doc = {"users": users, "num_samples": [counts[u][index] for u in users], "user_data": user_data}
            (directory / split / f"all_data_{f}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(doc))
    return counts


CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(directory: Path, *, per_batch: int = 60, test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """The CIFAR-10 python version's layout: data_batch_1..5 and test_batch, each a pickled dict
    with b'batch_label', b'labels' (a list of ints), b'data' ((N, 3072) uint8, rows of 1024 red,
    then green, then blue values, row-major 32x32) and b'filenames'; plus batches.meta.
    Returns the arrays written: train/test images (N, 3, 32, 32) and labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {b"batch_label": f"{name} of 6".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)]}
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        split = "test" if name == "test_batch" else "train"
        written[f"{split}_x"].append(data.reshape(n, 3, 32, 32))
        written[f"{split}_y"].append(np.array(labels))
    with open(directory / "batches.meta", "wb") as handle:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": [s.encode() for s in CIFAR_LABEL_NAMES],
                     b"num_vis": 3072}, handle, protocol=2)
    return {key: np.concatenate(parts) for key, parts in written.items()}
