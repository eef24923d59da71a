"""The layers: the experiment side (sweep driver, plotter) never imports torch."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

DRIVER_MODULES = ("pfl_dist", "pfl_dist.sweep", "pfl_dist.sweep.api", "pfl_dist.sweep.cli",
                  "pfl_dist.sweep.__main__", "pfl_dist.sweep.spec",
                  "pfl_dist.sweep.jobs", "pfl_dist.sweep.results", "pfl_dist.sweep.tradeoff",
                  "pfl_dist.sweep.plot", "pfl_dist.plot", "pfl_dist.tasks", "pfl_dist.launch", "pfl_dist.inputs",
                  "pfl_dist.rundir")


def test_sweep_driver_and_plotter_import_no_torch() -> None:
    # A fresh interpreter: this test process has torch loaded already.
    code = (f"import importlib, sys\nfor name in {DRIVER_MODULES!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
