"""Shared helpers of the benchmark scripts: torchrun jobs, medians, load, tables.

The machines are shared: every script reports the 1-minute load average next to its numbers
and the median of several repeats, and compares ratios measured in the same session.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfl_dist.launch import TORCHRUN_ENV

REPO = Path(__file__).resolve().parents[1]

# docs/METHOD.md §4, total error vs rounds (the settings of configs/sweeps/total_error_1000.yaml).
TOTAL_ERROR = ("data.kind=synthetic", "data.num_clients=1000", "data.samples_per_client=200", "data.dim=10",
               "data.num_classes=2", "data.R=2.0", "algorithm.name=fedclup", "algorithm.num_local_steps=150",
               "algorithm.sample_fraction=0.1", "algorithm.local_lr=auto", "algorithm.global_lr=auto",
               "algorithm.smoothness=auto", "train.num_rounds=100")


def load1() -> float:
    return os.getloadavg()[0]


def machine_line() -> str:
    return f"cores {len(os.sched_getaffinity(0))}, python {sys.version.split()[0]}, load {load1():.2f}"


def peak_rss_mb(rss_dir: Path) -> float:
    """The largest peak RSS (MB) the ranks of a `_rss_worker.py` job wrote to `rss_dir`."""
    return max(json.loads(p.read_text())["max_rss_mb"] for p in Path(rss_dir).glob("rank*.json"))


def tree_mb(path: Path) -> float:
    """MiB of every file below `path` (a checkpoint round: its shards, segments and markers)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class JobResult:
    wall_s: float  # the whole command, start to exit, measured outside
    cpu_s: float  # user + system CPU of the command and all its descendants (ranks, agent)
    summary: dict[str, Any]  # the run's summary.json ({} for scripts that write none)
    load: float  # 1-minute load average when the job ended


def torchrun(nproc: int, *target: str) -> list[str]:
    """`torchrun --standalone --nproc-per-node=nproc <target>`, with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target]


def run_job(command: Sequence[str], *, cwd: Path = REPO, env: dict[str, str] | None = None,
            run_dir: Path | None = None, timeout: float = 1800) -> JobResult:
    """Run one command to completion; wall time from start to exit; read summary.json if any."""
    full_env = {**os.environ, **TORCHRUN_ENV, **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(list(command), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"benchmark job failed ({result.returncode}): {' '.join(command)}\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    summary = {}
    if run_dir is not None and (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
    return JobResult(wall_s=wall, cpu_s=cpu, summary=summary, load=load1())


def train_job(nproc: int, overrides: Sequence[str], *, repo: Path = REPO, name: str = "bench",
              launcher: str = "torchrun", env: dict[str, str] | None = None) -> JobResult:
    """One pfl_dist training job in a fresh temporary out dir."""
    with tempfile.TemporaryDirectory(prefix="pfl_bench_") as out:
        args = [*overrides, f"run.out_dir={out}", f"run.name={name}"]
        if launcher == "torchrun":
            command = torchrun(nproc, "-m", "pfl_dist.train", *args)
        elif launcher == "launch":
            command = [sys.executable, "-m", "pfl_dist.launch", f"--nproc-per-node={nproc}", *args]
        else:  # one plain process hosting every client, no process group
            command = [sys.executable, "-m", "pfl_dist.train", *args]
        return run_job(command, cwd=repo, env=env, run_dir=Path(out) / name)


def bare_torchrun_job(nproc: int) -> JobResult:
    """The floor of any torchrun job here: import torch, init gloo, one all_reduce, exit."""
    return run_job(torchrun(nproc, str(Path(__file__).with_name("_bare_worker.py"))))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"
