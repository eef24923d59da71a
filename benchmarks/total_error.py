"""docs/METHOD.md §4 total-error experiment as one real torchrun job: whole-job wall time and in-loop ms/round.

    python benchmarks/total_error.py [--repeats 3] [--nproc 2] [--lam 0.25] [--dtype float32]
                                     [--eval-every 1] [--launcher torchrun|launch|process] [--repo PATH]

m=1000 clients (500 virtual clients per rank with 2 ranks), n=200, d=10, C=2, R=2, 10% sampled
per round, K=150 local GD steps, 100 rounds, FedCLUP at one lambda, step sizes `auto`, evaluated
every round (as configs/sweeps/total_error_1000.yaml does, for per-round curves).

- whole job: `torchrun --standalone --nproc-per-node=2 -m pfl_dist.train ...`, start to exit,
  measured outside (torch import, data generation, process group, training, evaluation,
  TensorBoard, summary.json, shutdown);
- in-loop: summary.json time.round_s_median (one training round: sampling, local phase,
  all-reduce, global step; evaluation rounds excluded);
- cpu s: user + system CPU of the agent and both ranks together (on 2 idle cores the job
  cannot take less than half of it): steadier than wall time on a shared machine;
- floor: a bare torchrun job that only imports torch, joins the gloo group and all-reduces once.
`--repo` benchmarks another checkout (e.g. a `git worktree` of the commit before a change).
Targets (issue 6): whole job <= 6 s, in-loop <= 20 ms/round. Reference code: ~60 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import REPO, TOTAL_ERROR, bare_torchrun_job, machine_line, median, print_table, train_job, verdict

TARGET_WALL_S = 6.0
TARGET_ROUND_MS = 20.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--lam", type=float, default=0.25)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--launcher", choices=("torchrun", "launch", "process"), default="torchrun")
    parser.add_argument("--repo", type=Path, default=REPO, help="source tree to benchmark")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare torchrun floor")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    overrides = [*TOTAL_ERROR, f"algorithm.lam={args.lam}", f"train.dtype={args.dtype}",
                 f"train.eval_every={args.eval_every}", f"train.num_rounds={args.rounds}"]
    print(f"total_error: {machine_line()}, repo {args.repo}, {args.launcher} x {args.nproc}, "
          f"{args.dtype}, lam {args.lam}, eval every {args.eval_every}")
    rows, walls, cpus, rounds_ms, floors = [], [], [], [], []
    for i in range(args.repeats):
        # Interleave the floor with the jobs so both see the same machine load.
        if not args.no_floor and args.launcher != "process":
            floors.append(bare_torchrun_job(args.nproc).wall_s)
        job = train_job(args.nproc, overrides, repo=args.repo, launcher=args.launcher)
        time_info = job.summary["time"]
        walls.append(job.wall_s)
        cpus.append(job.cpu_s)
        rounds_ms.append(1000 * time_info["round_s_median"])
        rows.append([f"run {i + 1}", job.wall_s, job.cpu_s, time_info["wall_s"], rounds_ms[-1],
                     job.summary["final"]["eval/ITR"], floors[-1] if floors else "-", job.load])
    rows.append(["median", median(walls), median(cpus), "", median(rounds_ms), "", median(floors) if floors else "-",
                 ""])
    print_table(["", "whole job s", "cpu s (all procs)", "trainer s", "round ms", "final ITR", "bare torchrun s",
                 "load"], rows)
    print(f"target whole job <= {TARGET_WALL_S} s: {verdict(median(walls), TARGET_WALL_S)} "
          f"({median(walls):.2f} s; the bare torchrun floor alone is {median(floors):.2f} s)" if floors else
          f"target whole job <= {TARGET_WALL_S} s: {verdict(median(walls), TARGET_WALL_S)} ({median(walls):.2f} s)")
    print(f"target in-loop <= {TARGET_ROUND_MS} ms/round: {verdict(median(rounds_ms), TARGET_ROUND_MS)} "
          f"({median(rounds_ms):.1f} ms)")


if __name__ == "__main__":
    main()
