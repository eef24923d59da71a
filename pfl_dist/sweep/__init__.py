"""Experiments: sweeps over configs, their results table, trade-off curves and figures.

The driver side (spec, jobs, results, tradeoff, plot, cli, api) never imports torch: it only starts
torchrun jobs and reads their run directories. `worker` is the exception: it runs inside torchrun
and trains many points in one job. `pfl_dist.sweep.run` (pfl_dist/sweep/api.py) is imported on
first use, so a worker does not import the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pfl_dist.sweep.api import run

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from pfl_dist.sweep.api import run

        return run
    raise AttributeError(f"module 'pfl_dist.sweep' has no attribute '{name}'")
