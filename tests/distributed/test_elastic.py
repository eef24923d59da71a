"""Elastic restart under real torchrun: a SIGKILLed worker is replaced and the run resumes exactly;
SIGTERM to the job stops every rank at the same round with a checkpoint. The 10-trial version is
benchmarks/kill_trials.py."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from pfl_dist.checkpoint import STOPPED_EXIT_CODE
from tests.faults import (
    OVERRIDES,
    Job,
    checkpoint_complete,
    compare_runs,
    freeze,
    kill_trial,
    run_reference,
    signal_pending,
    start_torchrun,
    thaw,
    wait_for,
    worker_pids,
)
from tests.helpers import read_summary

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_reference(tmp_path_factory.mktemp("elastic"))


def test_a_sigkilled_worker_is_restarted_and_the_run_ends_bitwise_equal(reference: Path) -> None:
    # Execute: kill rank 2 shortly after the checkpoint of round 8 is complete
    result = kill_trial(reference.parent, reference, trial=0, killed_rank=2, kill_after_round=8, delay_s=0.05)
    # Assert: restarted, resumed from a checkpoint at or after round 8, and equal to the reference
    assert result.exit_code == 0, result.problems
    assert result.resumed_from and result.resumed_from[0] >= 8
    assert result.problems == []
    print(f"resume after SIGKILL: {result.resume_s:.1f} s")


def test_sigterm_to_the_job_stops_every_rank_at_one_round_with_a_checkpoint(reference: Path) -> None:
    # Prepare
    out, name = reference.parent, "sigterm"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # the module's folder: a fresh run each time
    job = start_torchrun(out, name, nproc=4, max_restarts=3, overrides=OVERRIDES)
    assert wait_for(lambda: checkpoint_complete(run_dir, 6, 4), timeout=300)
    # Execute: what `docker stop` does to the agent, which forwards it to its workers. The job is
    # held (rank 1 stopped; the others wait for it in the round's all-reduce) until the forwarded
    # SIGTERM has reached rank 1, so the stop lands mid-run on any load.
    rank1 = worker_pids(job.process.pid)[1]
    freeze(rank1)
    try:
        assert not (run_dir / "summary.json").exists(), "the run completed before it could be held"
        os.kill(job.process.pid, signal.SIGTERM)
        assert wait_for(lambda: signal_pending(rank1, signal.SIGTERM), timeout=120), job.output()
    finally:
        thaw(rank1)
    code = job.wait(300)
    # Assert: one line from rank 0, a complete checkpoint of the stop round, no restart
    stop_lines = [line for line in job.output().splitlines() if line.startswith("pfl_dist: stopped by SIGTERM")]
    assert len(stop_lines) == 1, job.output()
    stopped_round = int(stop_lines[0].split("after round ")[1].split("/")[0])
    assert checkpoint_complete(run_dir, stopped_round, 4)
    assert code != 0 and not (run_dir / "summary.json").exists()
    # Execute: the same command again resumes and finishes
    rerun = start_torchrun(out, name, nproc=4, max_restarts=0, overrides=OVERRIDES)
    assert rerun.wait(300) == 0, rerun.output()
    # Assert
    assert read_summary(run_dir)["resumed_from"] == [stopped_round]
    assert compare_runs(run_dir, reference) == []


def test_sigint_to_a_single_process_run_exits_75_with_one_line(tmp_path: Path) -> None:
    # Prepare: a plain process (no torchrun) hosting every client
    job = start_plain(tmp_path)
    assert wait_for(lambda: checkpoint_complete(tmp_path / "plain", 4, 1), timeout=300)
    # Execute: SIGINT while the process is held (SIGSTOP), so that it lands mid-run on any load
    freeze(job.process.pid)
    try:
        assert not (tmp_path / "plain" / "summary.json").exists(), "the run completed before it could be held"
        job.process.send_signal(signal.SIGINT)
        assert wait_for(lambda: signal_pending(job.process.pid, signal.SIGINT), timeout=60)
    finally:
        thaw(job.process.pid)
    code = job.wait(300)
    # Assert
    lines = [line for line in job.output().splitlines() if line.startswith("pfl_dist:")]
    assert code == STOPPED_EXIT_CODE
    assert len(lines) == 1 and lines[0].startswith("pfl_dist: stopped by SIGINT after round "), job.output()
    assert "Traceback" not in job.output()


def start_plain(out: Path) -> Job:
    command = [sys.executable, "-m", "pfl_dist.train", f"run.out_dir={out}", "run.name=plain", *OVERRIDES]
    return Job.spawn(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
