"""What one rank's lazy round pays to make its clients, against the eager round's training (issue 24).

    nice -n 5 .venv/bin/python benchmarks/lazy_generation.py

The setting of benchmarks/population.py: FedCLUP on the paper's synthetic clients (n = 200, d = 10,
C = 2, float32), 1,000 clients sampled per round on 2 ranks, so --clients 500 per rank, 20 local
steps, m = 10^7 (the clients are drawn from rank 0's half). One process, 1 thread (a rank's share
of the 2 cores), every part timed on fresh clients each repeat, parts interleaved, median of
--repeats. Parts:
- draws: the per-client generators and their standard normals alone (2,030 a client: C x d for
  W_k, d for v_k, n x d for X_k). These are the client's data bit for bit (the float64 goldens pin
  them), so no faster path may change them: the floor of anything lazy;
- generate: `generate_clients`, the draws plus the arithmetic that makes features, labels and scale;
- rows: what the round asks of the lazy task, `task.features[rows]` and `task.labels[rows]` on
  clients not held (generate, per-client tensors in the cache, the stacked batch);
- train: the eager round's local phase on those clients (`prox_gd_linear_softmax`, 20 steps), the
  work a round does whatever the data mode.
"x train" is each part over train. The whole round also exchanges and aggregates, the same in both
modes; docs/PERFORMANCE.md ("population") adds these parts to the eager round population.py measured.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import machine_line, median, print_table

from pfl_dist.api import build_config
from pfl_dist.data.synthetic import client_draws
from pfl_dist.solvers.linear import prox_gd_linear_softmax
from pfl_dist.tasks.synthetic import SyntheticTask

SAMPLED, LOCAL_STEPS, LAM, LR = 1000, 20, 0.25, 0.01


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="clients a rank makes per round")
    parser.add_argument("--num-clients", type=int, default=10_000_000, help="data.num_clients (m)")
    parser.add_argument("--repeats", type=int, default=15)
    return parser.parse_args()


def lazy_task(num_clients: int) -> SyntheticTask:
    cfg = build_config(None, {
        "data.kind": "synthetic", "data.samples_per_client": 200, "data.dim": 10, "data.num_classes": 2,
        "data.R": 2.0, "data.num_clients": num_clients, "data.lazy": True, "algorithm.name": "fedclup",
        "algorithm.sample_fraction": SAMPLED / num_clients, "train.eval_clients": 1000, "train.dtype": "float32"})
    return SyntheticTask(cfg, client_ids=range(num_clients // 2), device=torch.device("cpu"), dtype=torch.float32)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    task = lazy_task(args.num_clients)
    data = task.cfg.data
    rng = np.random.default_rng(0)
    draws = np.empty((args.clients, data.num_classes * data.dim + data.dim + data.samples_per_client * data.dim))

    def fresh_rows() -> list[int]:  # new clients each repeat: the cache holds none of them
        return sorted(rng.choice(len(task.client_ids), args.clients, replace=False).tolist())

    def part_draws(rows: list[int]) -> None:
        client_draws(rows, draws, seed=task.cfg.run.seed, num_clients=data.num_clients)

    def part_rows(rows: list[int]) -> None:
        index = torch.tensor(rows)
        task.features[index], task.labels[index]

    eager: dict[str, torch.Tensor] = {}

    def part_train(rows: list[int]) -> None:
        models = torch.zeros(len(rows), task.num_params, dtype=torch.float32)
        prox_gd_linear_softmax(task.model, models, eager["features"], eager["labels"],
                               anchor=torch.zeros(task.num_params), lam=LAM, lr=LR, num_steps=LOCAL_STEPS)

    parts: dict[str, Callable[[list[int]], object]] = {
        "draws": part_draws, "generate": lambda rows: task._generate(rows), "rows": part_rows, "train": part_train}
    times: dict[str, list[float]] = {name: [] for name in parts}
    for repeat in range(args.repeats):
        rows = fresh_rows()
        block = task._generate(rows)  # the eager tensors of these clients, as the eager task casts them
        eager["features"] = torch.from_numpy(block.features).to(torch.float32)
        eager["labels"] = torch.from_numpy(block.labels)
        for name, part in parts.items():
            start = time.perf_counter()
            part(rows)
            times[name].append(time.perf_counter() - start)
        last = ", ".join(f"{name} {values[-1] * 1e3:.1f} ms" for name, values in times.items())
        print(f"repeat {repeat + 1}/{args.repeats}: {last}", flush=True)
    ms = {name: median(values) * 1e3 for name, values in times.items()}
    print(f"\n{args.clients} clients of m = {args.num_clients:,}, median of {args.repeats}; {machine_line()}")
    print_table(["part", "ms per round", "us per client", "x train"],
                [[name, ms[name], ms[name] * 1e3 / args.clients, f"{ms[name] / ms['train']:.2f}"] for name in parts])


if __name__ == "__main__":
    main()
