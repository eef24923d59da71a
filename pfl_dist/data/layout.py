"""Where the user-file data kinds find their files below `data.data_dir`: the one statement of
each layout, read by the loaders (client_files.py, cifar.py, leaf.py) and by the run identity's
fingerprints (pfl_dist/inputs.py). No numpy or torch here: the sweep driver imports it."""

from __future__ import annotations

from pathlib import Path

# client_files: `<k>_client_data.csv` or `.npz` for k = 1..m, optionally the true models W_k.
CLIENT_FORMATS = ("csv", "npz")
TRUE_MODELS = "local_true_model.npy"
# cifar10: the "python version" batches (cifar-10-batches-py).
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
# leaf: every JSON file of train/ and of test/, in sorted order.
LEAF_SPLITS = ("train", "test")


def client_file(directory: Path, client: int, fmt: str) -> Path:
    """The file of experiment client `client` (0-based): `<client + 1>_client_data.<fmt>`."""
    return directory / f"{client + 1}_client_data.{fmt}"


def leaf_split_files(directory: Path) -> list[Path]:
    """The JSON files of one LEAF split folder, in the order they are read."""
    return sorted(directory.glob("*.json"))
