"""Where the user-file data kinds find their files below `data.data_dir`: the one statement of
each layout, read by the loaders (client_files.py, cifar.py, leaf.py) and by the run identity's
fingerprints (pfl_dist/inputs.py). No numpy or torch here: the sweep driver imports it."""

from __future__ import annotations

from pathlib import Path

# client_files: `<k>_client_data.csv` or `.npz` for k = 1..m, optionally the true models W_k.
CLIENT_FORMATS = ("csv", "npz")
# A client CSV larger than this is refused before it is read: CSV text parses at about 50 MB/s
# (np.loadtxt, docs/RELIABILITY.md), so 1 GiB already takes about 20 s for each of its two reads
# (the launcher's check and the rank). A larger client belongs in `<k>_client_data.npz`, which
# loads at disk speed and whose sample count its header states.
CLIENT_CSV_MAX_BYTES = 1 << 30
# A CSV line holds data.dim + 1 numbers: each at most this many characters (a float64 needs 24:
# '-1.2345678901234567e-308'), so a longer line is refused as soon as it is seen.
CLIENT_CSV_MAX_FIELD_CHARS = 128
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
