"""data.lazy on a plug-in dataset (issue 24): start-up seconds, ms/round and peak RSS, lazy vs eager.

examples/my_dataset.py's blobs (60 train + 20 test rows of 10 features, 4 classes; it has
client_size), m clients, 1,000 sampled per round, train.eval_clients=1000, the default algorithm,
algorithm.smoothness=4.0 (no smoothness pass), one process per point (peak RSS is the process's).
`--task-only` builds one rank's task of a 2-rank job (clients 0..m/2-1) and nothing else: the
client_size pass that a lazy start-up makes, without the Trainer.

    PYTHONPATH=examples nice -n 5 .venv/bin/python benchmarks/lazy_plugin.py --m 100000 --lazy true
    PYTHONPATH=examples nice -n 5 .venv/bin/python benchmarks/lazy_plugin.py --m 100000 --lazy false
    PYTHONPATH=examples nice -n 5 .venv/bin/python benchmarks/lazy_plugin.py --m 10000000 --task-only
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.runtime import init_runtime
from pfl_dist.tasks import build_task
from pfl_dist.train import Trainer

SAMPLED, COHORT, ROUNDS = 1000, 1000, 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", type=int, default=100_000)
    parser.add_argument("--lazy", default="true", choices=["true", "false"])
    parser.add_argument("--task-only", action="store_true")
    args = parser.parse_args()
    m = args.m
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [f"run.out_dir={out}", "run.name=bench", "data.kind=my_dataset:blobs",
                                 f"data.num_clients={m}", f"data.params.num_clients={m}", f"data.lazy={args.lazy}",
                                 f"train.eval_clients={COHORT}", f"algorithm.sample_fraction={SAMPLED / m}",
                                 "algorithm.smoothness=4.0", f"train.num_rounds={ROUNDS}",
                                 f"train.eval_every={ROUNDS}"])
        start = time.perf_counter()
        if args.task_only:
            task = build_task(cfg, client_ids=range(m // 2), device=torch.device("cpu"))
            startup = time.perf_counter() - start
            print(f"m={m} task-only (one rank of 2: {m // 2} clients) data.lazy={args.lazy}: start-up "
                  f"{startup:.2f} s, clients made {task.cache.materialized if args.lazy == 'true' else m // 2}, "  # type: ignore[attr-defined]
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
            return
        trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
        startup = time.perf_counter() - start
        trainer.evaluate(round_num=0)
        start = time.perf_counter()
        for round_idx in range(ROUNDS):
            trainer.run_round(round_idx)
        per_round = (time.perf_counter() - start) / ROUNDS
        print(f"m={m} data.lazy={args.lazy}: start-up {startup:.2f} s, {per_round * 1e3:.0f} ms/round, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
