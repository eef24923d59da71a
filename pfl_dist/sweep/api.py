"""`pfl_dist.sweep.run(spec, overrides=None, ...)`: a sweep from Python, on the CLI's driver.

The same validation and one-line errors as `python -m pfl_dist.sweep` (raised as PflErrors), the
same out dir, run dirs, logs and results.csv. Torch-free like the driver: every point still runs
as its own torchrun job (or an in-job batch), started from this process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pfl_dist.errors import ConfigError
from pfl_dist.sweep.cli import Outcome, compile_only, drive
from pfl_dist.sweep.spec import Mode, load_sweep


def run(spec: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
        out_dir: str | Path | None = None, jobs: int | None = None, mode: Mode | None = None,
        nproc_per_node: int | None = None, only: str | None = None, force: bool = False,
        dry_run: bool = False, plot: bool = False) -> Outcome:
    """Run what is missing of a sweep: `spec` is a sweep file or a mapping in its shape; `overrides`
    ({"train.num_rounds": 5}) apply to every point; the keyword arguments are the CLI's options
    (`plot`: the trade-off table and figures at the end, off by default here). Returns the outcome:
    `status` ('ok', 'failed', 'interrupted', 'planned'), `out_dir`, `rows` (results.csv's rows) and
    `failures` (point name -> reason); a failed point is reported there, not raised."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of section.key to values, got {type(overrides).__name__}")
    launch = {k: v for k, v in {"jobs": jobs, "mode": mode, "nproc_per_node": nproc_per_node}.items() if v is not None}
    sweep = load_sweep(spec, out_dir=str(out_dir) if out_dir is not None else None, launch_overrides=launch,
                       overrides=overrides or {})
    return drive(sweep, only=compile_only(only), force=force, dry_run=dry_run, plot=plot)
