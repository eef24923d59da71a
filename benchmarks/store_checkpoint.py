"""A LazyStore's checkpoint: today's one-blob format against streaming only the written rows.

    python benchmarks/store_checkpoint.py [--clients 1000000] [--written 30000] [--params 1010]
                                          [--cache-mb 256] [--modes blob,stream]

Each mode runs in its own process (peak RSS is the process's ru_maxrss, measured after the store
is built, so the number is what the checkpoint adds). `blob`: Checkpointer.save of the store's
state_dict() (every client's row: k x P values), then Checkpointer.load. `stream`: the rows of
`written_rows` in blocks of 64 MiB, each written to a raw file (ids + values) and sha256'd while
written, then read back into a fresh store with `load_rows`: what a checkpoint by segments of
written rows (issue 24) costs; the Checkpointer does not write segments yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pfl_dist.checkpoint import Checkpointer
from pfl_dist.config import load_config
from pfl_dist.store import LazyStore, Row

SEGMENT_BYTES = 64 * 2**20


CACHE_MB = 256.0


def build(tmp: Path, clients: int, written: int, params: int, name: str) -> LazyStore:
    store = LazyStore(clients, global_model=torch.zeros(params), spill_dir=tmp / name,
                      cache_bytes=int(CACHE_MB * 2**20))
    store.declare("algo", [Row("local_models", "global")])
    ids = np.sort(np.random.default_rng(0).choice(clients, written, replace=False))
    for start in range(0, written, 1000):
        block = torch.from_numpy(ids[start: start + 1000])
        store.write("algo", block, {"local_models": torch.randn(len(block), params) + 1})
    return store


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mode: str, clients: int, written: int, params: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=".") as name:
        tmp = Path(name)
        store = build(tmp, clients, written, params, "saved")
        before = peak_mib()
        started = time.perf_counter()
        if mode == "blob":
            ckpt = Checkpointer(tmp / "ckpt", rank=0, world_size=1, num_clients=clients, keep=2,
                                config=load_config(None, []).to_dict())
            ckpt.save(1, {"clients": store.state_dict(), "replicated": {}, "rank": {"measured_local": {}}})
            saved = time.perf_counter() - started
            on_disk = sum(p.stat().st_size for p in (tmp / "ckpt").rglob("*") if p.is_file())
            after_save = peak_mib()
            fresh = build(tmp, clients, 0, params, "loaded")
            started = time.perf_counter()
            fresh.load_state_dict(ckpt.load(1)["clients"])
        else:
            files = []
            for index, (block, rows) in enumerate(store.written_rows("algo/local_models",
                                                                    SEGMENT_BYTES // (params * 4 + 8))):
                path = tmp / f"local_models.{index:05d}.bin"
                digest = hashlib.sha256()
                with path.open("wb") as out:
                    for part in (memoryview(block), memoryview(rows.numpy()).cast("B")):
                        out.write(part)
                        digest.update(part)
                files.append((path, len(block), digest.hexdigest()))
            saved = time.perf_counter() - started
            on_disk = sum(p.stat().st_size for p, _, _ in files)
            after_save = peak_mib()
            fresh = build(tmp, clients, 0, params, "loaded")
            started = time.perf_counter()
            for path, count, sha in files:
                data = np.fromfile(path, dtype=np.uint8)
                assert hashlib.sha256(data).hexdigest() == sha
                ids = data[: 8 * count].view(np.int64)
                fresh.load_rows("algo/local_models", ids, torch.from_numpy(data[8 * count:].view(np.float32))
                                .reshape(count, params))
        loaded = time.perf_counter() - started
        probe = torch.arange(0, clients, max(1, clients // 1000))
        same = torch.equal(store.read("algo", probe)["local_models"], fresh.read("algo", probe)["local_models"])
        store.close()
        fresh.close()
        return {"save_s": saved, "load_s": loaded, "disk_mib": on_disk / 2**20, "rss_base_mib": before,
                "rss_save_mib": after_save - before, "rss_peak_mib": peak_mib() - before, "same_rows": same}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--written", type=int, default=30_000)
    parser.add_argument("--params", type=int, default=1010)
    parser.add_argument("--cache-mb", type=float, default=256.0)
    parser.add_argument("--modes", default="blob,stream")
    parser.add_argument("--mode", choices=["blob", "stream"])
    args = parser.parse_args()
    global CACHE_MB
    CACHE_MB = args.cache_mb
    if args.mode:
        print(json.dumps(one(args.mode, args.clients, args.written, args.params)))
        return
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, f"--clients={args.clients}",
                              f"--written={args.written}", f"--params={args.params}",
                              f"--cache-mb={args.cache_mb}"],
                             capture_output=True, text=True, check=True).stdout
        print(mode, out.strip(), flush=True)


if __name__ == "__main__":
    main()
