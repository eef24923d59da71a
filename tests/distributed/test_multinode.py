"""Several torchrun agents on one machine (c10d rendezvous on 127.0.0.1): a 2-node run equals the
1-node run of the same world size; a node that dies mid-run ends the job on the other node
instead of hanging it. (A node that never joins: tests/distributed/test_launcher.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.distributed.conftest import BASE
from tests.faults import Job, checkpoint_complete, wait_for, worker_pids
from tests.helpers import free_port, read_summary

pytestmark = pytest.mark.distributed

HANG_S = 1200  # comm.timeout_s of the dead-node test; it waits half of it
LONG = ("data.num_clients=8", "data.samples_per_client=100", "train.num_rounds=200", "train.eval_every=10",
        "algorithm.num_local_steps=200", "checkpoint.every=2")


def start_agent(out: Path, *overrides: str, port: int, host: bool, nnodes: int = 2, join_timeout: int = 60,
                max_restarts: int = 0) -> Job:
    """One torchrun agent of a 2-process-per-node job; exactly one agent hosts the c10d store."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc-per-node=2",
               f"--max-restarts={max_restarts}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=multinode", f"--rdzv-conf=join_timeout={join_timeout},is_host={str(host).lower()}",
               "--local-addr=127.0.0.1", "-m", "pfl_dist.train", f"run.out_dir={out}", "run.name=run", *overrides]
    return Job.spawn(command, env={**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def kill_job(job: Job) -> None:
    """SIGKILL an agent and its workers (they run in their own sessions), if still running."""
    for pid in [*worker_pids(job.process.pid).values(), job.process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.process.wait()


def test_two_agents_equal_one_agent_with_the_same_world_size(tmp_path: Path, four_rank_run: Path) -> None:
    # Prepare: one agent with 4 ranks (the session's shared run of BASE)
    one = read_summary(four_rank_run)
    port = free_port()
    # Execute: two agents, two ranks each
    agents = [start_agent(tmp_path / "two", *BASE, port=port, host=host) for host in (True, False)]
    codes = [agent.wait(300) for agent in agents]
    # Assert
    assert codes == [0, 0], [agent.output() for agent in agents]
    two = read_summary(tmp_path / "two" / "run")
    assert two["world_size"] == 4
    assert two["global_model_sha256"] == one["global_model_sha256"]
    assert two["final"] == one["final"]
    assert two["comm"] == one["comm"]


def test_a_node_dying_mid_run_ends_the_job_on_the_other_node(tmp_path: Path) -> None:
    # Prepare: a long run on two agents
    port = free_port()
    # comm.timeout_s far beyond the wait below: a survivor that waited for the timeout instead of
    # failing on the dead peer's closed connections would trip the wait, on any machine load.
    survivor, victim = (start_agent(tmp_path, *LONG, f"comm.timeout_s={HANG_S}", port=port, host=host)
                        for host in (True, False))
    try:
        assert wait_for(lambda: checkpoint_complete(tmp_path / "run", 4, 4), timeout=300), survivor.output()
        # Execute: the second node goes away, agent and workers at once
        killed = time.monotonic()
        kill_job(victim)
        code = survivor.wait(HANG_S / 2)
        elapsed = time.monotonic() - killed
    finally:
        kill_job(victim)
        kill_job(survivor)
    # Assert: the survivor's ranks fail their collective on the dead peer's connections (not on
    # comm.timeout_s) and say so in one line each
    assert code != 0
    failures = [line for line in survivor.output().splitlines() if "a collective failed" in line]
    assert failures, survivor.output()
    assert not [line for line in failures if "Timed out" in line], failures
    print(f"dead node: the other node's job ended {elapsed:.1f} s after the kill")
