"""configs/population.yaml, the shipped 10^7-client config, runs as shipped on 2 ranks (fewer rounds),
through the launcher a user types: `auto` makes the client data lazy, the evaluation is the config's
cohort of 1,000 with standard errors, every round trains its 1,000 sampled clients, and no process
comes near the memory of the population's data (13 KB a client: 65 GB a rank)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import REPO, read_metrics, read_summary

pytestmark = pytest.mark.distributed

# The launcher under a parent that reports the largest peak RSS (KiB) of everything it started:
# RUSAGE_CHILDREN's ru_maxrss covers every descendant that was waited for (the workers, torchrun).
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def test_the_shipped_population_config_runs_lazily_on_two_ranks(tmp_path: Path) -> None:
    # Execute: the README's command, 4 rounds instead of 50, a checkpoint at round 2
    command = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "pfl_dist.launch", "--nproc-per-node=2",
               "--config", "configs/population.yaml", f"run.out_dir={tmp_path}", "run.name=population",
               "train.num_rounds=4", "train.eval_every=2", "checkpoint.every=2"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **TORCHRUN_ENV}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # Assert: lazy data chosen by auto and said so; the cohort's metrics with standard errors
    assert "data: lazy (data.lazy=auto)" in result.stdout
    summary = read_summary(tmp_path / "population")
    assert summary["world_size"] == 2 and summary["config"]["data"]["num_clients"] == 10_000_000
    assert summary["evaluation"] == {"clients": 1000, "cohort": True}
    assert summary["participation"]["num_local_updates"] == 4 * 1000
    rows = read_metrics(tmp_path / "population")
    assert [row["round"] for row in rows] == [0, 2, 4]
    for row in rows:
        assert 0 < row["metrics"]["train/acc_personal_se"] < 0.05
    assert rows[-1]["metrics"]["train/loss_global"] < rows[0]["metrics"]["train/loss_global"]
    # Assert: memory of a round's clients and the O(m) vectors, not of the population's data
    peak_kib = int(result.stdout.rsplit("peak_rss_kib", 1)[1].split()[0])
    assert peak_kib < 2 * 2**20, f"peak RSS {peak_kib / 2**10:.0f} MiB per process (the target is 2 GiB)"
