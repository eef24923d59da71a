"""pfl_dist.launch forwards SIGTERM to torchrun: the job stops at a round boundary with a
checkpoint, the launcher exits 75 (what `docker stop` sees), and rerunning the same command
resumes and ends bitwise equal to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pfl_dist.checkpoint import STOPPED_EXIT_CODE
from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import REPO, read_summary, run_cli

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
        _wait_for_round(run_dir, launcher, at_least=2, timeout=120)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=120)
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
