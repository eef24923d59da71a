"""launch/slurm.sbatch for real, on a two-node Slurm cluster started here (tests/integration/slurm_cluster.py:
munged, slurmctld and two slurmd from Debian's slurm-wlm, nodes pfl1 and pfl2 on 127.0.0.1).

- A job of 2 nodes x 1 rank (one torchrun agent per node, the script's multi-node path) trains to
  completion and equals the local run of the same config on 2 processes: global_model_sha256,
  final metrics, byte totals, metrics.jsonl rounds and every TensorBoard point.
- `scancel` while the job trains (after a checkpoint is on disk): every process of the job gets
  SIGTERM from slurmstepd; the run stops at a round boundary with a checkpoint of that round, both
  tasks and the script exit 75 (the job: CANCELLED, ExitCode 75:0). The same sbatch command again
  resumes from that checkpoint (summary.json resumed_from) and ends equal to the local run.
- A misspelt key: one line from each node's launcher, exit 2, the job FAILED with ExitCode 2:0.
- Stopping the cluster while a job runs leaves no process and no file behind.

Needs root and slurm-wlm + munge (`.ci/run` installs them); skips with the reason otherwise, or
when the daemons do not start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.faults import alive, compare_runs, wait_for
from tests.helpers import REPO, free_port, read_summary
from tests.integration.slurm_cluster import (
    SlurmCluster,
    new_cluster,
    processes_with_conf,
    remove_stale_clusters,
    unavailable,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 80
# 4 clients on 2 ranks, rounds of about 0.1 s here (more on a loaded machine): a scancel sent
# once round 2 is checkpointed lands well before the end. Every round is checkpointed.
JOB = ("--config", "configs/default.yaml", "data.num_clients=4", "algorithm.num_local_steps=1500",
       f"train.num_rounds={ROUNDS}", "train.eval_every=10", "checkpoint.every=1")
JOB_TIMEOUT_S = 600.0
# Rank 0's line. Slurm signals every process of the step at once, but rank 0's worker may see the
# stop first through the agreement (another rank's SIGTERM) and then names that cause instead.
STOP_LINE = re.compile(rf"^pfl_dist: stopped by (?:SIGTERM|a signal to another rank) after round (\d+)/{ROUNDS}; "
                       r"checkpoint (\S+); ", re.M)


def _say(message: str) -> None:
    print(f"slurm-test: {message}", file=sys.stderr, flush=True)


def _start() -> tuple[SlurmCluster | None, str]:
    reason = unavailable()
    if reason:
        return None, reason
    stale = remove_stale_clusters()
    if stale:
        _say(f"removed what killed test runs left behind: {', '.join(map(str, stale))}")
    cluster = new_cluster()
    started = time.monotonic()
    try:
        reason = cluster.start()
    except BaseException:
        cluster.stop()
        raise
    if reason:
        cluster.stop()
        return None, f"Slurm did not start: {reason}"
    _say(f"cluster up in {time.monotonic() - started:.1f} s (slurmctld port {cluster.ports['slurmctld']})")
    return cluster, ""


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    cluster, reason = _start()
    if cluster is None:
        pytest.skip(f"cannot run Slurm here: {reason}")
    try:
        yield cluster
    finally:
        leftovers = cluster.stop()
    assert not leftovers, f"processes outlived their jobs and the daemons: {leftovers}"
    assert not cluster.root.exists()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same job on this machine without Slurm: `pfl_dist.launch --nproc-per-node=2`."""
    out = tmp_path_factory.mktemp("local")
    command = [sys.executable, "-m", "pfl_dist.launch", "--nproc-per-node=2", *JOB, f"run.out_dir={out}",
               "run.name=local"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "local"


def _submit(slurm: SlurmCluster, out_dir: Path, name: str, log: Path, *overrides: str) -> int:
    """`sbatch --nodes=2 --cpus-per-task=1 launch/slurm.sbatch JOB` from the repository root; the
    settings of this cluster come as sbatch options and environment, not in the script."""
    env = {**TORCHRUN_ENV, "NPROC_PER_NODE": "1", "MASTER_PORT": str(free_port()), "PYTHON": sys.executable}
    return slurm.sbatch("--nodes=2", "--cpus-per-task=1", "--time=00:30:00", f"--output={log}",
                        "launch/slurm.sbatch", *JOB, f"run.out_dir={out_dir}", f"run.name={name}", *overrides,
                        cwd=REPO, env=env)


def _newest_checkpoint(run_dir: Path, nproc: int) -> int:
    """The newest round whose every shard marker is on disk; 0 when none."""
    rounds = [int(folder.name.split("_")[1]) for folder in (run_dir / "ckpt").glob("round_*")
              if len(list(folder.glob("shard_*.json"))) == nproc] if (run_dir / "ckpt").is_dir() else []
    return max(rounds, default=0)


def _wait_for_checkpoint(slurm: SlurmCluster, job: int, run_dir: Path, *, at_least: int, log: Path) -> None:
    """Until both ranks' shards of round `at_least` (or a later one) are on disk."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while _newest_checkpoint(run_dir, 2) < at_least:
        assert time.monotonic() < deadline, f"no checkpoint of round {at_least}:\n{log.read_text()[-3000:]}"
        if not slurm.in_queue(job):
            raise AssertionError(f"job {job} ended ({slurm.job(job)['JobState']}) before the checkpoint of round "
                                 f"{at_least}:\n{log.read_text()[-3000:] if log.exists() else ''}")
        time.sleep(0.2)


def test_a_two_node_job_equals_the_local_run_of_the_same_world_size(slurm: SlurmCluster, local_run: Path,
                                                                    tmp_path: Path) -> None:
    # Execute
    started = time.monotonic()
    log = tmp_path / "job.out"
    job = _submit(slurm, tmp_path, "whole", log)
    record = slurm.wait_job(job, timeout=JOB_TIMEOUT_S)
    _say(f"2-node job {job}: {record['JobState']} {time.monotonic() - started:.1f} s after sbatch")
    # Assert: both nodes ran an agent, the job completed, and it is the local run bitwise
    output = log.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert "multinode.sh: node 0 of 2, 1 rank(s)" in output and "multinode.sh: node 1 of 2, 1 rank(s)" in output
    summary = read_summary(tmp_path / "whole")
    assert summary["world_size"] == 2
    assert summary["global_model_sha256"] == read_summary(local_run)["global_model_sha256"]
    assert compare_runs(tmp_path / "whole", local_run) == []


def test_scancel_stops_with_a_checkpoint_and_the_same_sbatch_resumes_bitwise(slurm: SlurmCluster, local_run: Path,
                                                                             tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    # Prepare: the job trains and has checkpointed round 2 (or a later one)
    started = time.monotonic()
    first_log = tmp_path / "first.out"
    job = _submit(slurm, tmp_path, "stopped", first_log)
    _wait_for_checkpoint(slurm, job, run_dir, at_least=2, log=first_log)
    # Execute: scancel, as a user would
    slurm.run("scancel", str(job))
    record = slurm.wait_job(job, timeout=JOB_TIMEOUT_S)
    output = first_log.read_text()
    _say(f"cancelled job {job}: {record['JobState']}, ExitCode {record['ExitCode']}, "
         f"{time.monotonic() - started:.1f} s from sbatch to its end")
    # Assert: a stop at a round boundary, with a checkpoint of that round on every rank
    assert (record["JobState"], record["ExitCode"]) == ("CANCELLED", "75:0"), output[-3000:]
    stops = STOP_LINE.findall(output)
    assert len(stops) == 1, output[-3000:]
    stopped_after = int(stops[0][0])
    assert 2 <= stopped_after < ROUNDS
    assert Path(stops[0][1]) == run_dir / "ckpt" / f"round_{stopped_after:06d}"
    assert _newest_checkpoint(run_dir, 2) == stopped_after
    assert not (run_dir / "summary.json").exists()
    for task in (0, 1):  # srun's report of each node's launcher
        assert re.search(rf"^srun: error: pfl\d: task {task}: Exited with exit code 75$", output, re.M), output[-3000:]
    assert "slurm.sbatch: stopped with a checkpoint (exit 75)" in output
    assert "a collective failed" not in output

    # Execute: the same sbatch command again
    second_log = tmp_path / "second.out"
    resumed = _submit(slurm, tmp_path, "stopped", second_log)
    record = slurm.wait_job(resumed, timeout=JOB_TIMEOUT_S)
    _say(f"resubmitted job {resumed}: {record['JobState']}, stopped after round {stopped_after}, "
         f"{time.monotonic() - started:.1f} s from the first sbatch")
    # Assert: it resumed from the stop's checkpoint and ends where the local run ended
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), second_log.read_text()[-3000:]
    summary = read_summary(run_dir)
    assert summary["resumed_from"] == [stopped_after]
    assert summary["num_rounds_completed"] == ROUNDS
    assert summary["global_model_sha256"] == read_summary(local_run)["global_model_sha256"]
    assert compare_runs(run_dir, local_run) == []


def test_a_misspelt_key_is_one_line_from_each_node_and_the_job_fails_with_2(slurm: SlurmCluster,
                                                                           tmp_path: Path) -> None:
    # Execute
    log = tmp_path / "job.out"
    job = _submit(slurm, tmp_path, "misspelt", log, "algorithm.lamda=0.1")
    record = slurm.wait_job(job, timeout=JOB_TIMEOUT_S)
    # Assert
    output = log.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("pfl_dist: error: ")]
    assert errors == ["pfl_dist: error: unknown config key 'algorithm.lamda' (did you mean 'algorithm.lam'?)"] * 2
    assert "Traceback" not in output
    assert "slurm.sbatch: srun ended with exit code 2" in output
    assert not (tmp_path / "misspelt").exists()


def test_stopping_the_cluster_with_a_job_running_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    """What a failing test leaves (a running job, even a process that left the job's process tree)
    goes with the cluster."""
    cluster, reason = _start()
    if cluster is None:
        pytest.skip(f"cannot run Slurm here: {reason}")
    escaped: list[int] = []
    try:
        # Prepare: a 2-node job; on each node a process double-forks out of the step's process
        # tree, so slurmstepd cannot signal it and only the clean-up's SLURM_CONF sweep finds it.
        marker = tmp_path / "escaped"
        task = f"(setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $! > {marker}.$SLURM_NODEID); exec sleep 600"
        job = cluster.sbatch("--nodes=2", f"--output={tmp_path}/job.out", f"--wrap=srun bash -c '{task}'",
                             cwd=tmp_path)
        assert wait_for(lambda: all(Path(f"{marker}.{node}").is_file() and Path(f"{marker}.{node}").read_text()
                                    for node in (0, 1)), timeout=120, interval=0.1), cluster.log_tails()
        escaped = [int(Path(f"{marker}.{node}").read_text()) for node in (0, 1)]
        assert cluster.job(job)["JobState"] == "RUNNING"
        assert set(escaped) <= set(processes_with_conf(cluster.conf))
    finally:
        # Execute
        leftovers = cluster.stop()
    # Assert: the cancel ended the job's own processes; the sweep SIGKILLed the escaped ones
    assert sorted(leftovers) == sorted(escaped)
    assert not any(alive(pid) for pid in escaped)
    assert processes_with_conf(cluster.conf) == []
    assert all(process.poll() is not None for process in cluster.daemons.values())
    assert not cluster.root.exists()
