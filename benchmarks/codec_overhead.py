"""Encode/decode time of each update codec as a share of the training round.

    python benchmarks/codec_overhead.py [--tasks cnn,synthetic] [--rounds 3] [--json]

One process hosts every client (no process group), so the collectives are counted no-ops and
the exchange's time is the codec's own work: weighting, encoding, decoding, error feedback,
PowerSGD's QR. Per codec and task, the median over rounds of
- round: `Trainer.run_round` (local training + exchange + global step),
- exchange: `Exchange.run_round`, minus the time inside the (no-op) collectives,
both as wall and as this thread's CPU time (the machine is shared: CPU time is what the work
costs, wall time what other jobs let it take), and the exchange's share of the round.
Tasks (the settings of configs/sweeps/codecs.yaml, fewer clients for the CNN):
- cnn: Fashion-MNIST, the paper's CNN (421,642 parameters), 4 clients, E = 1 epoch;
- synthetic: m = 1000, 100 clients sampled per round, d = 10, C = 2, K = 150.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _common import REPO, machine_line, print_table

from pfl_dist.config import load_config
from pfl_dist.runtime import init_runtime
from pfl_dist.train import Trainer

CODECS = ("none", "fp16", "bf16", "qsgd:4", "topk:0.01", "randk:0.1", "powersgd:2")
TASKS = {
    "cnn": (str(REPO / "configs/fmnist_cnn.yaml"),
            ("data.num_clients=4", "algorithm.local_epochs=1", "algorithm.local_lr=0.05")),
    "synthetic": (None, ("data.num_clients=1000", "data.samples_per_client=200", "data.R=2.0",
                         "algorithm.num_local_steps=150", "algorithm.sample_fraction=0.1", "algorithm.lam=0.02")),
}


class Clock:
    """Wall and thread-CPU seconds spent inside wrapped calls, per round."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall.append(time.perf_counter() - wall)
                self.cpu.append(time.thread_time() - cpu)
        return timed


def measure(task: str, codec: str, *, rounds: int) -> dict[str, Any]:
    config, overrides = TASKS[task]
    with tempfile.TemporaryDirectory(prefix="pfl_codec_bench_") as out:
        cfg = load_config(config, [*overrides, f"comm.codec={codec}", f"train.num_rounds={rounds}",
                                   f"train.eval_every={rounds}", f"run.out_dir={out}", "run.name=bench"])
        trainer = Trainer(cfg, init_runtime(cfg))
        round_clock, exchange_clock, wire_clock = Clock(), Clock(), Clock()
        exchange = trainer.exchange
        exchange.run_round = exchange_clock.wrap(exchange.run_round)  # type: ignore[method-assign]
        exchange.wire.all_reduce = wire_clock.wrap(exchange.wire.all_reduce)  # type: ignore[method-assign]
        exchange.wire.all_gather = wire_clock.wrap(exchange.wire.all_gather)  # type: ignore[method-assign]
        trainer.run_round = round_clock.wrap(trainer.run_round)  # type: ignore[method-assign]
        try:
            summary = trainer.train()
        finally:
            trainer.close()
    per_round = len(wire_clock.wall) // max(1, len(exchange_clock.wall))
    wire_wall = [sum(wire_clock.wall[i * per_round:(i + 1) * per_round]) for i in range(len(exchange_clock.wall))]
    wire_cpu = [sum(wire_clock.cpu[i * per_round:(i + 1) * per_round]) for i in range(len(exchange_clock.cpu))]
    codec_wall = [e - w for e, w in zip(exchange_clock.wall, wire_wall, strict=True)]
    codec_cpu = [e - w for e, w in zip(exchange_clock.cpu, wire_cpu, strict=True)]
    result = {
        "task": task, "codec": codec,
        "round_ms": 1000 * statistics.median(round_clock.wall),
        "round_cpu_ms": 1000 * statistics.median(round_clock.cpu),
        "codec_ms": 1000 * statistics.median(codec_wall), "codec_cpu_ms": 1000 * statistics.median(codec_cpu),
        "compression": summary["comm"]["uplink_bytes_dense"] / summary["comm"]["uplink_bytes"],
    }
    result["share_cpu"] = result["codec_cpu_ms"] / result["round_cpu_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="cnn,synthetic")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(task, codec, rounds=args.rounds) for task in args.tasks.split(",")
               for codec in args.codecs.split(",")]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(machine_line())
    print_table(["task", "codec", "compression", "round ms (cpu)", "encode+decode ms (cpu)", "share of round (cpu)",
                 "round ms (wall)", "encode+decode ms (wall)"],
                [[r["task"], r["codec"], f"{r['compression']:.1f}x", r["round_cpu_ms"], r["codec_cpu_ms"],
                  f"{100 * r['share_cpu']:.2f}%", r["round_ms"], r["codec_ms"]] for r in results])


if __name__ == "__main__":
    main()
