"""Many sweep points inside one torchrun job: `torchrun ... -m pfl_dist.sweep.worker PLAN.json`.

A small synthetic run trains in a few seconds, but a fresh torchrun job first pays ~10 s here
for the agent, the Python/torch imports of every rank and the gloo rendezvous. This worker pays
that once: it initialises the process group with the first point's config, then builds one
session per point (`pfl_dist.train.run_session`, the one run path) on the same Runtime. Each
has its own byte ledger, run dir, TensorBoard writer and summary.json, exactly as
`pfl_dist.train` would produce. A SIGTERM/SIGINT (torchrun forwards the sweep's stop) ends the
running point at a round boundary with a checkpoint, and the job with exit 75; a rerun of the
sweep resumes that point from its checkpoint.

The points of one job must agree on what the process group depends on (device, backend,
timeout); the sweep checks that when it expands the grid. A point that fails ends the whole job
(a rank that raised cannot rejoin collectives its peers are waiting in); the sweep then marks
that point failed and starts a new job for the points after it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfl_dist.checkpoint import RunStopped, StopRequest
from pfl_dist.config import Config, apply_overrides, read_yaml
from pfl_dist.errors import PflError
from pfl_dist.guard import die_with_parent, guard_output
from pfl_dist.outputs import write_json_atomic
from pfl_dist.runtime import Runtime, env_rank, env_world_size, exit_process, init_runtime, shutdown_runtime
from pfl_dist.sweep.results import POINT_FILE
from pfl_dist.train import report_error, run_session


def load_plan(path: Path) -> list[tuple[Config, dict[str, Any]]]:
    """(config, point info) per point; configs are validated before the process group starts."""
    plan = json.loads(path.read_text())
    base_files = {base: read_yaml(base) if base is not None else {} for base in {e["base"] for e in plan["points"]}}
    points = []
    for entry in plan["points"]:
        cfg = apply_overrides(base_files[entry["base"]], entry["overrides"])
        cfg.set_world_size(env_world_size())
        points.append((cfg, entry["info"]))
    return points


def run_point(cfg: Config, runtime: Runtime, info: dict[str, Any], *, stop: StopRequest) -> dict[str, Any]:
    """One point on an existing runtime: its own session (ledger, logger, run dir)."""
    started = time.perf_counter()
    summary = run_session(cfg, runtime, stop).summary
    if runtime.is_logging_rank:
        # Written after summary.json; the sweep reads it only once the job is over.
        write_json_atomic(cfg.run_dir / POINT_FILE, {**info, "point_wall_s": time.perf_counter() - started})
        print(f"sweep point done: {cfg.run.name}", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: torchrun ... -m pfl_dist.sweep.worker PLAN.json", file=sys.stderr)
        return 2
    guard_output()
    die_with_parent()
    stop = StopRequest()
    stop.install()
    try:
        points = load_plan(Path(args[0]))
        runtime = init_runtime(points[0][0])
        for cfg, info in points:
            run_point(cfg, runtime, info, stop=stop)
    except PflError as err:
        return report_error(err, rank=env_rank())
    except RunStopped as stopped:
        shutdown_runtime(runtime)  # every rank stopped at the same round of the same point
        if env_rank() == 0:
            print(f"pfl_dist: {stopped}", file=sys.stderr, flush=True)
        return stopped.exit_code
    shutdown_runtime(runtime)
    return 0


if __name__ == "__main__":
    exit_process(main())
