"""CNN local-training throughput: pfl_dist's batched local SGD vs a bare PyTorch loop.

    python benchmarks/cnn_throughput.py [--clients 10] [--epochs 1] [--threads 1] [--repeats 5] [--json]

What is compared (same data, same work):
- data: the first `--clients` experiment clients of configs/fmnist_cnn.yaml (180 training images
  each; mnist5k with 20 partitions if Fashion-MNIST is not installed);
- work: `--epochs` epochs of SGD, batch 16, lr 0.01, over every client's training images;
  samples/s = (sum of the clients' training images x epochs) / wall time;
- bare PyTorch: the textbook loop, one client after another: `PaperCNN` nn.Module, torch.optim.SGD,
  a fresh randperm per epoch, forward, cross_entropy, backward, step;
- pfl_dist: the client-maths path (`local_sgd`, pfl_dist/algorithms/base.py) on an ImageTask's
  clients all at once (k = --clients: torch.func.vmap over
  the stacked flat parameters), i.e. exactly what one rank hosting k virtual clients runs, with
  lam = 0 (FedAvg's local step; pass --lam for FedCLUP's proximal step);
- pfl_dist k=1: the same, one client per call (the 1-client-per-process deployment).
Both sides use the same number of torch threads (default 1, what each of W ranks gets on a
small box). Runs are interleaved and the median of `--repeats` is reported, both per wall
second and per CPU second of this process: on a shared machine other processes steal wall time
at random, while CPU time (with 1 thread) measures the work each loop really costs.
Prints a table (`--json`: every timing as JSON instead). Target (issue 6): >= 0.9x bare PyTorch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import machine_line, print_table

from pfl_dist.algorithms.base import local_sgd
from pfl_dist.config import Config, load_config
from pfl_dist.data.images import FASHION_MNIST_DIR
from pfl_dist.models.cnn import PaperCNN
from pfl_dist.tasks.images import ImageTask


def build_task(num_clients: int, *, epochs: int) -> ImageTask:
    overrides = [f"data.num_clients={num_clients}", f"algorithm.local_epochs={epochs}"]
    try:
        open(f"{FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz", "rb").close()
    except OSError:
        overrides += ["data.kind=mnist5k", "data.num_partitions=20"]
    cfg: Config = load_config("configs/fmnist_cnn.yaml", overrides)
    return ImageTask(cfg, client_ids=range(num_clients), device=torch.device("cpu"), dtype=torch.float32)


def bare_pytorch(task: ImageTask, *, epochs: int, batch_size: int, lr: float) -> None:
    """The reference: one nn.Module per client, trained one client after another."""
    init = task.model.state_dict(task.init_model())
    for row, n in enumerate(task.train_counts):
        x, y = task.train_x[row, :n], task.train_y[row, :n]
        model = PaperCNN()
        model.load_state_dict(init)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(epochs):
            for batch in torch.randperm(n).split(batch_size):
                optimizer.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()


def pfl_dist_local(task: ImageTask, *, clients_per_call: int, lam: float, lr: float) -> None:
    """The local phase (`local_sgd`, as FedAvg/FedCLUP call it) on `clients_per_call` clients at a
    time (the whole rank: k)."""
    init = task.init_model()
    rows = torch.arange(len(task.train_counts))
    for chunk in rows.split(clients_per_call):
        models = init.repeat(len(chunk), 1)
        local_sgd(task, models, chunk, round_idx=0, lr=lr, anchor=init, lam=lam, fused=True)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


TARGET_RATIO = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lam", type=float, default=0.0)
    parser.add_argument("--json", action="store_true", help="print every timing as JSON instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = build_task(args.clients, epochs=args.epochs)
    batch_size, lr = task.cfg.algorithm.batch_size or 16, 0.01
    num_samples = sum(task.train_counts) * args.epochs
    variants: dict[str, Callable[[], None]] = {
        "bare_pytorch_sequential": lambda: bare_pytorch(task, epochs=args.epochs, batch_size=batch_size, lr=lr),
        f"pfl_dist_vmap_k{args.clients}": lambda: pfl_dist_local(task, clients_per_call=args.clients,
                                                                 lam=args.lam, lr=lr),
        "pfl_dist_k1": lambda: pfl_dist_local(task, clients_per_call=1, lam=args.lam, lr=lr),
    }
    for fn in variants.values():  # warm-up: first-call allocations and vmap tracing
        fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            wall_s, cpu_s = timed(fn)
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
    result = {"clients": args.clients, "epochs": args.epochs, "batch_size": batch_size, "threads": args.threads,
              "repeats": args.repeats, "num_samples": num_samples, "lam": args.lam, "vectorized": task.model.vectorize}
    for label, times in (("wall", wall), ("cpu", cpu)):
        rates = {name: num_samples / statistics.median(values) for name, values in times.items()}
        bare = rates["bare_pytorch_sequential"]
        result[f"samples_per_{label}_s_median"] = {k: round(v, 1) for k, v in rates.items()}
        result[f"ratio_vs_bare_{label}"] = {k: round(v / bare, 3) for k, v in rates.items()}
        result[f"{label}_s"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"cnn_throughput: {machine_line()}, {args.clients} clients x {num_samples // args.clients} samples, "
          f"{args.epochs} epoch(s), batch {batch_size}, {args.threads} thread(s), median of {args.repeats}")
    print_table(["variant", "samples/cpu s", "x bare (cpu)", "samples/wall s", "x bare (wall)"],
                [[name, result["samples_per_cpu_s_median"][name], result["ratio_vs_bare_cpu"][name],
                  result["samples_per_wall_s_median"][name], result["ratio_vs_bare_wall"][name]] for name in variants])
    for name in variants:
        if name != "bare_pytorch_sequential":
            ratio = result["ratio_vs_bare_cpu"][name]
            status = "met" if ratio >= TARGET_RATIO else "MISSED"
            print(f"target {name} >= {TARGET_RATIO}x bare (cpu): {status} ({ratio:.3g}x)")


if __name__ == "__main__":
    main()
