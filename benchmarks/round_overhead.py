"""A pfl_dist round's communication vs a raw torch.distributed all_reduce of the same buffer.

    python benchmarks/round_overhead.py [--nproc 2] [--iters 2000] [--blocks 9] [--sizes 21,421643]

Started without torchrun, the script relaunches itself under `torchrun --standalone
--nproc-per-node=N` (gloo) and rank 0 prints the table. Per buffer size (numel, float32):
- raw: `dist.all_reduce(buf)`;
- pfl_dist: what a training round does to communicate, `Communicator.all_reduce(buf,
  traffic=TRAIN)` plus `record_client_traffic` (byte ledger, interface counter, op dispatch);
- pfl_dist + pack: the above plus packing [sum_i n_i w_i, sum_i n_i] from 50 local models and
  unpacking the average (pfl_dist.aggregate), for context;
- bookkeeping: the pfl_dist call on a process without a process group (the ledger work alone,
  no collective): the wrapper's own cost, which is what the ratio measures once load noise is
  averaged out.
Sizes: 21 = the synthetic model's round buffer (d=10, C=2, plus the weight total); 421,643 =
the paper CNN's (421,642 parameters + 1). Methods alternate block by block (`--iters` calls per
block, all ranks synchronised by a barrier before each block) so that machine-load drift hits
all of them alike; the table shows the median over blocks of the mean us per call (the
maximum over ranks of each block). Target (issue 6): pfl_dist <= 1.2x raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pfl_dist.comm import Communicator

from _common import TORCHRUN_ENV, load1, machine_line, print_table, torchrun, verdict

TARGET_RATIO = 1.2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2000, help="calls per timed block (divided by 100 for "
                        "buffers over 100k elements)")
    parser.add_argument("--blocks", type=int, default=9, help="timed blocks per method (median reported)")
    parser.add_argument("--sizes", default="21,421643", help="buffer numels, comma-separated")
    return parser.parse_args()


def relaunch(args: argparse.Namespace) -> int:
    import subprocess

    command = torchrun(args.nproc, os.path.abspath(__file__), *sys.argv[1:])
    env = {**os.environ, **TORCHRUN_ENV}
    return subprocess.call(command, env=env)


def record_models(comm: Communicator, num_participants: int, model_bytes: int) -> None:
    """A dense round's FL-equivalent bytes: every participant sends and receives the model."""
    size = num_participants * model_bytes
    comm.record_client_traffic(uplink_bytes=size, uplink_bytes_dense=size, downlink_bytes=size)


def measure(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from pfl_dist.aggregate import pack_weighted_sum, weighted_average
    from pfl_dist.comm import ByteLedger, Communicator, Traffic
    from pfl_dist.config import Config
    from pfl_dist.runtime import Runtime, init_runtime, shutdown_runtime

    runtime = init_runtime(Config())
    comm = Communicator(runtime, ByteLedger())
    local = Runtime(rank=0, world_size=runtime.world_size, local_rank=0, local_world_size=1,
                    device=runtime.device, backend=None)
    bookkeeping_comm = Communicator(local, ByteLedger())
    rows = []
    for numel in (int(s) for s in args.sizes.split(",")):
        buf = torch.zeros(numel)
        models, weights = torch.randn(50, numel - 1), torch.full((50,), 200.0)
        iters = args.iters if numel <= 100_000 else max(10, args.iters // 100)

        def raw(b: torch.Tensor = buf) -> None:
            dist.all_reduce(b)

        def pfl(b: torch.Tensor = buf) -> None:
            comm.all_reduce(b, traffic=Traffic.TRAIN)
            record_models(comm, 100, (b.numel() - 1) * 4)

        def pfl_pack(m: torch.Tensor = models, w: torch.Tensor = weights, n: int = numel - 1) -> None:
            packed = pack_weighted_sum(m, w, num_params=n)
            comm.all_reduce(packed, traffic=Traffic.TRAIN)
            record_models(comm, 100, n * 4)
            weighted_average(packed)

        def bookkeeping(b: torch.Tensor = buf) -> None:
            bookkeeping_comm.all_reduce(b, traffic=Traffic.TRAIN)
            record_models(bookkeeping_comm, 100, (b.numel() - 1) * 4)

        methods: dict[str, Callable[[], None]] = {"raw all_reduce": raw, "pfl_dist": pfl, "pfl_dist + pack": pfl_pack,
                                                  "bookkeeping only": bookkeeping}
        times: dict[str, list[float]] = {name: [] for name in methods}
        for fn in methods.values():  # warm-up
            for _ in range(min(iters, 50)):
                fn()
        for _ in range(args.blocks):
            for name, fn in methods.items():
                dist.barrier()
                started = time.perf_counter()
                for _ in range(iters):
                    fn()
                block = torch.tensor([(time.perf_counter() - started) / iters])
                dist.all_reduce(block, op=dist.ReduceOp.MAX)
                times[name].append(1e6 * float(block))
        base = statistics.median(times["raw all_reduce"])
        for name, values in times.items():
            us = statistics.median(values)
            rows.append([numel, name, us, us / base, min(values), max(values)])
    if runtime.rank == 0:
        print(f"round_overhead: {machine_line()}, world size {runtime.world_size}, gloo, float32, "
              f"{args.blocks} blocks")
        print_table(["numel", "method", "us/call (median)", "x raw", "min", "max"], rows)
        for row in rows:
            if row[1] == "pfl_dist":
                print(f"target pfl_dist <= {TARGET_RATIO}x raw at numel {row[0]}: "
                      f"{verdict(row[3], TARGET_RATIO)} ({row[3]:.3f}x, load {load1():.2f})")
    shutdown_runtime(runtime)


def main() -> None:
    args = parse_args()
    if "RANK" not in os.environ:
        sys.exit(relaunch(args))
    measure(args)


if __name__ == "__main__":
    main()
