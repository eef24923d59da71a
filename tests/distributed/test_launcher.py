"""pfl_dist.launch: a node that never joins ends the job within the join timeout (torchrun's
RendezvousTimeoutError), with one clear line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import free_port, run_cli

pytestmark = pytest.mark.distributed


def test_missing_node_ends_within_the_join_timeout_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    # timeout: a hang guard only, far beyond the join timeout plus start-up on a loaded machine
    result = run_cli("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-conf=is_host=true,join_timeout=8",
                     "--config", "configs/default.yaml", f"run.out_dir={tmp_path}", "data.num_clients=2",
                     module="pfl_dist.launch", timeout=600)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    # the join timeout ended it (torchrun's own report, passed through), and not before it ran out
    assert "RendezvousTimeoutError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("pfl_dist: error: rendezvous timed out")
    assert elapsed >= 8
    assert not list(tmp_path.glob("*/summary.json"))
