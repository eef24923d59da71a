"""The lazy ClientStore's spill format (pfl_dist/store.py): row files of fixed slots (positioned
reads and writes, as built; or memory-mapped) vs an append-only row log with an index, with the
dense store as the reference.

One model-sized row per client (P = 1010 float64, 8,080 bytes: FedCLUP's local model on the
issue's linear model), k clients on one rank, and the round's traffic of the store: read the
rows of 1,000 sampled clients (uniform, seeded, without replacement), write them back changed.
Then one pass over every client by blocks (`chunks`, what the LocalTrain evaluation model and
FedCLUP's lam = auto read). Back-ends:
- dense: `DenseStore`, every row in RAM;
- rowfile: `LazyStore` as built: a byte-bounded LRU of written rows, each evicted row written
  in place (os.pwrite) into its slot of a sparse file of k fixed-size slots, read back by pread;
- mmap: the same row file, memory-mapped (np.memmap: one fancy-indexed write or read per block);
- log: the same LazyStore with its spill replaced by an append-only log (every evicted row
  appended, an index of k offsets, no compaction), its reads by one positioned read per row.
Each (back-end, k) runs in a fresh process (`--worker`), so its peak RSS is its own. Reported:
ms per round (read + write of 1,000 rows), rows/s, the full pass's seconds, peak RSS (getrusage
ru_maxrss), and the spill's disk use (allocated blocks) and apparent size.

    nice -n 5 .venv/bin/python benchmarks/store_spill.py
    nice -n 5 .venv/bin/python benchmarks/store_spill.py --clients 1000000 --backends rowfile mmap log
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARAMS = 1010
SAMPLED = 1000


def mmap_store_class() -> type:
    """LazyStore with its row file memory-mapped (the first version built, measured against)."""
    import numpy as np
    import torch

    from pfl_dist.store import LazyStore

    class MmapStore(LazyStore):
        def _spill(self, key: str, clients: np.ndarray, rows: np.ndarray) -> None:
            if key not in self.spilled:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                row = self.declared[key]
                dtype = torch.empty((), dtype=self.row_dtype(row)).numpy().dtype
                self.maps = getattr(self, "maps", {})
                self.maps[key] = np.memmap(self.spill_dir / f"{key.replace('/', '.')}.rows", dtype=dtype,
                                           mode="w+", shape=(self.num_clients, *self.row_shape(row)))
                self.spilled[key] = -1
            self.maps[key][clients] = rows

        def _unspill(self, key: str, clients: np.ndarray) -> np.ndarray:
            return np.asarray(self.maps[key][clients])

        def close(self) -> None:
            self.spilled.clear()

    return MmapStore


def log_store_class() -> type:
    """LazyStore with an append-only row log and an index as its spill (the alternative measured)."""
    import numpy as np

    from pfl_dist.store import LazyStore

    class LogStore(LazyStore):
        def _spill(self, key: str, clients: np.ndarray, rows: np.ndarray) -> None:
            if key not in self.spilled:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                self.spilled[key] = open(self.spill_dir / f"{key.replace('/', '.')}.log", "a+b")  # noqa: SIM115
                self.offsets = getattr(self, "offsets", {})
                self.offsets[key] = np.full(self.num_clients, -1, dtype=np.int64)
            log = self.spilled[key]
            log.seek(0, os.SEEK_END)
            start = log.tell()
            log.write(np.ascontiguousarray(rows).tobytes())
            log.flush()
            self.offsets[key][clients] = start + np.arange(len(clients)) * rows[0].nbytes
            self.row_shape_dtype = (rows.shape[1:], rows.dtype)

        def close(self) -> None:
            for log in self.spilled.values():
                log.close()
            self.spilled.clear()

        def _unspill(self, key: str, clients: np.ndarray) -> np.ndarray:
            shape, dtype = self.row_shape_dtype
            size = int(np.prod(shape)) * dtype.itemsize
            fd = self.spilled[key].fileno()
            data = b"".join(os.pread(fd, size, int(offset)) for offset in self.offsets[key][clients])
            return np.frombuffer(data, dtype=dtype).reshape(len(clients), *shape)

    return LogStore


def disk_use(folder: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of the files under `folder`."""
    files = [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []
    return sum(path.stat().st_blocks * 512 for path in files), sum(path.stat().st_size for path in files)


def worker(args: argparse.Namespace) -> None:
    """One back-end at one k in this process; prints one JSON line."""
    import numpy as np
    import torch

    from pfl_dist.store import DenseStore, LazyStore, Row

    model = torch.zeros(PARAMS, dtype=torch.float64)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        spill = Path(tmp) / "store" / "rank0"
        cache = int(args.cache_mb * 2**20)
        store = {"dense": lambda: DenseStore(args.clients, global_model=model),
                 "rowfile": lambda: LazyStore(args.clients, global_model=model, spill_dir=spill, cache_bytes=cache),
                 "mmap": lambda: mmap_store_class()(args.clients, global_model=model, spill_dir=spill,
                                                    cache_bytes=cache),
                 "log": lambda: log_store_class()(args.clients, global_model=model, spill_dir=spill,
                                                  cache_bytes=cache)}[args.worker]()
        store.declare("algo", [Row("local_models", "global")])
        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rng = np.random.default_rng(0)
        rounds = []
        checksum = 0.0
        for round_idx in range(args.rounds):
            rows = torch.from_numpy(np.sort(rng.choice(args.clients, size=SAMPLED, replace=False)))
            started = time.perf_counter()
            state = store.read("algo", rows)
            store.write("algo", rows, {"local_models": state["local_models"] + (round_idx + 1)})
            rounds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _, values in store.chunks("algo"):
            checksum += float(values["local_models"][:, 0].sum())
        full_pass = time.perf_counter() - started
        allocated, apparent = disk_use(spill)
        store.close()
        print(json.dumps({
            "backend": args.worker, "clients": args.clients, "ms_round": 1000 * float(np.median(rounds)),
            "rows_per_s": 2 * SAMPLED / float(np.median(rounds)), "full_pass_s": full_pass,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_rounds_mb": rss_start / 1024, "disk_mb": allocated / 2**20, "apparent_mb": apparent / 2**20,
            "spilled_rows": getattr(store, "spills", 0), "checksum": checksum}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100_000])
    parser.add_argument("--backends", nargs="+", default=["dense", "rowfile", "mmap", "log"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cache-mb", type=float, default=16.0)
    parser.add_argument("--tmp", default=None, help="where the spill goes (default: the system's temp dir)")
    parser.add_argument("--worker", choices=["dense", "rowfile", "mmap", "log"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.clients = args.clients[0]
        worker(args)
        return
    print(f"load {os.getloadavg()[0]:.1f}; P={PARAMS} float64, {SAMPLED} rows read + written per round, "
          f"{args.rounds} rounds, cache {args.cache_mb:g} MiB")
    print("| k | back-end | ms/round | rows/s | full pass s | peak RSS MB | disk MB (apparent) | spilled rows |")
    print("|---|---|---|---|---|---|---|---|")
    results: list[dict[str, Any]] = []
    for clients in args.clients:
        for backend in args.backends:
            command = [sys.executable, __file__, "--worker", backend, "--clients", str(clients), "--rounds",
                       str(args.rounds), "--cache-mb", str(args.cache_mb),
                       *(["--tmp", args.tmp] if args.tmp else [])]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
            if done.returncode:
                print(f"| {clients} | {backend} | failed: {done.stderr.strip().splitlines()[-1]} |||||")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"| {clients:,} | {backend} | {r['ms_round']:.1f} | {r['rows_per_s']:,.0f} | "
                  f"{r['full_pass_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['disk_mb']:.1f} ({r['apparent_mb']:.0f}) | "
                  f"{r['spilled_rows']:,} |",
                  flush=True)
    sums = {(r["clients"], r["checksum"]) for r in results}
    print("every back-end read the same rows:", len(sums) == len({r["clients"] for r in results}))


if __name__ == "__main__":
    main()
