"""data.lazy on client files (issue 24): start-up seconds, ms/round and peak RSS, lazy vs eager.

5,000 NPZ clients of 400 rows x 20 features (5 classes) written once to --dir; the default
algorithm, 1% sampled per round, train.eval_clients=50, algorithm.smoothness=4.0 (no
smoothness pass), one process per mode (run this script once per mode: peak RSS is the
process's). Also the launcher's preflight (every file read and checked once) with --preflight.

    nice -n 5 .venv/bin/python benchmarks/lazy_client_files.py --lazy true
    nice -n 5 .venv/bin/python benchmarks/lazy_client_files.py --lazy false
    nice -n 5 .venv/bin/python benchmarks/lazy_client_files.py --preflight
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.runtime import init_runtime
from pfl_dist.tasks import preflight
from pfl_dist.train import Trainer

M, ROWS, DIM, CLASSES = 5000, 400, 20, 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/tmp/pfl_lazy_client_files")
    parser.add_argument("--lazy", default="true", choices=["true", "false"])
    parser.add_argument("--preflight", action="store_true")
    args = parser.parse_args()
    folder = Path(args.dir) / "npz"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for k in range(M):
            np.savez(folder / f"{k + 1}_client_data.npz", X=rng.standard_normal((ROWS, DIM)),
                     y=rng.integers(0, CLASSES, size=ROWS))
    cfg = load_config(None, [f"run.out_dir={args.dir}/out", f"run.name=lazy_{args.lazy}", "data.kind=client_files",
                             f"data.data_dir={folder}", f"data.num_clients={M}", f"data.dim={DIM}",
                             f"data.num_classes={CLASSES}", "algorithm.sample_fraction=0.01", "train.eval_clients=50",
                             "algorithm.smoothness=4.0", f"data.lazy={args.lazy}", "train.num_rounds=3"])
    if args.preflight:
        started = time.perf_counter()
        preflight(cfg)
        print(f"preflight {time.perf_counter() - started:.2f} s, peak RSS {_peak_mb():.0f} MB")
        return
    runtime = init_runtime(cfg)
    started = time.perf_counter()
    trainer = Trainer(cfg, runtime, stop=StopRequest())
    built = time.perf_counter()
    for round_idx in range(3):
        trainer.run_round(round_idx)
    per_round = (time.perf_counter() - built) / 3
    print(f"data.lazy={args.lazy}: start-up {built - started:.2f} s, {per_round * 1000:.0f} ms/round, "
          f"peak RSS {_peak_mb():.0f} MB")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
