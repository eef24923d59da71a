"""pfl_dist.launch forwards SIGTERM to torchrun: the job stops at a round boundary with a
checkpoint, the launcher exits 75 (what `docker stop` sees), and rerunning the same command
resumes and ends bitwise equal to a run that was never interrupted. A SIGTERM that reaches
torchrun only after the run completed exits 0 with one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pfl_dist.checkpoint import STOPPED_EXIT_CODE
from pfl_dist.launch import TORCHRUN_ENV
from tests.faults import descendants, freeze, process_state, rank_of, signal_pending, thaw
from tests.helpers import REPO, free_port, read_summary, run_cli

pytestmark = pytest.mark.distributed

ROUNDS = 60
# ~0.1 s rounds on 3 ranks: long enough to be stopped in the middle, short enough for a test.
JOB = ("--nproc-per-node=3", "--config", "configs/default.yaml", "data.num_clients=3",
       "algorithm.num_local_steps=1500", f"train.num_rounds={ROUNDS}", "train.eval_every=1")


def _launch(out_dir: Path, *, name: str) -> list[str]:
    return [sys.executable, "-m", "pfl_dist.launch", *JOB, f"run.out_dir={out_dir}", f"run.name={name}"]


def _wait_for_round(run_dir: Path, process: subprocess.Popen[str], *, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        # Only whole lines: the newest one may be half written.
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
        if any(json.loads(line)["round"] >= at_least for line in lines):
            return
        time.sleep(0.05)
    raise AssertionError(f"round {at_least} never logged (launcher exit code {process.poll()})")


def test_sigterm_to_the_launcher_stops_with_75_and_the_rerun_resumes_bitwise(tmp_path: Path) -> None:
    # Uninterrupted reference
    reference = run_cli(*JOB, f"run.out_dir={tmp_path}", "run.name=reference", module="pfl_dist.launch", timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # Interrupted: SIGTERM to the launcher only (as `docker stop` signals a container's command)
    run_dir = tmp_path / "stopped"
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(_launch(tmp_path, name="stopped"), cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_round(run_dir, launcher, at_least=2, timeout=300)
        # Hold the job (rank 1 stopped, the others wait for it in the round's all-reduce) until the
        # SIGTERM has come through the launcher and the agent: the stop lands mid-run on any load.
        rank1 = next(pid for pid in descendants(launcher.pid) if rank_of(pid) == 1)
        freeze(rank1)
        try:
            assert not (run_dir / "summary.json").exists(), "the run completed before it could be held"
            launcher.send_signal(signal.SIGTERM)
            _wait(lambda: signal_pending(rank1, signal.SIGTERM), "the SIGTERM to reach rank 1", timeout=120)
        finally:
            thaw(rank1)
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == STOPPED_EXIT_CODE == 75, stderr[-3000:]
    stop_lines = [line for line in stderr.splitlines() if line.startswith("pfl_dist: stopped by SIGTERM after round")]
    assert len(stop_lines) == 1, stderr[-3000:]
    stopped_after = int(stop_lines[0].split("after round ")[1].split("/")[0])
    assert 2 <= stopped_after < ROUNDS, stop_lines[0]
    checkpoints = sorted(p.name for p in (run_dir / "ckpt").iterdir())
    assert checkpoints and checkpoints[-1] == f"round_{stopped_after:06d}", checkpoints
    assert len(list((run_dir / "ckpt" / checkpoints[-1]).glob("shard_*_of_00003.json"))) == 3
    assert not (run_dir / "summary.json").exists()

    # Rerun the same command: resumes from the stop's checkpoint, ends where the reference ended
    resumed = subprocess.run(_launch(tmp_path, name="stopped"), cwd=REPO, env=env, text=True, capture_output=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["resumed_from"] == [stopped_after]
    assert summary["num_rounds_completed"] == ROUNDS
    assert summary["global_model_sha256"] == read_summary(tmp_path / "reference")["global_model_sha256"]


# --- a stop that comes after the run has completed ----------------------------------------------

LATE_ROUNDS = 4
LATE_JOB = ("--nproc-per-node=2", "--config", "configs/default.yaml", "data.num_clients=2",
            "algorithm.num_local_steps=200", f"train.num_rounds={LATE_ROUNDS}", "train.eval_every=1")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(child) for child in task.read_text().split()]
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait(condition: Callable[[], bool], what: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_sigterm_after_the_run_completed_exits_0_with_one_line(tmp_path: Path) -> None:
    """The signal reaches torchrun's agent after its workers finished the run (summary.json
    written, workers exited 0) but before the agent itself has ended; the agent then exits 1 with
    its SignalException all the same. The launcher must not call that a stop to resume.

    The window is made deterministic, not raced: the agent is SIGSTOPped while the workers train
    (they do not need it), the test waits until summary.json is written and every worker has
    exited, SIGTERMs the launcher, waits until the forwarded SIGTERM is pending at the agent
    (/proc/PID/status ShdPnd), and only then lets the agent continue (SIGCONT)."""
    run_dir = tmp_path / "late"
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pfl_dist.launch", *LATE_JOB, f"run.out_dir={tmp_path}", "run.name=late"]
    launcher = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    agent = 0
    try:
        def agent_started() -> bool:
            nonlocal agent
            agent = next((c for c in _children(launcher.pid) if "torch.distributed.run" in _cmdline(c)), 0)
            return agent != 0 or launcher.poll() is not None

        _wait(agent_started, "torchrun's agent", timeout=120)
        assert agent, f"the launcher ended ({launcher.poll()}) before torchrun started"
        workers: list[int] = []

        def workers_started() -> bool:
            workers[:] = [c for c in _children(agent) if "pfl_dist.train" in _cmdline(c)]
            return len(workers) == 2 or launcher.poll() is not None

        _wait(workers_started, "two workers", timeout=120)
        os.kill(agent, signal.SIGSTOP)
        try:
            assert not (run_dir / "summary.json").exists(), "the run completed before the agent was stopped"
            _wait(lambda: (run_dir / "summary.json").exists()
                  and all(process_state(w) in ("Z", "gone") for w in workers),
                  "the workers to finish the run", timeout=300)
            assert process_state(agent) == "T"  # still stopped: the agent has not seen its workers end
            launcher.send_signal(signal.SIGTERM)
            _wait(lambda: signal_pending(agent, signal.SIGTERM), "the launcher to forward SIGTERM", timeout=60)
        finally:
            os.kill(agent, signal.SIGCONT)
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 0, stderr[-3000:]
    # Exactly one line: torchrun's SignalException report and its death-signal log line are dropped.
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"pfl_dist: the run had completed before SIGTERM arrived (torchrun was shutting down); "
                     f"its results are in {run_dir}, nothing to resume"], stderr[-3000:]
    assert read_summary(run_dir)["num_rounds_completed"] == LATE_ROUNDS
    assert "final:" in stdout


# --- a signal that reaches a launcher after its torchrun has ended ------------------------------

TWO_NODE_JOB = ("--nnodes=2", "--nproc-per-node=1", "--max-restarts=3", "--rdzv-backend=c10d", "--rdzv-id=stop",
                "--local-addr=127.0.0.1", "--config", "configs/default.yaml", "data.num_clients=2",
                "algorithm.num_local_steps=1500", f"train.num_rounds={ROUNDS}", "train.eval_every=1")
AT_EXIT = REPO / "tests" / "distributed" / "launcher_at_exit.py"


def _rank(launcher: subprocess.Popen[str]) -> int | None:
    """The RANK of the launcher's one worker (its agent's child), once it runs."""
    for agent in _children(launcher.pid):
        for worker in _children(agent):
            try:
                env = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
            if ranks:
                return ranks[0]
    return None


def test_a_sigterm_after_a_stop_from_another_node_still_exits_75(tmp_path: Path) -> None:
    """docker-compose stops the workers' containers first and the master's last. The master's
    rank 0 learns of the workers' stop in the round's all-reduce, checkpoints and exits 75; its
    launcher ends its agent and is about to exit 75 when `docker stop` SIGTERMs it too. That
    SIGTERM must not decide the exit code: it once killed the launcher (exit 143 in the container)
    because the launcher had already given SIGTERM back its default action.

    Two nodes on 127.0.0.1, one rank each, both launchers run by launcher_at_exit.py, which holds
    a launcher at its very end until the test says go: the window is held open, not raced. The
    node without rank 0 gets SIGTERM and exits 75; the node with rank 0 stops through the
    all-reduce, reaches its end, gets SIGTERM there, and only then is let go."""
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    try:
        for host in (True, False):
            name = "host" if host else "joiner"
            args = [*TWO_NODE_JOB, f"--rdzv-endpoint={endpoint}",
                    f"--rdzv-conf=is_host={str(host).lower()},join_timeout=300",
                    f"run.out_dir={tmp_path}", "run.name=two"]
            with (tmp_path / f"{name}.err").open("w") as err:
                process = subprocess.Popen([sys.executable, str(AT_EXIT), str(tmp_path / f"{name}.at_exit"),
                                            str(tmp_path / f"{name}.go"), *args], cwd=REPO, env=env, text=True,
                                           stdout=subprocess.DEVNULL, stderr=err)
            nodes.append((name, process))
        _wait_for_round(tmp_path / "two", nodes[0][1], at_least=2, timeout=300)
        ranks = {name: _rank(process) for name, process in nodes}
        first = next(name for name, rank in ranks.items() if rank == 0)
        (first_name, first), (other_name, other) = sorted(nodes, key=lambda node: node[0] != first)
        assert ranks[other_name] == 1, ranks

        # The node without rank 0 is stopped and exits 75 (nothing holds it at its end).
        (tmp_path / f"{other_name}.go").touch()
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=300) == STOPPED_EXIT_CODE, (tmp_path / f"{other_name}.err").read_text()[-3000:]

        # The node with rank 0 stopped through the all-reduce; it is held at its end.
        _wait(lambda: (tmp_path / f"{first_name}.at_exit").exists() or first.poll() is not None,
              "the rank-0 node's launcher to reach its end", timeout=300)
        assert first.poll() is None, (tmp_path / f"{first_name}.err").read_text()[-3000:]
        first.send_signal(signal.SIGTERM)
        _wait(lambda: first.poll() is not None or not signal_pending(first.pid, signal.SIGTERM),
              "the launcher to take the SIGTERM", timeout=60)
        (tmp_path / f"{first_name}.go").touch()
        code = first.wait(timeout=60)
    finally:
        for _, process in nodes:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = (tmp_path / f"{first_name}.err").read_text()
    assert code == STOPPED_EXIT_CODE, f"exit code {code}:\n{stderr[-3000:]}"
    assert re.search(rf"^pfl_dist: stopped by a signal to another rank after round \d+/{ROUNDS}; checkpoint ",
                     stderr, re.MULTILINE), stderr[-3000:]
    assert not (tmp_path / "two" / "summary.json").exists()
