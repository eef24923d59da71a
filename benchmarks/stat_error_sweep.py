"""docs/METHOD.md §4 statistical-error-vs-R figure (50 runs) as one pfl_dist sweep: whole wall time.

    python benchmarks/stat_error_sweep.py [--repeats 3] [--mode in_job|per_point] [--nproc 2]
                                          [--dtype float32]

The 50 runs are configs/sweeps/stat_error_vs_R.yaml's seed 0 without its sixth (lam=auto) curve: 10 R
values x {FedAvg, LocalTrain, FedCLUP at lambda 0.02 / 0.1 / 0.5}; m=10, n=200, d=10, C=2,
K=150, full participation, 50 rounds (LocalTrain 500), 2 ranks (5 virtual clients each).
Measured: `python -m pfl_dist.sweep configs/sweeps/stat_error_vs_R.yaml --only
'^(fedavg|local|fedclup)__.*__seed=0$' --mode M --no-plot` from start to exit, in a fresh out dir, i.e.
every run with its own run dir, TensorBoard run, byte ledger and summary.json.
- in_job (default): pfl_dist.sweep runs all 50 points inside one torchrun job, so torch import
  and process-group start-up are paid once;
- per_point: one torchrun job per point (what a plain loop of runs costs).
cpu s is the user + system CPU of every process of the sweep together (steadier than wall
time on a shared machine; on 2 idle cores the sweep cannot take less than half of it).
Target (issue 6): <= 60 s for the 50 runs (the reference code takes ~11 min).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from _common import REPO, machine_line, median, print_table, run_job, verdict

SWEEP = REPO / "configs" / "sweeps" / "stat_error_vs_R.yaml"
PAPER_RUNS = "^(fedavg|local|fedclup)__.*__seed=0$"  # the sweep file runs 5 seeds; the benchmark times one
TARGET_S = 60.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=("in_job", "per_point"), default="in_job")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return parser.parse_args()


def one_sweep(args: argparse.Namespace) -> tuple[float, float, int, float]:
    """-> (whole wall s, CPU s of all processes, number of completed runs, load at the end)."""
    with tempfile.TemporaryDirectory(prefix="pfl_sweep_bench_") as out:
        sweep_file = SWEEP
        if args.dtype != "float32":  # the sweep file has no dtype key: add it to a copy
            sweep_file = Path(out) / "sweep.yaml"
            text = SWEEP.read_text().replace("  train.eval_every: 5\n",
                                             f"  train.eval_every: 5\n  train.dtype: {args.dtype}\n")
            sweep_file.write_text(text.replace("base: ../default.yaml", f"base: {REPO / 'configs' / 'default.yaml'}"))
        command = [sys.executable, "-m", "pfl_dist.sweep", str(sweep_file), "--only", PAPER_RUNS, "--mode", args.mode,
                   "--nproc-per-node", str(args.nproc), "--jobs", "1", "--out-dir", str(Path(out) / "sweep"),
                   "--no-plot"]
        job = run_job(command, timeout=7200)
        with open(Path(out) / "sweep" / "results.csv") as f:
            num_runs = sum(1 for _ in csv.DictReader(f))
        return job.wall_s, job.cpu_s, num_runs, job.load


def main() -> None:
    args = parse_args()
    print(f"stat_error_sweep: {machine_line()}, pfl_dist.sweep --mode {args.mode}, {args.nproc} ranks, {args.dtype}")
    rows, walls, cpus = [], [], []
    for i in range(args.repeats):
        wall, cpu, num_runs, load = one_sweep(args)
        walls.append(wall)
        cpus.append(cpu)
        rows.append([f"sweep {i + 1}", num_runs, wall, cpu, wall / num_runs, load])
    rows.append(["median", "", median(walls), median(cpus), median([row[4] for row in rows]), ""])
    print_table(["", "runs", "wall s", "cpu s (all procs)", "s per run", "load"], rows)
    print(f"target <= {TARGET_S:.0f} s for 50 runs: {verdict(median(walls), TARGET_S)} ({median(walls):.1f} s)")


if __name__ == "__main__":
    main()
