"""Hostile cases for processes and ports (issue 15 families 5 and 6): a SIGKILLed torchrun, a
reader that closes the pipe, busy ports, and what a job listens on (divergence through the
launcher: test_divergence.py). Real torchrun jobs: marked distributed."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import write_sweep
from tests.hostile.hostile import (
    REPO,
    TINY_RUN,
    assert_no_traceback,
    assert_one_line,
    assert_unchanged,
    run_module,
    snapshot,
)

pytestmark = pytest.mark.distributed

SLOW_RUN = ("data.num_clients=2", "data.samples_per_client=20", "data.dim=4", "train.num_rounds=100000",
            "train.eval_every=20000", "algorithm.num_local_steps=2", "checkpoint.every=5000")


def descendants(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(c) for c in path.read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, *, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def torchrun(out: Path, *args: str, nproc: int = 2) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pfl_dist.train", f"run.out_dir={out}", "run.name=run", *args]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, **TORCHRUN_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_workers_die_with_a_sigkilled_torchrun_and_a_rerun_does_not_collide(tmp_path: Path) -> None:
    """Today the workers ran on orphaned; a rerun collided with them (5 records lost, exit 1)."""
    job = torchrun(tmp_path, *SLOW_RUN)
    try:
        assert wait_until(lambda: len(descendants(job.pid)) >= 2 and (tmp_path / "run" / "metrics.jsonl").exists(),
                          timeout=120), job.stderr
        workers = descendants(job.pid)
        os.kill(job.pid, signal.SIGKILL)  # torchrun only, not its process group
        job.wait(30)
        assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=5), "orphaned workers"
    finally:
        for pid in descendants(job.pid):
            os.kill(pid, signal.SIGKILL)
    rerun = run_module("pfl_dist.train", f"run.out_dir={tmp_path}", "run.name=run", *SLOW_RUN[:3],
                       "train.num_rounds=3", *SLOW_RUN[4:])
    # another config (num_rounds) and no summary: a fresh run in the same dir, not refused, not colliding
    assert rerun.code == 0, rerun.describe()
    assert_no_traceback(rerun)


def test_a_closed_stdout_pipe_does_not_kill_the_run(tmp_path: Path) -> None:
    """`pfl_dist.train ... | head -1`: the run goes on and writes its results."""
    command = [sys.executable, "-m", "pfl_dist.train", f"run.out_dir={tmp_path}", "run.name=run", *TINY_RUN[:3],
               "train.num_rounds=40", "train.eval_every=1", "algorithm.num_local_steps=2"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does after its line
    stderr = process.stderr.read().decode()
    assert process.wait(120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_closed_stdout_pipe_under_torchrun(tmp_path: Path) -> None:
    shell = (f"{sys.executable} -m pfl_dist.launch --nproc-per-node=2 run.out_dir={tmp_path} run.name=run "
             "data.num_clients=2 train.num_rounds=30 train.eval_every=1 algorithm.num_local_steps=2 | head -1")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **TORCHRUN_ENV})
    assert result.stdout.startswith("round    0/30"), result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_completed_run_of_another_config_through_the_launcher_is_one_line(tmp_path: Path) -> None:
    first = run_module("pfl_dist.launch", "--nproc-per-node=2", f"run.out_dir={tmp_path}", "run.name=run",
                       *TINY_RUN, timeout=300)
    assert first.code == 0, first.describe()
    before = snapshot(tmp_path)
    second = run_module("pfl_dist.launch", "--nproc-per-node=2", f"run.out_dir={tmp_path}", "run.name=run",
                        *TINY_RUN, "algorithm.lam=0.3", timeout=300)
    assert second.code == 2, second.describe()
    ours = [line for line in second.stderr_lines if line.startswith("pfl_dist:")]
    assert len(ours) == 1 and "another config (algorithm.lam was 0.5, now 0.3)" in ours[0], second.describe()
    assert_no_traceback(second)
    assert_unchanged(before, tmp_path)
    third = run_module("pfl_dist.launch", "--nproc-per-node=2", f"run.out_dir={tmp_path}", "run.name=run",
                       *TINY_RUN, "algorithm.lam=0.3", "--overwrite", timeout=300)
    assert third.code == 0, third.describe()


@pytest.mark.parametrize("option", ["--master-port", "--rdzv-endpoint"])
def test_a_busy_port_is_one_line_before_torchrun_starts(tmp_path: Path, option: str) -> None:
    """Today: a traceback (--master-port) or a silent hang past the join timeout (rendezvous)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        if option == "--master-port":
            args = ["--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
        else:
            # a join timeout far beyond the hang guard below: waiting for it would trip the guard
            args = ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-conf=join_timeout=1200"]
        outcome = run_module("pfl_dist.launch", *args, "--nproc-per-node=2", f"run.out_dir={tmp_path}",
                             *TINY_RUN, timeout=300)
    assert_one_line(outcome, code=2, contains=[str(port), "in use by another process"])
    assert not (tmp_path).exists() or not any(tmp_path.iterdir())


def readme_torchrun_command() -> tuple[list[str], dict[str, str]]:
    """README's "the same with torchrun directly" command, as a fresh shell with the venv active
    runs it: -> (argv, its VAR=value prefix)."""
    block = (REPO / "README.md").read_text().split("# the same with torchrun directly", 1)[1]
    lines = [line for line in block.split("\n\n", 1)[0].splitlines()[1:] if not line.startswith("#")]
    words = shlex.split(" ".join(line.rstrip("\\") for line in lines))
    env = dict(word.split("=", 1) for word in words if "=" in word and word.split("=")[0].isupper())
    argv = [word for word in words if word.split("=")[0] not in env]
    program = sys.executable if argv[0] == "python" else str(Path(sys.executable).parent / argv[0])  # the venv's
    return [program, *argv[1:]], env


@pytest.mark.parametrize("entry", ["launch", "sweep", "readme_torchrun"])
def test_the_job_listens_on_loopback_only(tmp_path: Path, entry: str) -> None:
    """`ss -ltnp`: the rendezvous store, rank 0's store and gloo listen on 127.0.0.1 only (torchrun
    --standalone's agent and rank 0 stores listened on every interface), for a launcher job, a
    sweep's in-job torchrun, and the README's hand-typed torchrun command (`torchrun --standalone`
    there had its agent's store on *:PORT)."""
    if subprocess.run(["which", "ss"], capture_output=True).returncode != 0:
        pytest.skip("ss (iproute2) is not installed")
    env: dict[str, str] = {}
    if entry == "readme_torchrun":
        readme, env = readme_torchrun_command()
        command = [*readme, f"run.out_dir={tmp_path}", "run.name=run", *SLOW_RUN, "data.num_clients=4"]
        metrics = tmp_path / "run" / "metrics.jsonl"
    elif entry == "launch":
        command = [sys.executable, "-m", "pfl_dist.launch", "--nproc-per-node=2", f"run.out_dir={tmp_path}",
                   "run.name=run", *SLOW_RUN]
        metrics = tmp_path / "run" / "metrics.jsonl"
    else:
        overrides = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in SLOW_RUN)}
        path = write_sweep(tmp_path / "sweep.yaml", overrides=overrides, grid={"algorithm.lam": [0.1]},
                           launch={"nproc_per_node": 2, "mode": "in_job"})
        command = [sys.executable, "-m", "pfl_dist.sweep", str(path), "--no-plot"]
        metrics = tmp_path / "out" / "lam=0.1__seed=0" / "metrics.jsonl"
    job = subprocess.Popen(command, cwd=REPO, env={**os.environ, **TORCHRUN_ENV, **env}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(metrics.exists, timeout=180)
        pids = {job.pid, *descendants(job.pid)}
        listening = [line for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
                     .splitlines() if any(f"pid={pid}," in line for pid in pids)]
    finally:
        for pid in [*descendants(job.pid), job.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait(30)
    assert len(listening) >= 3, listening  # the rendezvous store, rank 0's store, gloo
    local = [line.split()[3] for line in listening]
    assert all(address.startswith(("127.", "[::1]")) for address in local), listening
