"""The same command on 1 and on 2 processes (run.name=auto): two runs, each reporting its own
bytes. Before the world size was part of the run's identity, the second command said "already
complete" and printed the first run's results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import REPO, TINY, read_summary

pytestmark = pytest.mark.distributed


def launch(out: Path, nproc: int) -> str:
    """`python -m pfl_dist.launch --nproc-per-node=N` of one tiny config into `out`; its stdout."""
    command = [sys.executable, "-m", "pfl_dist.launch", f"--nproc-per-node={nproc}", "--config",
               str(REPO / "configs" / "default.yaml"), f"run.out_dir={out}", *(f"{k}={v}" for k, v in TINY.items())]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_config_on_one_and_two_processes_is_two_runs(tmp_path: Path) -> None:
    # Execute: the same config, first on 1 process, then on 2
    first, second = launch(tmp_path, 1), launch(tmp_path, 2)
    # Assert: the second trained (it printed rounds, not "already complete") into its own run dir
    assert "already complete" not in second and "round    4/4" in second
    run_dirs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(run_dirs) == 2
    by_size = {read_summary(d)["world_size"]: d for d in run_dirs}
    assert f"run dir: {by_size[1]}" in first and f"run dir: {by_size[2]}" in second
    one, two = (read_summary(by_size[w])["comm"] for w in (1, 2))
    # FL bytes do not depend on the world size; wire bytes do (none cross a wire on one process)
    assert (one["uplink_bytes"], one["downlink_bytes"]) == (two["uplink_bytes"], two["downlink_bytes"])
    assert one["wire_bytes_model"] == 0 < two["wire_bytes_model"]
