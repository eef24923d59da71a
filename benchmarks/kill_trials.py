"""Kill trials: SIGKILL one worker of a checkpointing torchrun job and check the resumed run.

    .venv/bin/python benchmarks/kill_trials.py --trials 10 [--out runs/kill_trials] [--kind KIND]

Kinds (--kind):
- worker (default): SIGKILL one worker under `torchrun --max-restarts=3`; torchrun restarts the group.
- launch-worker: the same under `python -m pfl_dist.launch --max-restarts=3` (its loopback c10d
  rendezvous, which replaces --standalone, must carry the restart).
- torchrun: SIGKILL the torchrun agent itself (not its process group), then rerun the same
  command at once: the workers must die with their agent (PR_SET_PDEATHSIG), and the rerun must
  neither collide with them nor lose a record.

Each trial starts `torchrun --nproc-per-node=4 --max-restarts=3`, waits until the checkpoint
of a random round is complete plus a random fraction of a round, then SIGKILLs a random worker
by PID (found from outside, as a child of the torchrun agent). torchrun restarts the group, the
workers resume from the newest checkpoint, and the trial passes when the run ends with
- the global_model_sha256, final metrics and byte totals of an uninterrupted run;
- every evaluated round exactly once in metrics.jsonl, the same rounds as the reference;
- no duplicate steps in any TensorBoard scalar tag, and the same points as the reference
  (time/ tags excepted: wall-clock values).
It also reports the time from the kill to the resumed run's "resume:" line. tests/distributed/
test_elastic.py runs one trial; this script runs many and prints one JSON line per trial.
- launcher-sigterm: SIGTERM to `python -m pfl_dist.launch` (as `docker stop` sends it); the
  launcher forwards it, the job stops at a round boundary with a checkpoint and exit 75, and the
  same command, rerun at once, resumes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the trial machinery lives in tests/faults.py, shared with the tests

from tests.faults import (  # noqa: E402
    EVERY,
    NUM_ROUNDS,
    kill_trial,
    launcher_sigterm_trial,
    run_reference,
    torchrun_kill_trial,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "kill_trials")
    parser.add_argument("--seed", type=int, default=0, help="chooses the killed rank, round and delay")
    parser.add_argument("--kind", choices=("worker", "launch-worker", "torchrun", "launcher-sigterm"), default="worker",
                        help="what is killed (see the module doc)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    reference = run_reference(args.out)
    rng = random.Random(args.seed)
    results = []
    for trial in range(args.trials):
        killed_rank = rng.randrange(4)
        kill_after_round = rng.randrange(EVERY, NUM_ROUNDS - 2 * EVERY, EVERY)
        delay_s = rng.uniform(0.0, 0.3)
        if args.kind == "launcher-sigterm":
            result = launcher_sigterm_trial(args.out, reference, trial=trial, kill_after_round=kill_after_round,
                                            delay_s=delay_s)
        elif args.kind == "torchrun":
            result = torchrun_kill_trial(args.out, reference, trial=trial, kill_after_round=kill_after_round,
                                         delay_s=delay_s)
        else:
            result = kill_trial(args.out, reference, trial=trial, killed_rank=killed_rank,
                                kill_after_round=kill_after_round, delay_s=delay_s,
                                launcher="launch" if args.kind == "launch-worker" else "torchrun")
        results.append(result)
        print(json.dumps({**asdict(result), "passed": result.passed}), flush=True)
    passed = sum(r.passed for r in results)
    resume = sorted(r.resume_s for r in results if r.resume_s is not None)
    median = resume[len(resume) // 2] if resume else None
    print(f"kill trials ({args.kind}): {passed}/{len(results)} passed; kill or stop -> resume: median {median:.1f} s, "
          f"range {resume[0]:.1f}-{resume[-1]:.1f} s" if resume
          else f"kill trials ({args.kind}): {passed}/{len(results)} passed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
