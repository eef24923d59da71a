"""Evaluation on a cohort (`train.eval_clients=N`) against every client (`all`).

    python benchmarks/cohort_eval.py [--clients 10000,100000] [--cohort 1000] [--repeats 3]

FedCLUP on synthetic data, one plain process hosting every client (no process group: the
evaluation's cost alone, not the network's), 1,000 clients sampled per round, 20 local steps,
4 rounds evaluated every round (5 evaluations). Per population size m and evaluation mode:
- outside training: the job's wall time minus its training time (summary.json `time.wall_s -
  time.train_s`): start-up, the 5 evaluations and the output. Start-up is the same in both
  modes, so the difference is the evaluation's;
- telemetry: the bytes the evaluation reductions hand to the collective (summary.json
  `comm_telemetry.payload_bytes`), which a cohort keeps fixed in m (sums and a histogram, no
  per-client vector).
Medians of `--repeats` jobs, modes alternated so that load drift hits both alike.
"""

from __future__ import annotations

import argparse

from _common import load1, machine_line, median, print_table, train_job


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10000,100000", help="population sizes m, comma-separated")
    parser.add_argument("--cohort", type=int, default=1000, help="train.eval_clients of the cohort runs")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def overrides(num_clients: int, eval_clients: str) -> list[str]:
    return ["algorithm.name=fedclup", f"data.num_clients={num_clients}", "data.samples_per_client=50",
            f"algorithm.sample_fraction={1000 / num_clients}", "algorithm.num_local_steps=20",
            "train.num_rounds=4", "train.eval_every=1", f"train.eval_clients={eval_clients}"]


def main() -> None:
    args = parse_args()
    print(machine_line())
    rows = []
    for num_clients in (int(m) for m in args.clients.split(",")):
        outside: dict[str, list[float]] = {"all": [], str(args.cohort): []}
        telemetry: dict[str, int] = {}
        for _ in range(args.repeats):
            for mode in outside:
                job = train_job(1, overrides(num_clients, mode), launcher="train")
                outside[mode].append(job.summary["time"]["wall_s"] - job.summary["time"]["train_s"])
                telemetry[mode] = job.summary["comm_telemetry"]["payload_bytes"]
        for mode, times in outside.items():
            rows.append((num_clients, mode, f"{median(times):.2f}", telemetry[mode]))
        ratio = median(outside["all"]) / median(outside[str(args.cohort)])
        print(f"m={num_clients}: outside training, all / cohort = {ratio:.1f}x (load {load1():.2f})")
    print_table(["clients m", "train.eval_clients", "outside training s (median)", "telemetry bytes"], rows)


if __name__ == "__main__":
    main()
