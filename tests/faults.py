"""Fault injection shared by tests/distributed and benchmarks/kill_trials.py: start a
checkpointing torchrun job (directly or through pfl_dist.launch), find its workers from outside,
SIGKILL one of them (or the agent) after a given checkpoint, and compare the resumed run with an
uninterrupted one.

A trial passes when the resumed run ends with
- the global_model_sha256, final metrics and byte totals of an uninterrupted run;
- every evaluated round exactly once in metrics.jsonl, the same rounds as the reference;
- no duplicate steps in any TensorBoard scalar tag, and the same points as the reference
  (time/ tags excepted: wall-clock values; the 3_tradeoff_train_ms/* tags are compared by their
  values only, since their steps are wall-clock milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.tensorboard_views import TIME_GROUP

REPO = Path(__file__).resolve().parents[1]
HELD_TRAIN = REPO / "tests" / "distributed" / "held_train.py"
NUM_ROUNDS = 30
EVERY = 2
# 8 clients, half sampled per round, lam=auto (so the lambda choice is part of the state).
OVERRIDES = ("data.num_clients=8", "data.samples_per_client=100", f"train.num_rounds={NUM_ROUNDS}",
             "train.eval_every=3", "algorithm.num_local_steps=200", "algorithm.sample_fraction=0.5",
             "algorithm.lam=auto", f"checkpoint.every={EVERY}")
_VOLATILE_TAGS = ("time/",)  # wall-clock values differ between any two runs
_WALL_STEP_TAGS = (f"{TIME_GROUP}/",)  # trade-off curves over elapsed time: wall-clock steps


@dataclass
class Job:
    """A running torchrun job whose output lines are collected with their arrival time."""

    process: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def spawn(cls, command: list[str], *, env: dict[str, str], new_session: bool = False) -> Job:
        """Start `command` in the repo with stdout and stderr merged; a thread collects the lines."""
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=new_session)
        job = cls(process)
        threading.Thread(target=lambda: job.lines.extend((time.time(), line) for line in process.stdout or []),
                         daemon=True).start()
        return job

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def first_line_time(self, prefix: str, after: float) -> float | None:
        return next((t for t, line in list(self.lines) if t >= after and line.startswith(prefix)), None)

    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def start_torchrun(out_dir: Path, name: str, *, nproc: int, max_restarts: int, overrides: tuple[str, ...],
                   launcher: str = "torchrun", hold: tuple[int, int] | None = None) -> Job:
    """`hold=(round, rank)`: that rank stops itself once it wrote checkpoint `round`
    (tests/distributed/held_train.py; plain torchrun only)."""
    options = [f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--monitor-interval=0.1"]
    args = [f"run.out_dir={out_dir}", f"run.name={name}", *overrides]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if launcher == "launch":
        assert hold is None, "a held rank needs plain torchrun"
        command = [sys.executable, "-m", "pfl_dist.launch", *options, *args]
    else:
        entry = ["-m", "pfl_dist.train"] if hold is None else [str(HELD_TRAIN)]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", *options, *entry, *args]
    if hold is not None:
        env.update(HOLD_AFTER_CHECKPOINT=str(hold[0]), HOLD_RANK=str(hold[1]))
    return Job.spawn(command, env=env, new_session=True)


def crash_after_checkpoint(out_dir: Path, name: str, round_num: int, *, nproc: int,
                           overrides: tuple[str, ...]) -> Job:
    """A torchrun job without restarts whose rank 1 is SIGKILLed once checkpoint `round_num` is
    complete on every rank; -> the ended job. Rank 1 holds itself right after writing its shard
    (tests/distributed/held_train.py), so the job cannot run past the checkpoint before the kill,
    however loaded the machine is."""
    job = start_torchrun(out_dir, name, nproc=nproc, max_restarts=0, overrides=overrides, hold=(round_num, 1))

    def held_at_checkpoint() -> bool:
        rank1 = worker_pids(job.process.pid).get(1)
        return (rank1 is not None and process_state(rank1) in ("T", "t")
                and checkpoint_complete(out_dir / name, round_num, nproc))

    assert wait_for(held_at_checkpoint, timeout=300, interval=0.05), job.output()
    os.kill(worker_pids(job.process.pid)[1], signal.SIGKILL)
    assert job.wait(120) != 0, job.output()
    return job


def worker_pids(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the agent's worker processes, read from /proc (RANK in their environment)."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            workers[int(env["RANK"])] = int(proc.name)
    return workers


def workers_mentioning(text: str) -> dict[int, int]:
    """rank -> pid of the torchrun workers (RANK in their environment) whose command line
    contains `text` (a run dir, a point's name, a plan file)."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text not in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError):
            continue
        if "RANK" in env and process_state(int(proc.name)) not in ("Z", "gone"):
            workers[int(env["RANK"])] = int(proc.name)
    return workers


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(proc.name))
    found, queue = [], list(parents.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue += parents.get(child, [])
    return found


def rank_of(pid: int) -> int | None:
    """RANK in the process's environment (a torchrun worker's), or None."""
    try:
        env = (Path(f"/proc/{pid}") / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(item[5:]) for item in env if item.startswith(b"RANK=")), None)


def process_state(pid: int) -> str:
    """'R', 'S', 'T' (stopped), 'Z' (exited, not yet reaped); 'gone' once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def signal_pending(pid: int, signum: int) -> bool:
    """`signum` was sent to the process and waits for it to run (ShdPnd in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # reaped
        return False
    for line in status.splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def freeze(pid: int, *, timeout: float = 60) -> None:
    """SIGSTOP `pid` and wait until it is stopped: a rank that cannot run holds every other rank
    of its job at the next collective, so the job makes no progress until `thaw`."""
    os.kill(pid, signal.SIGSTOP)
    if not wait_for(lambda: process_state(pid) in ("T", "t", "Z", "gone"), timeout=timeout):
        raise AssertionError(f"process {pid} did not stop within {timeout:.0f} s")


def thaw(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def checkpoint_complete(run_dir: Path, round_num: int, nproc: int) -> bool:
    folder = run_dir / "ckpt" / f"round_{round_num:06d}"
    return len(list(folder.glob("shard_*.json"))) == nproc


def newest_complete_checkpoint(run_dir: Path, nproc: int) -> int | None:
    return max((r for r in range(EVERY, NUM_ROUNDS, EVERY) if checkpoint_complete(run_dir, r, nproc)), default=None)


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def scalar_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(p.step, p.value) for p in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def rounds_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compare_runs(run_dir: Path, reference: Path) -> list[str]:
    """Everything that should be equal between a resumed and an uninterrupted run; -> problems."""
    problems = []
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    for key in ("global_model_sha256", "final", "comm", "comm_telemetry", "participation", "lambda_auto"):
        if got[key] != want[key]:
            problems.append(f"summary[{key}] differs: {got[key]} != {want[key]}")
    rounds = rounds_logged(run_dir)
    if rounds != rounds_logged(reference):
        problems.append(f"metrics.jsonl rounds {rounds}")
    points, reference_points = scalar_points(run_dir), scalar_points(reference)
    for tag, tag_points in points.items():
        steps = [step for step, _ in tag_points]
        if len(steps) != len(set(steps)):
            problems.append(f"TensorBoard tag {tag} has duplicate steps")
        if tag.startswith(_VOLATILE_TAGS):
            tag_points = [(step, 0.0) for step in steps]
            reference_points[tag] = [(step, 0.0) for step, _ in reference_points.get(tag, [])]
        elif tag.startswith(_WALL_STEP_TAGS):  # the step is elapsed milliseconds; the values must match
            tag_points = [(0, value) for _, value in tag_points]
            reference_points[tag] = [(0, value) for _, value in reference_points.get(tag, [])]
        if tag_points != reference_points.get(tag):
            problems.append(f"TensorBoard tag {tag} differs from the reference")
    if set(points) != set(reference_points):
        problems.append(f"TensorBoard tags differ: {sorted(set(points) ^ set(reference_points))}")
    return problems


@dataclass
class TrialResult:
    trial: int
    killed_rank: int
    kill_after_round: int
    killed_at_round: int | None  # newest complete checkpoint when the kill landed
    resumed_from: list[int]
    exit_code: int
    resume_s: float | None  # SIGKILL -> the restarted group has loaded its checkpoint
    total_s: float
    problems: list[str]

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and bool(self.resumed_from) and not self.problems


def trial_result(run_dir: Path, reference: Path, finisher: Job, *, code: int, killed: float, started: float,
                 problems: list[str], **fields: Any) -> TrialResult:
    """The trial's outcome once `finisher` (the job that restarted, or the rerun) has ended with `code`."""
    resumed = finisher.first_line_time("resume:", after=killed)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    problems = problems + (compare_runs(run_dir, reference) if code == 0
                           else [f"the resumed run failed:\n{finisher.output()[-3000:]}"])
    return TrialResult(**fields, resumed_from=summary.get("resumed_from", []), exit_code=code,
                       resume_s=None if resumed is None else resumed - killed, total_s=time.time() - started,
                       problems=problems)


def run_reference(out_dir: Path, *, nproc: int = 4, overrides: tuple[str, ...] = OVERRIDES,
                  timeout: float = 600) -> Path:
    job = start_torchrun(out_dir, "reference", nproc=nproc, max_restarts=0, overrides=overrides)
    code = job.wait(timeout)
    if code != 0:
        raise RuntimeError(f"reference run failed ({code}):\n{job.output()}")
    return out_dir / "reference"


def agent_pid(job: Job, launcher: str) -> int:
    """The torchrun agent of a job: the process itself, or the launcher's child."""
    if launcher != "launch":
        return job.process.pid
    children = Path(f"/proc/{job.process.pid}/task/{job.process.pid}/children")
    assert wait_for(lambda: children.read_text().split(), timeout=60), "the launcher started no torchrun"
    return int(children.read_text().split()[0])


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def torchrun_kill_trial(out_dir: Path, reference: Path, *, trial: int, kill_after_round: int, delay_s: float,
                        nproc: int = 4, overrides: tuple[str, ...] = OVERRIDES, timeout: float = 600) -> TrialResult:
    """SIGKILL the agent (its workers are orphaned unless they die with it), rerun at once."""
    name = f"trial_{trial:02d}"
    run_dir = out_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()
    job = start_torchrun(out_dir, name, nproc=nproc, max_restarts=0, overrides=overrides)
    problems: list[str] = []
    try:
        ready = wait_for(lambda: checkpoint_complete(run_dir, kill_after_round, nproc), timeout=timeout)
        workers = worker_pids(job.process.pid)
        if not ready or len(workers) != nproc:
            raise RuntimeError(f"trial {trial}: job not ready (ready={ready}, workers={workers})")
        time.sleep(delay_s)
        killed = time.time()
        os.kill(job.process.pid, signal.SIGKILL)  # the agent only, as `kill -9 <torchrun>` would
        job.wait(timeout)
        killed_at = newest_complete_checkpoint(run_dir, nproc)
        rerun = start_torchrun(out_dir, name, nproc=nproc, max_restarts=0, overrides=overrides)  # at once
        if not wait_for(lambda: not any(alive(pid) for pid in workers.values()), timeout=5):
            problems.append(f"workers outlived the SIGKILLed agent: {[p for p in workers.values() if alive(p)]}")
        code = rerun.wait(timeout)
    finally:
        for pid in worker_pids(job.process.pid).values():
            os.kill(pid, signal.SIGKILL)
    return trial_result(run_dir, reference, rerun, code=code, killed=killed, started=started, problems=problems,
                        trial=trial, killed_rank=-1, kill_after_round=kill_after_round, killed_at_round=killed_at)


def launcher_sigterm_trial(out_dir: Path, reference: Path, *, trial: int, kill_after_round: int, delay_s: float,
                           nproc: int = 4, overrides: tuple[str, ...] = OVERRIDES,
                           timeout: float = 600) -> TrialResult:
    """SIGTERM the launcher; it must exit 75 after a checkpoint; rerun the same command at once."""
    name = f"trial_{trial:02d}"
    run_dir = out_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()
    job = start_torchrun(out_dir, name, nproc=nproc, max_restarts=3, overrides=overrides, launcher="launch")
    problems: list[str] = []
    try:
        if not wait_for(lambda: checkpoint_complete(run_dir, kill_after_round, nproc), timeout=timeout):
            raise RuntimeError(f"trial {trial}: checkpoint {kill_after_round} never completed:\n{job.output()}")
        time.sleep(delay_s)
        killed = time.time()
        job.process.send_signal(signal.SIGTERM)
        stopped_code = job.wait(timeout)
        if stopped_code != 75:
            problems.append(f"the stopped launcher exited {stopped_code}, not 75:\n{job.output()[-2000:]}")
        killed_at = newest_complete_checkpoint(run_dir, nproc)
        rerun = start_torchrun(out_dir, name, nproc=nproc, max_restarts=3, overrides=overrides, launcher="launch")
        code = rerun.wait(timeout)
    finally:
        if job.process.poll() is None:
            job.process.kill()
    return trial_result(run_dir, reference, rerun, code=code, killed=killed, started=started, problems=problems,
                        trial=trial, killed_rank=-1, kill_after_round=kill_after_round, killed_at_round=killed_at)


def kill_trial(out_dir: Path, reference: Path, *, trial: int, killed_rank: int, kill_after_round: int,
               delay_s: float, nproc: int = 4, overrides: tuple[str, ...] = OVERRIDES,
               timeout: float = 600, launcher: str = "torchrun") -> TrialResult:
    name = f"trial_{trial:02d}"
    run_dir = out_dir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()
    job = start_torchrun(out_dir, name, nproc=nproc, max_restarts=3, overrides=overrides, launcher=launcher)
    try:
        ready = wait_for(lambda: checkpoint_complete(run_dir, kill_after_round, nproc), timeout=timeout)
        pids = worker_pids(agent_pid(job, launcher))
        if not ready or killed_rank not in pids:
            raise RuntimeError(f"trial {trial}: no worker rank {killed_rank} to kill (ready={ready}, pids={pids})")
        time.sleep(delay_s)
        killed = time.time()
        os.kill(pids[killed_rank], signal.SIGKILL)
        # Complete now means complete before the kill: the killed rank can write no more shards.
        killed_at = newest_complete_checkpoint(run_dir, nproc)
        code = job.wait(timeout)
    finally:
        if job.process.poll() is None:
            os.killpg(job.process.pid, signal.SIGKILL)
    return trial_result(run_dir, reference, job, code=code, killed=killed, started=started, problems=[],
                        trial=trial, killed_rank=killed_rank, kill_after_round=kill_after_round,
                        killed_at_round=killed_at)
