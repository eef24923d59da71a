"""The sweep runner end to end with real torchrun jobs (2 gloo ranks each): SIGTERM and resume,
a failing point that does not lose the others, and in-job points equal to per-point runs."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults import freeze, process_state, signal_pending, thaw, wait_for, workers_mentioning
from tests.helpers import REPO, TINY, read_summary, write_sweep

pytestmark = [pytest.mark.integration, pytest.mark.distributed]
# The point a SIGTERM stops. It is held mid-run (sigterm_while_held) a few rounds in; the rounds
# after that are a margin for the moment between seeing those rounds logged and holding the job.
LONG_ROUNDS = 300



def sweep_command(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pfl_dist.sweep", str(path), *args]


def run_sweep(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sweep_command(path, *args), cwd=REPO, capture_output=True, text=True, timeout=300)


def result_names(out: Path) -> list[str]:
    with open(out / "results.csv", newline="") as f:
        return [row["name"] for row in csv.DictReader(f)]


def results_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def wait_for_file(path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def logged_rounds(run_dir: Path) -> int:
    """Whole lines of the run's metrics.jsonl (the newest one may be half written)."""
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().split("\n")[:-1]) if metrics.exists() else 0


def sigterm_while_held(sweep: subprocess.Popen[str], run_dir: Path, workers: str, *, evaluations: int) -> str:
    """SIGTERM the sweep while the job training `run_dir` is held mid-run -> the sweep's stdout.

    Once the run has logged `evaluations` lines, its rank 1 is stopped (SIGSTOP), which holds the
    whole job at its next all-reduce: the run cannot finish, however long the signal takes to
    reach it (sweep -> torchrun's agent -> workers). The test SIGTERMs the sweep, waits until the
    forwarded SIGTERM is pending at rank 1, and only then lets it continue (SIGCONT)."""
    deadline = time.monotonic() + 240
    while logged_rounds(run_dir) < evaluations:
        assert time.monotonic() < deadline and sweep.poll() is None, f"{run_dir} made no progress"
        time.sleep(0.05)
    rank1 = workers_mentioning(workers).get(1)
    assert rank1, f"no rank 1 mentioning {workers}"
    freeze(rank1)
    try:
        assert not (run_dir / "summary.json").exists(), "the run completed before it could be held"
        sweep.send_signal(signal.SIGTERM)
        assert wait_for(lambda: signal_pending(rank1, signal.SIGTERM) or process_state(rank1) in ("Z", "gone"),
                        timeout=120), "the sweep's SIGTERM never reached rank 1"
    finally:
        thaw(rank1)
    return sweep.communicate(timeout=120)[0]


def test_sigterm_stops_the_job_and_a_rerun_completes_only_the_missing_point(tmp_path: Path) -> None:
    # Prepare: a short point, then a longer one that is held mid-run when SIGTERM arrives.
    path = write_sweep(tmp_path / "sweep.yaml", overrides=TINY, grid={"train.num_rounds": [4, 300]},
                       launch={"nproc_per_node": 2, "mode": "per_point"})
    out = tmp_path / "out"
    first, second = out / "num_rounds=4__seed=0", out / "num_rounds=300__seed=0"
    # Execute
    sweep = subprocess.Popen(sweep_command(path, "--no-plot"), cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        wait_for_file(first / "summary.json", timeout=240)
        # the second point's own torchrun job, once it trains (its round-0 evaluation is logged)
        interrupted_out = sigterm_while_held(sweep, second, second.name, evaluations=1)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    first_mtime = (first / "summary.json").stat().st_mtime_ns
    # Assert: stopped cleanly, nothing left running, the finished point kept
    assert sweep.returncode == 130, interrupted_out
    assert "sweep interrupted: 1/2 points complete" in interrupted_out
    assert not (second / "summary.json").exists()
    assert processes_mentioning(str(out)) == []
    assert result_names(out) == [first.name]
    # Execute: the same command again, now with the figures
    rerun = run_sweep(path)
    # Assert: only the missing point ran, no duplicate rows, figures and the table were produced
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    log = [json.loads(line) for line in (out / "sweep_log.jsonl").read_text().splitlines()]
    assert [(e["status"], e["num_run"]) for e in log] == [("interrupted", 1), ("ok", 1)]
    assert (first / "summary.json").stat().st_mtime_ns == first_mtime
    assert result_names(out) == [first.name, second.name]
    assert read_summary(second)["comm"]["num_collectives"] == 300
    for name in ("tradeoff.png", "total_error_vs_rounds.png", "tradeoff_table.md"):
        assert (out / "figures" / name).stat().st_size > 0
    assert f"trade-off figure: {out / 'figures' / 'tradeoff.png'}" in rerun.stdout
    assert f"tensorboard --logdir {out}" in rerun.stdout


def test_in_job_points_have_own_ledgers_survive_a_failure_and_match_per_point_runs(tmp_path: Path) -> None:
    # Prepare: the middle point diverges (a step size that overflows float32).
    variants = {"ok1": {"algorithm.name": "fedclup", "algorithm.lam": 0.5},
                "bad": {"algorithm.name": "fedavg", "algorithm.local_lr": 1e38},
                "ok2": {"algorithm.name": "fedavg"}}
    path = write_sweep(tmp_path / "sweep.yaml", overrides=TINY, variants=variants,
                       launch={"nproc_per_node": 2, "mode": "in_job"})
    out = tmp_path / "out"
    # Execute
    in_job = run_sweep(path, "--no-plot")
    per_point = run_sweep(path, "--no-plot", "--mode", "per_point", "--only", "^ok1", "--out-dir", str(tmp_path / "pp"))
    # Assert: the failure is named, the points after it still ran (in a fresh job)
    assert in_job.returncode == 1, in_job.stdout + in_job.stderr
    assert "FAIL bad__seed=0: exit 1 (worker exit 3): pfl_dist: error: round 1: client" in in_job.stdout
    assert result_names(out) == ["ok1__seed=0", "ok2__seed=0"]
    assert sorted(p.name for p in (out / "logs").glob("job-*.plan.json")) == ["job-0.plan.json", "job-1.plan.json"]
    # Assert: each point has its own ledger and TensorBoard run, as a separate torchrun job would
    assert per_point.returncode == 0, per_point.stdout + per_point.stderr
    model_bytes = 10 * 2 * 4
    for name in ("ok1__seed=0", "ok2__seed=0"):  # ok2 ran after a failed point, in a second job
        comm = read_summary(out / name)["comm"]
        assert comm["num_collectives"] == 4  # this point's 4 rounds only: not cumulative over the job
        assert comm["uplink_bytes"] == 4 * 4 * model_bytes
        # ring: 2(W-1)/W x payload [model, weight total, stop count]
        assert comm["wire_bytes_model"] == 4 * (2 * 1 * (10 * 2 + 2) * 4 // 2) * 2
        assert len(list((out / name).glob("events.out.tfevents.*"))) >= 1
    in_job_summary, alone = read_summary(out / "ok1__seed=0"), read_summary(tmp_path / "pp" / "ok1__seed=0")
    assert in_job_summary["comm"] == alone["comm"]
    assert in_job_summary["global_model_sha256"] == alone["global_model_sha256"]
    assert in_job_summary["final"] == alone["final"]
    assert processes_mentioning(str(out)) == []


def test_a_changed_point_is_rerun_and_the_table_shows_its_new_numbers(tmp_path: Path) -> None:
    """Edit train.num_rounds in the sweep file and rerun: the changed points rerun (their old run
    dirs kept under replaced/), the unchanged one is skipped, and results.csv holds only new numbers."""
    # Prepare: a 3-point in-job sweep, complete at 4 rounds
    variants = {"a": {"algorithm.lam": 0.1}, "b": {"algorithm.lam": 1.0}, "avg": {"algorithm.name": "fedavg"}}
    path = write_sweep(tmp_path / "sweep.yaml", overrides=TINY, variants=variants,
                       launch={"nproc_per_node": 2, "mode": "in_job"})
    first = run_sweep(path, "--no-plot")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    old_avg = (out / "avg__seed=0" / "summary.json").read_bytes()
    # Execute: 6 rounds for the FedCLUP variants only
    variants["a"]["train.num_rounds"] = variants["b"]["train.num_rounds"] = 6
    write_sweep(path, overrides=TINY, variants=variants, launch={"nproc_per_node": 2, "mode": "in_job"})
    second = run_sweep(path, "--no-plot")
    # Assert
    assert second.returncode == 0, second.stderr
    assert "1 already complete, 2 to run" in second.stdout
    assert "a__seed=0: config changed (train.num_rounds was 4, now 6); rerunning it, the old run is kept in" \
        in second.stdout
    with open(out / "results.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert {name: row["num_rounds"] for name, row in rows.items()} == {"a__seed=0": "6", "b__seed=0": "6",
                                                                        "avg__seed=0": "4"}
    assert read_summary(out / "a__seed=0")["comm"]["num_collectives"] == 6
    assert (out / "avg__seed=0" / "summary.json").read_bytes() == old_avg  # unchanged point untouched
    kept = sorted(p.name.split(".")[0] for p in (out / "replaced").iterdir())
    assert kept == ["a__seed=0", "b__seed=0"]
    for old in (out / "replaced").iterdir():
        assert read_summary(old)["config"]["train"]["num_rounds"] == 4


def test_a_point_whose_data_file_changed_is_rerun_and_the_table_shows_its_new_numbers(tmp_path: Path) -> None:
    """Edit one client's CSV between two runs of the same sweep file: the points reading it rerun
    into fresh run dirs (the old ones kept under replaced/), results.csv holds the new numbers."""
    # Prepare: two in-job points (2 ranks) on a copy of the authors' 3-client CSV sample
    data = shutil.copytree(REPO / "tests" / "data" / "fedclup_csv_sample", tmp_path / "data")
    overrides = {"data.kind": "client_files", "data.data_dir": str(data), "data.num_clients": 3, "data.dim": 10,
                 "data.num_classes": 2, "train.num_rounds": 3, "train.eval_every": 1,
                 "algorithm.num_local_steps": 3}
    path = write_sweep(tmp_path / "sweep.yaml", overrides=overrides, grid={"algorithm.lam": [0.1, 1.0]},
                       launch={"nproc_per_node": 2, "mode": "in_job"})
    first = run_sweep(path, "--no-plot")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    unchanged = run_sweep(path, "--no-plot")
    assert "2 already complete, 0 to run" in unchanged.stdout, unchanged.stdout
    old = results_rows(out)
    # Execute: one feature value of client 2 changes
    lines = (data / "2_client_data.csv").read_text().splitlines()
    fields = lines[0].split(",")
    fields[0] = repr(float(fields[0]) + 1.5)
    (data / "2_client_data.csv").write_text("\n".join([",".join(fields), *lines[1:]]) + "\n")
    second = run_sweep(path, "--no-plot")
    # Assert
    assert second.returncode == 0, second.stderr
    assert "0 already complete, 2 to run" in second.stdout
    assert "lam=0.1__seed=0: config changed (data.data_dir contents changed (sha256 " in second.stdout
    new = results_rows(out)
    assert set(new) == set(old) == {"lam=0.1__seed=0", "lam=1.0__seed=0"}
    for name, row in new.items():
        summary = read_summary(out / name)
        assert float(row["eval/ITR"]) == summary["final"]["eval/ITR"] != float(old[name]["eval/ITR"])
    kept = sorted(p.name.rsplit(".", 1)[0] for p in (out / "replaced").iterdir())  # <name>.<old hash8>
    assert kept == ["lam=0.1__seed=0", "lam=1.0__seed=0"]
    for replaced in (out / "replaced").iterdir():
        assert read_summary(replaced)["inputs"] != read_summary(out / replaced.name.rsplit(".", 1)[0])["inputs"]


def test_sigterm_to_an_in_job_sweep_checkpoints_the_running_point_and_the_rerun_is_bitwise(tmp_path: Path) -> None:
    # Prepare: two points in one job; the second is held mid-run when SIGTERM comes.
    path = write_sweep(tmp_path / "sweep.yaml", overrides=TINY, grid={"train.num_rounds": [4, LONG_ROUNDS]},
                       launch={"nproc_per_node": 2, "mode": "in_job"})
    out = tmp_path / "out"
    long_point = out / f"num_rounds={LONG_ROUNDS}__seed=0"
    sweep = subprocess.Popen(sweep_command(path, "--no-plot"), cwd=REPO, stdout=subprocess.PIPE, text=True)
    # Execute: SIGTERM the sweep once the long point has logged a few evaluations (rounds 0, 2, 4)
    try:
        interrupted_out = sigterm_while_held(sweep, long_point, str(out), evaluations=3)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    # Assert: the point stopped at a round boundary with a checkpoint, nothing left running
    assert sweep.returncode == 130, interrupted_out
    assert not (long_point / "summary.json").exists()
    checkpoints = sorted((long_point / "ckpt").glob("round_*"))
    assert checkpoints, f"no checkpoint in {long_point / 'ckpt'}"
    stopped_round = int(checkpoints[-1].name.split("_")[1])
    assert 0 < stopped_round < LONG_ROUNDS
    assert "stopped by SIGTERM" in (out / "logs" / "job-0.err").read_text()
    assert processes_mentioning(str(out)) == []
    # Execute: rerun the sweep; run the same point uninterrupted for comparison
    rerun = run_sweep(path, "--no-plot")
    alone = run_sweep(path, "--no-plot", "--mode", "per_point", "--only", f"num_rounds={LONG_ROUNDS}",
                      "--out-dir", str(tmp_path / "alone"))
    # Assert: the resumed point ends bitwise equal to the uninterrupted run
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert alone.returncode == 0, alone.stdout + alone.stderr
    resumed, reference = read_summary(long_point), read_summary(tmp_path / "alone" / long_point.name)
    assert resumed["resumed_from"] == [stopped_round]
    assert resumed["global_model_sha256"] == reference["global_model_sha256"]
    assert resumed["final"] == reference["final"]
    assert resumed["comm"] == reference["comm"]
