"""Starting, watching and stopping a sweep's torchrun jobs.

A job is one torchrun process group: one point (per_point mode) or a batch of points run one
after another by pfl_dist.sweep.worker (in_job mode). A point counts as done once its
summary.json exists, which is also how an in-job batch reports progress without any pipe.
Inside a running point, the job's stdout (logs/<point>.out per point, logs/job-<N>.out per in-job
batch: rank 0's output, one 'round t/T | ...' line per evaluation) is tailed, and its newest round
line is shown at most every PROGRESS_S seconds (`ProgressTail`).
Each job runs in its own session, so Ctrl-C reaches only the sweep, which then stops its jobs
(SIGTERM to torchrun, which stops its workers; SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfl_dist.launch import TORCHRUN_ENV, torchrun_command
from pfl_dist.outputs import write_json_atomic
from pfl_dist.sampling import num_sampled
from pfl_dist.sweep.results import POINT_FILE, Run, is_complete
from pfl_dist.sweep.spec import Point, Sweep

_POLL_S = 0.2
_STOP_GRACE_S = 15.0
# One torchrun start-up (~10 s on the 2-core reference box) in point_cost units (~5e6 per s there).
_STARTUP_COST = 5e7
_SHOWN_METRICS = ("ITR", "ATR", "acc_personal", "acc_global")
PROGRESS_S = 10.0  # at most one progress line per job this often; points shorter than it print none
# rank 0's line per evaluation (pfl_dist/train.py progress_line), torchrun's [rankN]: prefix allowed
_ROUND_LINE = re.compile(r"^(?:\[[\w-]+\]:\s*)?(round\s+\d+/\d+ \|.*)$")


def point_cost(point: Point) -> float:
    """Relative work of a point (rounds x local steps x sampled clients x samples), for the ETA
    and for balancing in-job batches."""
    cfg = point.cfg
    steps = cfg.algorithm.num_local_steps if cfg.algorithm.batch_size is None else 10 * cfg.algorithm.local_epochs
    sampled = num_sampled(cfg.data.num_clients, cfg.algorithm.sample_fraction)
    return float(cfg.train.num_rounds * steps * sampled * cfg.data.samples_per_client)


def point_kind(point: Point) -> str:
    """What a point's cost units are worth in seconds: its data and model. A CNN image point costs
    far more per unit than a synthetic linear one, so the ETA times each kind on its own."""
    return f"{point.cfg.data.kind}/{point.cfg.model.kind}"


class Estimator:
    """The sweep's ETA: seconds per cost unit, measured per kind of point (`point_kind`) on its
    completed points, times the remaining points' cost, divided among the jobs running at a time.

    One rate for all points said 30,267 minutes for a sweep mixing CNN and synthetic points: the
    first CNN point's seconds per unit, applied to synthetic points of a thousand times its units.
    A kind with no completed point yet is not guessed from another kind: the line says how many
    points are not yet timed."""

    def __init__(self, pending: list[Point], *, overhead: float, jobs: int) -> None:
        self.overhead = overhead  # cost units per job start (per_point mode)
        self.jobs = jobs
        self.remaining: dict[str, float] = {}  # kind -> cost units still to run
        self.waiting: dict[str, int] = {}  # kind -> points still to run
        self.seconds: dict[str, float] = {}  # kind -> seconds its completed points took
        self.units: dict[str, float] = {}  # kind -> their cost units
        for point in pending:
            kind = point_kind(point)
            self.remaining[kind] = self.remaining.get(kind, 0.0) + self.cost(point)
            self.waiting[kind] = self.waiting.get(kind, 0) + 1

    def cost(self, point: Point) -> float:
        return point_cost(point) + self.overhead

    def done(self, point: Point, seconds: float) -> None:
        kind = point_kind(point)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.units[kind] = self.units.get(kind, 0.0) + self.cost(point)
        self.forget(point)

    def forget(self, point: Point) -> None:
        """A point that will not run (failed): no longer part of what remains."""
        kind = point_kind(point)
        self.remaining[kind] -= self.cost(point)
        self.waiting[kind] -= 1

    def eta(self) -> tuple[float, int]:
        """(seconds left for the points of timed kinds, the number of points of untimed kinds)."""
        timed = [kind for kind in self.remaining if self.units.get(kind)]
        seconds = sum(self.seconds[kind] / self.units[kind] * self.remaining[kind] for kind in timed)
        left = sum(self.waiting[kind] for kind in timed)
        untimed = sum(n for kind, n in self.waiting.items() if kind not in timed)
        return seconds / max(1, min(self.jobs, left)), untimed

    def text(self) -> str:
        seconds, untimed = self.eta()
        more = f" + {untimed} point(s) of kinds not yet timed" if untimed else ""
        return f"ETA {format_duration(seconds)}{more}"


def batches(points: list[Point], *, jobs: int, mode: str) -> list[list[Point]]:
    """per_point: one point per job. in_job: `jobs` batches of about equal cost (largest first
    into the lightest batch), each keeping the sweep's order."""
    if mode == "per_point" or not points:
        return [[p] for p in points]
    bins: list[list[Point]] = [[] for _ in range(min(jobs, len(points)))]
    loads = [0.0] * len(bins)
    for point in sorted(points, key=point_cost, reverse=True):
        lightest = loads.index(min(loads))
        bins[lightest].append(point)
        loads[lightest] += point_cost(point)
    order = {p.name: i for i, p in enumerate(points)}
    return [sorted(b, key=lambda p: order[p.name]) for b in bins]


def torchrun_prefix(sweep: Sweep) -> list[str]:
    launch = sweep.launch
    command = torchrun_command([*launch.torchrun_args, f"--nproc-per-node={launch.nproc_per_node}"])
    # torchrun whose --standalone rendezvous store listens on 127.0.0.1 only (pfl_dist/torchrun_loopback.py)
    return [command[0], "-m", "pfl_dist.torchrun_loopback", *command[3:]]


def point_command(sweep: Sweep, point: Point) -> list[str]:
    config = ["--config", str(sweep.base)] if sweep.base else []
    return [*torchrun_prefix(sweep), "-m", "pfl_dist.train", *config, *point.overrides]


def worker_command(sweep: Sweep, plan: Path) -> list[str]:
    return [*torchrun_prefix(sweep), "-m", "pfl_dist.sweep.worker", str(plan)]


def point_info(point: Point, mode: str) -> dict[str, Any]:
    return {"name": point.name, "variant": point.variant, "values": point.values, "seed": point.seed, "mode": mode}


def write_plan(sweep: Sweep, points: list[Point], path: Path) -> None:
    base = str(sweep.base) if sweep.base else None
    entries = [{"base": base, "overrides": list(p.overrides), "info": point_info(p, "in_job")} for p in points]
    path.write_text(json.dumps({"points": entries}, indent=1))


def cpu_sets(jobs: int) -> list[set[int]] | None:
    """Disjoint CPU sets, one per concurrent job, so N jobs do not oversubscribe the cores
    (the runtime sizes its thread pool from the affinity mask)."""
    cores = sorted(os.sched_getaffinity(0))
    if jobs <= 1 or jobs > len(cores):
        return None
    return [set(cores[i * len(cores) // jobs: (i + 1) * len(cores) // jobs]) for i in range(jobs)]


def failure_reason(code: int, stderr_path: Path) -> str:
    """'exit 1 (worker exit 3): pfl_dist: error: ...' from torchrun's code and the worker's stderr."""
    lines = [ln.strip() for ln in stderr_path.read_text(errors="replace").splitlines() if ln.strip()]
    ours = [ln for ln in lines if "pfl_dist: error:" in ln]
    # A worker's exception (torchrun prefixes its lines with [rankN]:), before torchrun's own summary.
    rank_error = re.compile(r"^\[rank\d+\]:\s*([\w.]*(?:Error|Exception)\b.*)")
    worker_errors = [m.group(1) for ln in lines if (m := rank_error.match(ln))]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln) and "ChildFailedError" not in ln]
    last = (ours or worker_errors or errors or lines or ["(no stderr)"])[-1]
    worker = re.findall(r"exitcode\s*:\s*(-?\d+)", "\n".join(lines))
    detail = f" (worker exit {worker[0]})" if worker else ""
    return f"exit {code}{detail}: {last[:300]}"


def child_pids(pid: int) -> list[int]:
    """Direct children (torchrun's workers, which live in their own sessions)."""
    pids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(c) for c in children.read_text().split()]
    return pids


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun (it stops its workers); SIGKILL it and its workers after a grace period."""
    workers = child_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressTail:
    """The newest per-evaluation line ('round 20/60 | eval/ITR ... | 12.3 ms/round') of a job's
    stdout, logs/<job>.out, read as the job writes it: at most one every `every_s` seconds, the
    first `every_s` after `restart` (a point's start), so short points print nothing extra."""

    def __init__(self, path: Path, *, now: float, every_s: float = PROGRESS_S) -> None:
        self.path = path
        self.every_s = every_s
        self.offset = 0
        self.partial = b""  # a line the job has not finished writing
        self.newest: str | None = None
        self.shown_at = now

    def restart(self, now: float) -> None:
        """A new point starts: what was read belongs to the one before."""
        self._read()
        self.newest, self.shown_at = None, now

    def poll(self, now: float) -> str | None:
        self._read()
        if self.newest is None or now - self.shown_at < self.every_s:
            return None
        line, self.newest, self.shown_at = self.newest, None, now
        return line

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for raw in lines:
            match = _ROUND_LINE.match(raw.decode(errors="replace").rstrip())
            if match:
                self.newest = match.group(1)


@dataclass
class Job:
    name: str
    points: list[Point]  # not yet complete, in run order
    proc: subprocess.Popen[bytes]
    slot: int
    last_event: float  # start, or the previous point's completion
    stderr_path: Path
    progress: ProgressTail  # its stdout's round lines


class JobRunner:
    """Keeps up to launch.jobs torchrun jobs busy until every pending point is done or failed."""

    def __init__(self, sweep: Sweep, pending: list[Point], *, num_complete: int) -> None:
        launch = sweep.launch
        self.sweep = sweep
        self.queue: deque[list[Point]] = deque(batches(pending, jobs=launch.jobs, mode=launch.mode))
        self.running: list[Job] = []
        self.completed: list[str] = []
        self.failures: dict[str, str] = {}
        self.num_complete_before = num_complete
        self.num_total = num_complete + len(pending)  # points --only leaves out are not counted
        self.estimator = Estimator(pending, overhead=_STARTUP_COST if launch.mode == "per_point" else 0.0,
                                   jobs=launch.jobs)
        self.started = time.perf_counter()
        self.num_started = 0
        self.cpu_sets = cpu_sets(launch.jobs)

    def run(self) -> None:
        while self.queue or self.running:
            self._fill()
            time.sleep(_POLL_S)
            for job in list(self.running):
                self._poll(job)

    def stop(self) -> None:
        for job in self.running:
            stop_process_group(job.proc)
        self.running = []

    def _fill(self) -> None:
        busy = {job.slot for job in self.running}
        free = [slot for slot in range(self.sweep.launch.jobs) if slot not in busy]
        while self.queue and free:
            self._start(self.queue.popleft(), free.pop(0))

    def _start(self, batch: list[Point], slot: int) -> None:
        logs = self.sweep.out_dir / "logs"
        per_point = self.sweep.launch.mode == "per_point"
        name = batch[0].name if per_point else f"job-{self.num_started}"
        self.num_started += 1
        if per_point:
            command = point_command(self.sweep, batch[0])
        else:
            write_plan(self.sweep, batch, logs / f"{name}.plan.json")
            command = worker_command(self.sweep, logs / f"{name}.plan.json")
        cpus = self.cpu_sets[slot] if self.cpu_sets else None
        env = {**os.environ, **TORCHRUN_ENV}
        with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        now = time.perf_counter()
        progress = ProgressTail(logs / f"{name}.out", now=now, every_s=PROGRESS_S)
        self.running.append(Job(name=name, points=list(batch), proc=proc, slot=slot, last_event=now,
                                stderr_path=logs / f"{name}.err", progress=progress))

    def _poll(self, job: Job) -> None:
        code = job.proc.poll()
        if self.sweep.launch.mode == "in_job" or code is not None:  # points of a batch finish in order
            while job.points and is_complete(self.sweep.out_dir / job.points[0].name):
                self._point_done(job, job.points[0])
        if code is None:
            line = job.progress.poll(time.perf_counter()) if job.points else None
            if line is not None:
                width = len(self._counter())
                print(f"{' ' * width} ...  {job.points[0].name}  {line}", flush=True)
            return
        self.running.remove(job)
        if job.points:
            self._point_failed(job, job.points.pop(0), code)
            if job.points:  # the rest of the batch never started: give it a fresh job
                self.queue.appendleft(job.points)

    def _point_done(self, job: Job, point: Point) -> None:
        now = time.perf_counter()
        seconds, job.last_event = now - job.last_event, now
        job.progress.restart(now)
        job.points.remove(point)
        if self.sweep.launch.mode == "per_point":  # the whole torchrun job, start-up included
            info = {**point_info(point, "per_point"), "point_wall_s": seconds}
            write_json_atomic(self.sweep.out_dir / point.name / POINT_FILE, info)
        self.completed.append(point.name)
        self.estimator.done(point, seconds)
        run = Run(self.sweep.out_dir / point.name)
        final = run.summary["final"]
        shown = " ".join(f"{run.tag(k)} {final[k]:.4g}" for k in _SHOWN_METRICS if k in final)  # where measured
        print(f"{self._counter()} ok   {point.name}  {seconds:.1f} s | {shown} | {self._eta()}", flush=True)

    def _point_failed(self, job: Job, point: Point, code: int) -> None:
        reason = failure_reason(code, job.stderr_path)
        self.failures[point.name] = reason
        self.estimator.forget(point)
        print(f"{self._counter()} FAIL {point.name}: {reason} (log: {job.stderr_path})", flush=True)

    def _counter(self) -> str:
        total = self.num_total
        return f"[{self.num_complete_before + len(self.completed):>{len(str(total))}}/{total}]"

    def _eta(self) -> str:
        return f"elapsed {format_duration(time.perf_counter() - self.started)}, {self.estimator.text()}"
