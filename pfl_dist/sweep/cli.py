"""Run a sweep: `python -m pfl_dist.sweep configs/sweeps/quick.yaml [section.key=value ...] [--dry-run] ...`.

`section.key=value` overrides apply to every point (pfl_dist/sweep/spec.py says which keys may be
overridden); from Python, `pfl_dist.sweep.run` (pfl_dist/sweep/api.py) runs the same driver.

Every point runs under a real torchrun job, with its own run dir below the sweep's out dir
(name = the point's varied values), TensorBoard run, byte ledger and summary.json. The sweep is
resumable: a point whose summary.json holds the point's config (the hash of everything that
changes its numbers, the contents of the user files it reads included: pfl_dist/rundir.py) is
skipped, so after Ctrl-C, SIGTERM or a failed point, rerunning the same command runs only what is
missing. A point whose config changed since its run (say train.num_rounds was edited in the sweep
file, or one of its data files) is rerun: its old run dir is moved to
`<out_dir>/replaced/<name>.<old hash8>` and named in the output. `--force` reruns every selected
point the same way. results.csv is rebuilt from the run dirs after every invocation, one row per
point and only from a run of the point's current config. A lock (`<out_dir>/.lock`) refuses a
second sweep into the same out dir while one runs.

Launch modes (launch.mode, or --mode):
- per_point: one torchrun per point; points are isolated, each pays the job start-up (~10 s here).
- in_job: several points inside one torchrun job (pfl_dist.sweep.worker): start-up paid once.
`--jobs N` runs N torchrun jobs at a time, each pinned to its share of the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pfl_dist.errors import ConfigError, OneLineParser, PflError
from pfl_dist.interpreter import interpreter_problem, python_command, tool_command
from pfl_dist.outputs import write_bytes_atomic
from pfl_dist.rundir import (
    DirLock,
    changed_keys,
    check_directory,
    config_hash,
    make_directory,
    os_error_text,
    result_config,
    run_config,
    set_run_dir_aside,
)
from pfl_dist.sweep.jobs import JobRunner, batches, point_command, worker_command
from pfl_dist.sweep.results import RESULTS_FILE, find_runs, is_complete, write_results_csv
from pfl_dist.sweep.spec import Point, Sweep, load_sweep, yaml_value


class Interrupted(Exception):
    """SIGTERM, raised in the main loop so it unwinds like Ctrl-C (KeyboardInterrupt)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="pfl_dist.sweep", description=__doc__.split("\n")[0], tool="pfl_dist.sweep")
    parser.add_argument("sweep", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides for every point (not a key the sweep varies)")
    parser.add_argument("--dry-run", action="store_true", help="validate every point and print the plan")
    parser.add_argument("--jobs", type=int, help="torchrun jobs at a time (overrides launch.jobs)")
    parser.add_argument("--mode", choices=("per_point", "in_job"), help="overrides launch.mode")
    parser.add_argument("--nproc-per-node", type=int, help="ranks per job (overrides launch.nproc_per_node)")
    parser.add_argument("--out-dir", help="overrides the sweep's out_dir")
    parser.add_argument("--only", metavar="REGEX", help="run only the points whose name matches (re.search)")
    parser.add_argument("--no-plot", action="store_true", help="skip figures and the trade-off table at the end")
    parser.add_argument("--force", action="store_true",
                        help="rerun every selected point, complete or not (old run dirs are kept in out_dir/replaced)")
    return parser.parse_args(argv)


def launch_overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {"jobs": args.jobs, "mode": args.mode, "nproc_per_node": args.nproc_per_node}
    return {k: v for k, v in given.items() if v is not None}


def varied_keys(points: Sequence[Point]) -> list[str]:
    return list(dict.fromkeys(k for p in points for k in p.values))


def point_changes(point: Point) -> list[str] | None:
    """How the run in the point's run dir differs from the point's config: [] = the same config,
    None = no run there (or nothing readable)."""
    saved = run_config(point.cfg.run_dir)
    if saved is None:
        return None
    return changed_keys(result_config(saved), result_config(point.cfg.identity()))


def describe_changes(changes: list[str]) -> str:
    return "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")


def set_aside(sweep: Sweep, point: Point, why: str) -> None:
    """Move a point's old run dir to out_dir/replaced/ (kept, named in the output)."""
    run_dir = point.cfg.run_dir
    saved = run_config(run_dir)
    label = config_hash(saved)[:8] if saved is not None else "unknown"
    kept = set_run_dir_aside(run_dir, sweep.out_dir / "replaced", label=label)
    print(f"{point.name}: {why}; rerunning it, the old run is kept in {kept}", flush=True)


def print_plan(sweep: Sweep, pending: list[Point], complete: set[str], changed: dict[str, list[str]]) -> None:
    """--dry-run: what would run, as commands a user could paste."""
    for point in sweep.points:
        status = "done   " if point.name in complete else "pending" if point in pending else "skipped"
        note = f"  (config changed: {describe_changes(changed[point.name])})" if point.name in changed else ""
        print(f"{status} {point.name}{note}")
    launch = sweep.launch
    for i, batch in enumerate(batches(pending, jobs=launch.jobs, mode=launch.mode)):
        if launch.mode == "per_point":
            print("$ " + shlex.join(point_command(sweep, batch[0])))
        else:
            plan = sweep.out_dir / "logs" / f"job-{i}.plan.json"
            print(f"$ {shlex.join(worker_command(sweep, plan))}   # {len(batch)} points")
    print(f"{len(sweep.points)} points valid, {len(pending)} to run, {len(complete)} complete")


def collect(sweep: Sweep) -> list[dict[str, Any]]:
    """Rebuild results.csv from the run dirs of this sweep's points, each only from a run of the
    point's current config (a point left out by --only keeps no stale row)."""
    expected = {p.name: config_hash(p.cfg.identity()) for p in sweep.points}
    runs = [run for run in find_runs(sweep.out_dir, list(expected)) if config_hash(run.identity) == expected[run.name]]
    return write_results_csv(sweep.out_dir / RESULTS_FILE, runs, varied=varied_keys(sweep.points))


def log_invocation(sweep: Sweep, entry: dict[str, Any]) -> None:
    """One line per invocation in sweep_log.jsonl: the sweep-level wall time of each attempt."""
    with open(sweep.out_dir / "sweep_log.jsonl", "a") as f:
        f.write(json.dumps(entry, allow_nan=False) + "\n")


def report(sweep: Sweep) -> None:
    """The trade-off table (its wire bytes named with the world size, a warning line when the runs'
    world sizes differ), the figure paths and the TensorBoard command."""
    from pfl_dist.sweep.plot import render
    from pfl_dist.sweep.results import find_runs
    from pfl_dist.sweep.tradeoff import world_size_warning, world_sizes

    rendered = render(sweep.out_dir, sweep.out_dir / "figures")
    runs = find_runs(sweep.out_dir)
    sizes = ", ".join(map(str, world_sizes(runs)))
    print(f"\ntrade-off ({rendered.metric} vs {rendered.axis_label}; the wire bytes are those of W = {sizes} "
          "processes per job):")
    warning = world_size_warning(runs)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(rendered.table_markdown, end="")
    print(f"table: {rendered.table_paths[0]} (and .csv)")
    for kind, path in rendered.figures.items():
        print(f"{'trade-off figure' if kind == 'tradeoff' else 'figure'}: {path}")
    print(f"redraw: {python_command()} -m pfl_dist.plot {shlex.quote(str(sweep.out_dir))}")


def report_tuning(sweep: Sweep) -> None:
    """A tuned sweep: each method's pick on the validation rows, as tuning.md/.csv (pfl_dist/sweep/tuning.py)."""
    from pfl_dist.sweep.tuning import select, tuning_markdown, write_tuning

    assert sweep.tune is not None
    picks = select(find_runs(sweep.out_dir), sweep.tune)
    path = write_tuning(sweep.out_dir, picks, sweep.tune)
    print(f"\ntuning (picked on {sweep.tune.metric}, never on test metrics):")
    print(tuning_markdown(picks, sweep.tune), end="")
    print(f"tuning: {path} (and .csv)")


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def execute(sweep: Sweep, pending: list[Point], *, num_complete: int) -> tuple[JobRunner, str]:
    """Run the pending points; returns the runner and 'ok', 'failed' or 'interrupted'."""
    runner = JobRunner(sweep, pending, num_complete=num_complete)
    # SIGINT explicitly too: a sweep started in the background of a script inherits SIGINT ignored.
    # Handlers can only be set from the main thread (pfl_dist.sweep.run may be called from another).
    previous = ({signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted),
                 signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        runner.run()
    except (KeyboardInterrupt, Interrupted):
        runner.stop()
        return runner, "interrupted"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return runner, "failed" if runner.failures else "ok"


def finish(sweep: Sweep, runner: JobRunner, status: str, *, wall_s: float, plot: bool) -> Outcome:
    rows = collect(sweep)
    launch = sweep.launch
    log_invocation(sweep, {"status": status, "mode": launch.mode, "nproc_per_node": launch.nproc_per_node,
                           "jobs": launch.jobs, "overrides": {k: yaml_value(v) for k, v in sweep.given.items()},
                           "num_run": len(runner.completed), "num_failed": len(runner.failures),
                           "num_complete": len(rows), "num_points": len(sweep.points), "wall_s": wall_s})
    missing = len(sweep.points) - len(rows)
    print(f"\nsweep {status}: {len(rows)}/{len(sweep.points)} points complete, {len(runner.failures)} failed, "
          f"{wall_s:.1f} s; results: {sweep.out_dir / RESULTS_FILE}")
    for name, reason in runner.failures.items():
        print(f"  failed {name}: {reason}")
    if missing:
        print(f"rerun the same command to run the {missing} missing point(s); complete ones are skipped")
    if sweep.tune is not None and rows:
        report_tuning(sweep)
    if plot and rows and status != "interrupted":
        report(sweep)
    print(f"TensorBoard: {tool_command('tensorboard', module='tensorboard.main')} --logdir "
          f"{shlex.quote(str(sweep.out_dir))}")
    return Outcome(status=status, exit_code={"ok": 0, "failed": 1, "interrupted": 130}[status], out_dir=sweep.out_dir,
                   rows=rows, failures=dict(runner.failures))


@dataclass(frozen=True)
class Outcome:
    """What one invocation of the driver did: 'ok', 'failed', 'interrupted' or 'planned' (--dry-run),
    the process exit code it stands for, results.csv's rows and the failed points' reasons."""

    status: str
    exit_code: int
    out_dir: Path
    rows: list[dict[str, Any]]
    failures: dict[str, str]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = interpreter_problem("pfl_dist.sweep")
    if problem:  # the jobs run under this interpreter: without torch every point would fail
        print(problem, file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep, out_dir=args.out_dir, launch_overrides=launch_overrides(args),
                           overrides=args.overrides)
        only = compile_only(args.only)
        return drive(sweep, only=only, force=args.force, dry_run=args.dry_run, plot=not args.no_plot).exit_code
    except PflError as err:
        print(f"pfl_dist.sweep: error: {err}", file=sys.stderr)
        return err.exit_code


def compile_only(pattern: str | None) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as err:
        raise ConfigError(f"--only is not a valid regular expression: {err}") from None


def drive(sweep: Sweep, *, only: re.Pattern[str] | None = None, force: bool = False, dry_run: bool = False,
          plot: bool = True) -> Outcome:
    """Plan, then (unless `dry_run`) run what is missing of a loaded sweep: the path the CLI and
    `pfl_dist.sweep.run` share. Bad input and unwritable files raise a one-line PflError."""
    changes = {p.name: point_changes(p) for p in sweep.points}
    changed = {name: c for name, c in changes.items() if c}
    complete = {p.name for p in sweep.points if changes[p.name] == [] and is_complete(sweep.out_dir / p.name)}
    selected = [p for p in sweep.points if only is None or only.search(p.name)]
    pending = [p for p in selected if force or p.name not in complete]
    if force:
        complete -= {p.name for p in selected}
    if dry_run:
        print_plan(sweep, pending, complete, changed)
        return Outcome(status="planned", exit_code=0, out_dir=sweep.out_dir, rows=[], failures={})
    check_directory(sweep.out_dir, "sweep out_dir")
    make_directory(sweep.out_dir, "sweep out_dir")
    lock = DirLock(sweep.out_dir, "sweep out_dir").acquire()
    try:
        return _run_sweep(sweep, pending, complete, changed, force=force, plot=plot)
    except OSError as err:
        raise PflError(f"cannot write the sweep's files: {os_error_text(err)}") from None
    finally:
        lock.release()


def _run_sweep(sweep: Sweep, pending: list[Point], complete: set[str], changed: dict[str, list[str]], *,
               force: bool, plot: bool) -> Outcome:
    for point in pending:
        if point.name in changed:
            set_aside(sweep, point, f"config changed ({describe_changes(changed[point.name])})")
        elif force and os.path.lexists(point.cfg.run_dir):
            set_aside(sweep, point, "--force")
    (sweep.out_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(sweep.out_dir / "sweep.yaml", sweep.text)
    launch = sweep.launch
    given = f" with {' '.join(f'{k}={yaml_value(v)}' for k, v in sweep.given.items())}" if sweep.given else ""
    print(f"sweep {sweep.path}{given}: {len(sweep.points)} points, {len(complete)} already complete, "
          f"{len(pending)} to run -> {sweep.out_dir} | {launch.mode}, {launch.nproc_per_node} rank(s)/job, "
          f"{launch.jobs} job(s) at a time", flush=True)
    started = time.perf_counter()
    runner, status = execute(sweep, pending, num_complete=len(complete))
    return finish(sweep, runner, status, wall_s=time.perf_counter() - started, plot=plot)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()

