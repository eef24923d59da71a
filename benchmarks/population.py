"""Population scale (issue 24): FedCLUP on synthetic data from 10^4 to 10^7 clients on 2 ranks.

    nice -n 5 .venv/bin/python benchmarks/population.py                    # 10^4 .. 10^7, defaults
    nice -n 5 .venv/bin/python benchmarks/population.py --lazy             # lazy data + lazy store at every m

The issue's setting: FedCLUP (lam 0.25) on the paper's synthetic clients (n = 200, d = 10, C = 2,
float32), 1,000 clients sampled per round (algorithm.sample_fraction = 1000 / m), 20 local steps,
train.eval_clients = 1000 (a seeded cohort, evaluated at round 0 and at the end),
algorithm.smoothness = 100 (a number: `auto` is an exact pass over every client at start-up,
docs/ARCHITECTURE.md "Lazy client data"), --rounds rounds (default 20) with a checkpoint at half
way, one `torchrun --nproc-per-node=2` job per point. Without --lazy every key is at its default
(data.lazy and store.backend `auto`: what a user gets); with --lazy both are forced lazy, so the
smallest m runs the same code path as the largest.

Reported per m:
- ms/round: summary.json time.round_s_median (training rounds, the median);
- start-up s: building the Trainer (task data, the per-client store, the cohort), the slower rank;
- job s: the whole torchrun job, outside (python and torch imports, the evaluations, output);
- peak RSS MB: ru_maxrss of each worker (max over the 2 ranks);
- checkpoint MB: the bytes of the checkpoint written at half way (every shard file of the round);
- data / store: what summary.json `store` and the start-up lines say was chosen.
Targets (issue 24), against the smallest m of the same run: at the largest m, peak RSS <= 2 GB per
process, ms/round <= 2x, job s <= 3x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import machine_line, median, peak_rss_mb, print_table, run_job, torchrun, tree_mb, verdict

SAMPLED, LOCAL_STEPS = 1000, 20
BASE = ("data.kind=synthetic", "data.samples_per_client=200", "data.dim=10", "data.num_classes=2", "data.R=2.0",
        "algorithm.name=fedclup", "algorithm.lam=0.25", f"algorithm.num_local_steps={LOCAL_STEPS}",
        "algorithm.smoothness=100", "train.eval_clients=1000", "train.dtype=float32")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10000,100000,1000000,10000000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="jobs per point (medians)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--lazy", action="store_true", help="data.lazy=true and store.backend=lazy at every m")
    return parser.parse_args()


def one_job(num_clients: int, args: argparse.Namespace) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory(prefix="pfl_population_") as out:
        overrides = [*BASE, f"data.num_clients={num_clients}", f"algorithm.sample_fraction={SAMPLED / num_clients!r}",
                     f"train.num_rounds={args.rounds}", f"train.eval_every={args.rounds}",
                     f"checkpoint.every={args.rounds // 2}", f"checkpoint.keep={args.rounds}",
                     f"run.out_dir={out}", "run.name=population"]
        if args.lazy:
            overrides += ["data.lazy=true", "store.backend=lazy"]
        worker = str(Path(__file__).with_name("_rss_worker.py"))
        run_dir = Path(out) / "population"
        job = run_job(torchrun(args.nproc, worker, *overrides), env={"PFL_BENCH_RSS_DIR": out}, run_dir=run_dir,
                      timeout=3600)
        ranks = [json.loads(p.read_text()) for p in Path(out).glob("rank*.json")]
        checkpoint = run_dir / "ckpt" / f"round_{args.rounds // 2:06d}"
        store = job.summary.get("store", {})
        return {"ms": 1000 * job.summary["time"]["round_s_median"], "startup": max(r["startup_s"] for r in ranks),
                "job": job.wall_s, "rss": peak_rss_mb(Path(out)), "ckpt_mb": tree_mb(checkpoint),
                "store": str(store.get("backend", "?")), "load": job.load}


def main() -> None:
    args = parse_args()
    sizes = [int(s) for s in args.clients.split(",")]
    print(f"population: {machine_line()}, torchrun x {args.nproc}, {args.rounds} rounds, "
          f"{'lazy data + lazy store' if args.lazy else 'defaults (auto)'}, {args.repeats} repeat(s)", flush=True)
    rows = []
    for num_clients in sizes:
        runs = [one_job(num_clients, args) for _ in range(args.repeats)]
        point = {key: median([float(r[key]) for r in runs])
                 for key in ("ms", "startup", "job", "rss", "ckpt_mb", "load")}
        rows.append([f"{num_clients:,}", point["ms"], point["startup"], point["job"], point["rss"], point["ckpt_mb"],
                     runs[0]["store"], point["load"]])
        print(f"  m={num_clients:,}: {point['ms']:.1f} ms/round, start-up {point['startup']:.2f} s, "
              f"job {point['job']:.1f} s, peak RSS {point['rss']:.0f} MB, checkpoint {point['ckpt_mb']:.1f} MB",
              flush=True)
    print_table(["m", "ms/round", "start-up s", "job s", "peak RSS MB/process", "checkpoint MB", "store", "load"], rows)
    first, last = rows[0], rows[-1]
    print(f"targets at m={last[0]} against m={first[0]}: peak RSS {last[4]:.0f} MB <= 2048: {verdict(last[4], 2048)}; "
          f"round {last[1] / first[1]:.2f}x <= 2x: {verdict(last[1] / first[1], 2)}; "
          f"job {last[3] / first[3]:.2f}x <= 3x: {verdict(last[3] / first[3], 3)}")


if __name__ == "__main__":
    main()
