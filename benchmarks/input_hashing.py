"""Cost of the run identity's content fingerprint (pfl_dist/inputs.py) for a cifar10 data folder.

Writes the six CIFAR-10 batch files at their real sizes (random bytes: hashing does not look at
them) and the test fixture (tests/data_fixtures.py `write_cifar10`: 60 images per batch, 100 in
test_batch), waits out the 2 s in which a changed file is never cached, then times `fingerprint()` of
a cifar10 config: the first call reads and hashes every file (from the page cache: the files
were just written), the second finds them in the per-process cache (stat only). Prints one table with the 1-minute load.

    .venv/bin/python benchmarks/input_hashing.py [--repeats 3] [--dir /tmp/input_hashing]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the CIFAR-10 fixture writer lives in tests/data_fixtures.py

from pfl_dist import inputs  # noqa: E402
from pfl_dist.config import load_config  # noqa: E402
from tests.data_fixtures import write_cifar10  # noqa: E402

REAL_BYTES = {**{f"data_batch_{i}": 31_035_704 for i in range(1, 6)}, "test_batch": 31_035_526}  # cifar-10-python


def write_folder(folder: Path, sizes: dict[str, int] | None) -> int:
    """The real sizes as random bytes, or (None) the test fixture's batches; -> bytes hashed."""
    if sizes is None:
        write_cifar10(folder)
        return sum((folder / name).stat().st_size for name in inputs.CIFAR10_FILES)
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        with open(folder / name, "wb") as handle:
            for start in range(0, size, 1 << 24):
                handle.write(os.urandom(min(1 << 24, size - start)))
    return sum(sizes.values())


def time_fingerprint(folder: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of a cold (cache cleared) and a warm `fingerprint` of a cifar10 config."""
    cfg = load_config(None, ["data.kind=cifar10", f"data.data_dir={folder}", "model.kind=logreg",
                             "algorithm.batch_size=32"])
    cold, warm = [], []
    for _ in range(repeats):
        inputs._cache.clear()
        started = time.perf_counter()
        inputs.fingerprint(cfg.to_dict())
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        inputs.fingerprint(cfg.to_dict())
        warm.append(time.perf_counter() - started)
    return statistics.median(cold), statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/input_hashing"))
    args = parser.parse_args()
    sizes = {"test fixture (write_cifar10)": None, "real CIFAR-10 (10,000 images/batch)": REAL_BYTES}
    print(f"{'folder':38} {'bytes':>12} {'first s':>9} {'cached s':>9} {'MB/s':>7} {'load':>5}")
    try:
        for label, folder_sizes in sizes.items():
            folder = args.dir / label.split(" ")[0]
            total = write_folder(folder, folder_sizes)
            time.sleep(inputs.RACY_NS / 1e9 + 0.1)  # files changed in the last 2 s are never cached
            cold, warm = time_fingerprint(folder, args.repeats)
            load = os.getloadavg()[0]
            print(f"{label:38} {total:>12,} {cold:>9.4f} {warm:>9.5f} {total / cold / 1e6:>7.0f} {load:>5.1f}")
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
