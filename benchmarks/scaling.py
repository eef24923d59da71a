"""Cost per round and peak memory per rank vs the number of virtual clients (synthetic, 2 ranks).

    python benchmarks/scaling.py [--clients 100,1000,10000,100000] [--repeats 3] [--rounds 5]
                                 [--nproc 2] [--dtype float32]

Each point is one `torchrun --nproc-per-node=2` job of FedCLUP on the paper's synthetic clients
(n=200, d=10, C=2, R=2, K=150 local GD steps, 10% sampled per round, evaluated once at the
end), so rank r hosts m/2 clients and trains m/20 of them per round. Reported per m (median of
`--repeats` jobs):
- ms/round: summary.json time.round_s_median (training rounds only);
- us per client-step: ms/round / (sampled clients per rank x K), flat if the cost is linear;
- growth: ms/round over the previous row's; linear in sampled clients is 10x per row;
- peak RSS per rank: ru_maxrss of each worker (benchmarks/_rss_worker.py), max over ranks;
- job s: the whole torchrun job (includes generating m/2 clients per rank).
Target (issue 6): per-round time grows no worse than linearly in sampled clients; 100,000
clients fit in memory on 2 ranks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine_line, median, peak_rss_mb, print_table, run_job, torchrun

from pfl_dist.sampling import num_sampled

SAMPLE_FRACTION, LOCAL_STEPS = 0.1, 150
BASE = ("data.kind=synthetic", "data.samples_per_client=200", "data.dim=10", "data.num_classes=2", "data.R=2.0",
        "algorithm.name=fedclup", "algorithm.lam=0.25", f"algorithm.num_local_steps={LOCAL_STEPS}",
        f"algorithm.sample_fraction={SAMPLE_FRACTION}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="100,1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return parser.parse_args()


def one_job(num_clients: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """-> (ms per round, peak RSS MB over ranks, whole job s)."""
    with tempfile.TemporaryDirectory(prefix="pfl_scaling_") as out:
        overrides = [*BASE, f"data.num_clients={num_clients}", f"train.num_rounds={args.rounds}",
                     f"train.eval_every={args.rounds}", f"train.dtype={args.dtype}", f"run.out_dir={out}",
                     "run.name=scaling"]
        worker = str(Path(__file__).with_name("_rss_worker.py"))
        job = run_job(torchrun(args.nproc, worker, *overrides), env={"PFL_BENCH_RSS_DIR": out},
                      run_dir=Path(out) / "scaling")
        return 1000 * job.summary["time"]["round_s_median"], peak_rss_mb(Path(out)), job.wall_s


def main() -> None:
    args = parse_args()
    sizes = [int(s) for s in args.clients.split(",")]
    print(f"scaling: {machine_line()}, torchrun x {args.nproc}, {args.dtype}, {args.rounds} rounds, "
          f"{args.repeats} repeats")
    rows, previous = [], None
    for num_clients in sizes:
        runs = [one_job(num_clients, args) for _ in range(args.repeats)]
        ms, rss, wall = (median([r[i] for r in runs]) for i in range(3))
        per_rank = num_sampled(num_clients, SAMPLE_FRACTION) / args.nproc
        growth = f"{ms / previous:.1f}x" if previous else "-"
        rows.append([num_clients, per_rank, ms, 1000 * ms / (per_rank * LOCAL_STEPS), growth, rss, wall])
        previous = ms
    print_table(["clients", "sampled/rank", "ms/round", "us/client-step", "growth", "peak RSS MB/rank", "job s"], rows)
    growths = [rows[i][2] / rows[i - 1][2] for i in range(1, len(rows))]
    client_ratios = [sizes[i] / sizes[i - 1] for i in range(1, len(sizes))]
    # 25% slack: per-round times of a shared machine move that much between repeats.
    linear = all(g <= 1.25 * r for g, r in zip(growths, client_ratios, strict=True))
    print(f"target per-round time no worse than linear in sampled clients: {'met' if linear else 'MISSED'} "
          f"(growth {', '.join(f'{g:.1f}x' for g in growths)} for {', '.join(f'{r:.0f}x' for r in client_ratios)} "
          f"clients); peak RSS at {sizes[-1]} clients: {rows[-1][5]:.0f} MB per rank")

if __name__ == "__main__":
    main()
