"""Lazy client data (data.lazy, pfl_dist/data/lazy.py): start-up seconds and peak RSS, lazy vs eager.

FedCLUP on synthetic data (n = 200, d = 10, C = 2, float32), 1,000 clients sampled per round
(algorithm.sample_fraction = 1000 / m), 20 local steps, train.eval_clients = 1000, a few rounds,
ONE process, for m = 10^4 .. 10^6 (10^7 with --sizes). algorithm.smoothness is a number, 100 (lazy
data would otherwise generate every client once at start-up for the exact max L_i, see
pfl_dist/data/lazy.py; --smoothness auto measures that pass; the exact max over 10^4 clients is
86.3), the same for both modes, so the two runs are the same run (same global_model_sha256,
checked).

Each point is a fresh `python benchmarks/lazy_data.py --worker ...` process, so its peak RSS
(getrusage ru_maxrss) is its own. It reports:
- start-up: seconds to build the Trainer (task data, the per-client store, cohort), which is what
  grows with m; the whole process wall (python and torch imports included) separately;
- round: summary.json time.round_s_median;
- peak RSS of the process, and after start-up;
- data: the bytes of client data held at the end (eager: the rank's tensors; lazy: the cache),
  and store: the bytes of the dense per-client store (pfl_dist/store.py; not data.lazy's to shrink:
  it still grows with m), plus the other O(m) vectors of the engine (sample counts);
Eager points whose memory estimate (pfl_dist/resources.py) exceeds --eager-max-gb are skipped.

    .venv/bin/python benchmarks/lazy_data.py                      # 10^4, 10^5, 10^6
    .venv/bin/python benchmarks/lazy_data.py --sizes 10000000 --modes true
    .venv/bin/python benchmarks/lazy_data.py --sizes 100000 --smoothness auto
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLED = 1000


def overrides(num_clients: int, lazy: str, rounds: int, out_dir: str, smoothness: str = "100.0") -> list[str]:
    return ["data.kind=synthetic", f"data.num_clients={num_clients}", "algorithm.name=fedclup",
            f"algorithm.sample_fraction={SAMPLED / num_clients!r}", "algorithm.num_local_steps=20",
            f"algorithm.smoothness={smoothness}", "train.eval_clients=1000", f"train.num_rounds={rounds}",
            f"train.eval_every={rounds}", f"data.lazy={lazy}", f"run.out_dir={out_dir}", "run.name=point"]


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line of measurements."""
    import torch

    import pfl_dist.train as train_module
    from pfl_dist.checkpoint import StopRequest
    from pfl_dist.config import load_config
    from pfl_dist.runtime import init_runtime

    measured: dict[str, Any] = {}

    class Measured(train_module.Trainer):
        def __init__(self, *a: Any, **k: Any) -> None:
            started = time.perf_counter()
            super().__init__(*a, **k)
            measured["startup_s"] = time.perf_counter() - started
            measured["rss_after_startup_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    train_module.Trainer = Measured  # type: ignore[misc]
    cfg = load_config(None, overrides(args.clients, args.lazy, args.rounds, args.out_dir, args.smoothness))
    trainer = train_module.run_session(cfg, init_runtime(cfg), StopRequest())
    task: Any = trainer.task
    if task.lazy:
        data = sum(t.nbytes for client in [*task.cache._pinned.values(), *task.cache._lru.values()] for t in client)
        held = len(task.cache)
    else:
        data = sum(t.untyped_storage().nbytes() for t in (task.features, task.labels, task.scale, task.true_models))
        held = len(task.client_ids)
    store = sum(t.untyped_storage().nbytes() for t in trainer.store.state_dict().values())
    engine = task.sample_counts.nbytes
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**measured, "peak_rss_mb": usage.ru_maxrss / 1024, "data_mb": data / 2**20,
                      "clients_held": held, "store_mb": store / 2**20, "engine_vectors_mb": engine / 2**20,
                      "round_s": trainer.summary["time"]["round_s_median"],
                      "sha": trainer.summary["global_model_sha256"], "torch": torch.__version__}))


def run_point(num_clients: int, lazy: str, rounds: int, smoothness: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out_dir:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--clients", str(num_clients),
                   "--lazy", lazy, "--rounds", str(rounds), "--out-dir", out_dir, "--smoothness", smoothness]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - started
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoothness", default="100.0",
                        help="algorithm.smoothness; auto adds the exact max L_i pass over every client")
    parser.add_argument("--modes", nargs="+", default=["true", "false"], help="data.lazy values to run")
    parser.add_argument("--eager-max-gb", type=float, default=4.0, help="skip eager points estimated above this")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lazy", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(REPO))
    from pfl_dist.config import load_config
    from pfl_dist.resources import estimate_rank_bytes

    header = ("m", "data.lazy", "start-up s", "wall s", "ms/round", "peak RSS MB", "RSS after start-up MB",
              "data MB (clients held)", "store MB", "same w_g")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for num_clients in args.sizes:
        shas = {}
        for lazy in args.modes:
            cfg = load_config(None, overrides(num_clients, lazy, args.rounds, "/tmp", args.smoothness))
            estimate = sum(estimate_rank_bytes(cfg, world_size=1)) / 2**30
            if lazy == "false" and estimate > args.eager_max_gb:
                print(f"| {num_clients:,} | false | not run: estimated {estimate:.1f} GB > --eager-max-gb "
                      f"{args.eager_max_gb} | | | | | | | |", flush=True)
                continue
            point = run_point(num_clients, lazy, args.rounds, args.smoothness)
            if "error" in point:
                print(f"| {num_clients:,} | {lazy} | failed: {point['error']} | | | | | | | |", flush=True)
                continue
            shas[lazy] = point["sha"]
            same = "" if len(shas) < 2 else ("yes" if shas["true"] == shas["false"] else "NO")
            print(f"| {num_clients:,} | {lazy} | {point['startup_s']:.2f} | {point['wall_s']:.1f} | "
                  f"{point['round_s'] * 1e3:.1f} | {point['peak_rss_mb']:.0f} | {point['rss_after_startup_mb']:.0f} | "
                  f"{point['data_mb']:.1f} ({point['clients_held']:,}) | "
                  f"{point['store_mb'] + point['engine_vectors_mb']:.1f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
