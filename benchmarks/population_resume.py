"""Population scale with persistent per-client state (issue 24): SCAFFOLD and Ditto at 10^7 clients.

    nice -n 5 .venv/bin/python benchmarks/population_resume.py                 # scaffold, ditto
    nice -n 5 .venv/bin/python benchmarks/population_resume.py --methods ditto --rounds 40

Each method keeps a model-sized row per client it has trained (SCAFFOLD its control variate c_i,
Ditto its personal model v_i): at data.dim = 100, data.num_classes = 10 (P = 1,010) and 10^7
clients, a dense store of one such row set is 10^7 x 1,010 x 4 B = 40 GB. The setting: synthetic
clients (n = 200, float32), 1,000 sampled per round, 20 local steps, train.eval_clients = 1000,
algorithm.smoothness = 8000 (a number: `auto` would pass over all 10^7 clients at start-up; the
exact bound on the first 10^4 clients is 5,720.6, and a step of 1/L from a bound below the true max
can diverge), --rounds rounds (default 100), a checkpoint every --every rounds; data.lazy and
store.backend at their defaults (`auto`: both lazy here). Per method, three `torchrun
--nproc-per-node=2` jobs:

1. the reference: uninterrupted;
2. the same command in a run dir of its own, whose whole process group gets SIGKILL once the
   checkpoint of round --kill-after is complete on both ranks (no stop protocol: a crash);
3. the same command again, which resumes from that checkpoint and finishes.

Reported: s/round (summary.json time.round_s_median), job wall, peak RSS per process (ru_maxrss,
the max over ranks, of every job: the resumed one includes loading the checkpoint), the size of
the checkpoint that was resumed from, and whether the resumed run is the reference bit for bit
(tests/faults.py `compare_runs`: global_model_sha256, final metrics, byte totals, metrics.jsonl
rounds and every TensorBoard point). Targets: peak RSS <= 2 GB per process, the resume bitwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_line, peak_rss_mb, print_table, run_job, torchrun, tree_mb, verdict

sys.path.insert(0, str(REPO))
from pfl_dist.launch import TORCHRUN_ENV  # noqa: E402
from tests.faults import Job, checkpoint_complete, compare_runs, wait_for  # noqa: E402

NPROC, SAMPLED = 2, 1000
WORKER = str(Path(__file__).with_name("_rss_worker.py"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["scaffold", "ditto"])
    parser.add_argument("--clients", type=int, default=10**7)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="checkpoint.every")
    parser.add_argument("--kill-after", type=int, default=50, help="SIGKILL once this round's checkpoint is complete")
    args = parser.parse_args()
    if not 0 < args.kill_after < args.rounds or args.kill_after % args.every:
        parser.error(f"--kill-after must be a multiple of --every ({args.every}) below --rounds ({args.rounds})")
    return args


def overrides(method: str, args: argparse.Namespace, out: Path, name: str) -> list[str]:
    return ["data.kind=synthetic", f"data.num_clients={args.clients}", "data.samples_per_client=200",
            "data.dim=100", "data.num_classes=10", "train.dtype=float32", f"algorithm.name={method}",
            f"algorithm.sample_fraction={SAMPLED / args.clients!r}", "algorithm.num_local_steps=20",
            "algorithm.smoothness=8000", "train.eval_clients=1000", f"train.num_rounds={args.rounds}",
            f"train.eval_every={args.rounds // 4}", f"checkpoint.every={args.every}", "checkpoint.keep=2",
            f"run.out_dir={out}", f"run.name={name}"]


def killed_and_resumed(method: str, args: argparse.Namespace, out: Path) -> dict[str, float | str | bool]:
    run_dir, rss_dir = out / "killed", out / "rss_killed"
    rss_dir.mkdir()
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PFL_BENCH_RSS_DIR": str(rss_dir)}
    command = torchrun(NPROC, WORKER, *overrides(method, args, out, "killed"))
    job = Job.spawn(command, env=env, new_session=True)
    if not wait_for(lambda: checkpoint_complete(run_dir, args.kill_after, NPROC) or job.process.poll() is not None,
                    timeout=3600, interval=0.05) or job.process.poll() is not None:
        raise SystemExit(f"population_resume: the {method} job ended before checkpoint {args.kill_after}:\n"
                         f"{job.output()[-3000:]}")
    os.killpg(job.process.pid, signal.SIGKILL)
    job.wait(120)
    print(f"  {method}: SIGKILL after checkpoint {args.kill_after}", flush=True)
    checkpoint = run_dir / "ckpt" / f"round_{args.kill_after:06d}"
    ckpt_mb = tree_mb(checkpoint)
    rss_resumed = out / "rss_resumed"
    rss_resumed.mkdir()
    started = time.perf_counter()
    resumed = run_job(command, env={"PFL_BENCH_RSS_DIR": str(rss_resumed)}, run_dir=run_dir, timeout=3600)
    return {"ckpt_mb": ckpt_mb, "resumed_from": str(resumed.summary.get("resumed_from")),
            "rss_resumed": peak_rss_mb(rss_resumed), "resume_wall": time.perf_counter() - started}


def one_method(method: str, args: argparse.Namespace) -> list[object]:
    with tempfile.TemporaryDirectory(prefix=f"pfl_population_{method}_") as tmp:
        out = Path(tmp)
        (out / "rss_reference").mkdir()
        reference = run_job(torchrun(NPROC, WORKER, *overrides(method, args, out, "reference")),
                            env={"PFL_BENCH_RSS_DIR": str(out / "rss_reference")}, run_dir=out / "reference",
                            timeout=3600)
        rss = peak_rss_mb(out / "rss_reference")
        store = reference.summary.get("store", {}).get("backend")
        print(f"  {method}: reference {reference.summary['time']['round_s_median']:.2f} s/round, job "
              f"{reference.wall_s:.0f} s, peak RSS {rss:.0f} MB, store {store}", flush=True)
        trial = killed_and_resumed(method, args, out)
        problems = compare_runs(out / "killed", out / "reference")
        for problem in problems:
            print(f"  {method}: resumed run differs: {problem}", flush=True)
        bitwise = not problems
        worst = max(rss, float(trial["rss_resumed"]))
        return [method, reference.summary["time"]["round_s_median"], reference.wall_s, rss, trial["rss_resumed"],
                trial["ckpt_mb"], trial["resumed_from"], "yes" if bitwise else "NO", verdict(worst, 2048),
                reference.load]


def main() -> None:
    args = parse_args()
    print(f"population_resume: {machine_line()}, torchrun x {NPROC}, {args.clients:,} clients, {args.rounds} rounds, "
          f"kill after checkpoint {args.kill_after}", flush=True)
    rows = [one_method(method, args) for method in args.methods]
    print_table(["method", "s/round", "job s", "peak RSS MB (reference)", "peak RSS MB (resumed)", "checkpoint MB",
                 "resumed_from", "bitwise", "RSS <= 2 GB", "load"], rows)


if __name__ == "__main__":
    main()
