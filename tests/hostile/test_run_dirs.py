"""Hostile cases for run dirs (issue 15 families 3 and 4, issue 10's results that are never lost):
an out_dir that is a file, read-only, immutable or on a full disk; a second writer; a rerun with
another config. Each asserts the exit code, one line, no traceback, and that results which
existed before are byte-identical afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfl_dist import launch, train
from pfl_dist.errors import DataError
from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.rundir import DirLock
from pfl_dist.sweep import cli as sweep_cli
from pfl_dist.train import Trainer
from tests.faults import freeze, thaw
from tests.helpers import write_sweep
from tests.hostile.hostile import (
    ERROR,
    REPO,
    SWEEP_ERROR,
    TINY_RUN,
    Outcome,
    assert_no_traceback,
    assert_one_line,
    assert_unchanged,
    run_main,
    snapshot,
)


def train_args(out: Path, *extra: str) -> list[str]:
    return [f"run.out_dir={out}", "run.name=run", *TINY_RUN, *extra]


def complete_run(out: Path, *extra: str) -> Path:
    outcome = run_main(train.main, train_args(out, *extra))
    assert outcome.code == 0, outcome.describe()
    return out / "run"


@contextlib.contextmanager
def mounted_tmpfs(where: Path, *, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` at `where` (root only; the test skips otherwise), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path) -> None:
    """Write a filler file until the filesystem of `where` is full."""
    with contextlib.suppress(OSError), open(where / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs root and e2fsprogs")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not supported on the filesystem of {path}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


# --- the same name, another config (issue 10) ---------------------------------------------------


def test_a_completed_run_of_another_config_is_refused_and_left_alone(tmp_path: Path) -> None:
    run_dir = complete_run(tmp_path)
    before = snapshot(run_dir)
    outcome = run_main(train.main, train_args(tmp_path, "algorithm.lam=0.3"))
    assert_one_line(outcome, code=2, contains=["another config", "algorithm.lam was 0.5, now 0.3", "--overwrite",
                                               "run.name="])
    assert_unchanged(before, run_dir)


def test_the_same_config_again_is_already_complete_and_trains_nothing(tmp_path: Path) -> None:
    run_dir = complete_run(tmp_path)
    before = snapshot(run_dir)
    outcome = run_main(train.main, train_args(tmp_path))
    assert outcome.code == 0 and outcome.stderr == "", outcome.describe()
    assert "already complete" in outcome.stdout and "round " not in outcome.stdout
    assert_unchanged(before, run_dir)


# --- an --overwrite that did not finish (issue 22) ---------------------------------------------


def interrupted_overwrite(out: Path) -> tuple[Path, str]:
    """A completed run (lam 0.5), then `--overwrite` with lam 0.3 that dies in round 2, after its
    round-1 checkpoint, without a rollback: what a SIGKILL leaves (.replaced/ holds the completed
    run; config.yaml, metrics, events and ckpt/ are the unfinished run's). -> (run dir, the
    completed run's global_model_sha256)."""
    run_dir = complete_run(out)
    sha = json.loads((run_dir / "summary.json").read_text())["global_model_sha256"]
    original = Trainer.run_round

    def dies_in_round_2(self: Trainer, round_idx: int) -> bool:
        if round_idx == 1:
            raise KeyboardInterrupt("killed")  # neither PflError nor OSError: no rollback, like SIGKILL
        return original(self, round_idx)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "run_round", dies_in_round_2)
        run_main(train.main, [*train_args(out, "algorithm.lam=0.3", "checkpoint.every=1"), "--overwrite"])
    assert (run_dir / ".replaced" / "summary.json").is_file() and list(run_dir.glob("ckpt/round_000001/*.json"))
    return run_dir, sha


REFUSED_RERUNS = {
    "the original command": (("--nproc-per-node=2",), (), "an unfinished run of another config (algorithm.lam was "
                             "0.3, now 0.5)"),
    "the interrupted command without --overwrite": ((), ("algorithm.lam=0.3", "checkpoint.every=1"),
                                                    "an unfinished run of this config"),
    "a third config": ((), ("algorithm.lam=0.1",), "an unfinished run of another config (algorithm.lam was 0.3, "
                       "now 0.1)"),
}


@pytest.mark.parametrize("case", list(REFUSED_RERUNS))
@pytest.mark.parametrize("entry", ["train", "launch"])
def test_a_refused_rerun_after_an_interrupted_overwrite_touches_nothing(tmp_path: Path, case: str,
                                                                        entry: str) -> None:
    """The reported case: the original command was refused (cannot resume: a checkpoint of another
    config), yet its rollback had deleted the unfinished run's checkpoints and moved the old
    results back, contradicting both lines it printed (the note that they stay in .replaced/)."""
    run_dir, _ = interrupted_overwrite(tmp_path)
    torchrun, extra, names = REFUSED_RERUNS[case]
    before = snapshot(run_dir)
    main = train.main if entry == "train" else launch.main
    outcome = run_main(main, [*(torchrun if entry == "launch" else ()), *train_args(tmp_path, *extra)])
    assert_one_line(outcome, code=2, contains=["holds an --overwrite that did not finish", names,
                                               f"{run_dir / '.replaced'} the results it replaces", "--overwrite"])
    assert outcome.stdout == "", outcome.describe()  # no note claiming anything
    assert_unchanged(before, run_dir)


def test_after_an_interrupted_overwrite_the_same_overwrite_resumes_and_completes(tmp_path: Path) -> None:
    run_dir, _ = interrupted_overwrite(tmp_path)
    outcome = run_main(train.main, [*train_args(tmp_path, "algorithm.lam=0.3", "checkpoint.every=1"), "--overwrite"])
    assert outcome.code == 0 and "resume: round 1/2" in outcome.stdout, outcome.describe()
    reference = complete_run(tmp_path / "reference", "algorithm.lam=0.3", "checkpoint.every=1")
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert summary["global_model_sha256"] == expected["global_model_sha256"]
    assert not (run_dir / ".replaced").exists()


def test_after_an_interrupted_overwrite_the_original_with_overwrite_replaces_it(tmp_path: Path) -> None:
    run_dir, sha = interrupted_overwrite(tmp_path)
    outcome = run_main(train.main, [*train_args(tmp_path), "--overwrite"])
    assert outcome.code == 0 and outcome.stderr == "", outcome.describe()
    assert "checkpoints of the unfinished run it replaces" in outcome.stdout and "resume:" not in outcome.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_model_sha256"] == sha and summary["config"]["algorithm"]["lam"] == 0.5
    assert not (run_dir / ".replaced").exists() and not list(run_dir.glob("ckpt/round_*"))


def test_an_overwrite_refused_by_its_data_leaves_an_interrupted_overwrite_as_it_was(tmp_path: Path) -> None:
    """pfl_dist.train reads its data after it has locked the run dir: a refusal there used to run
    the rollback of the earlier, unfinished --overwrite (its checkpoints deleted, the old results
    moved back)."""
    run_dir, _ = interrupted_overwrite(tmp_path)
    before = snapshot(run_dir)

    def unreadable(*args: object, **kwargs: object) -> None:
        raise DataError("data_dir/1_client_data.csv: file not found")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "build_task", unreadable)
        outcome = run_main(train.main, [*train_args(tmp_path), "--overwrite"])
    assert outcome.code == 2 and outcome.stderr_lines == ["pfl_dist: error: data_dir/1_client_data.csv: file not "
                                                          "found"], outcome.describe()
    assert_unchanged(before, run_dir)


def test_a_checkpoint_of_another_config_is_refused_before_torchrun_starts(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = complete_run(tmp_path, "checkpoint.every=1", "algorithm.lam=0.3")
    (run_dir / "summary.json").unlink()  # as if killed after its last checkpoint
    before = snapshot(run_dir)
    monkeypatch.setattr(launch, "run_torchrun", lambda *args, **kwargs: pytest.fail("torchrun started"))
    outcome = run_main(launch.main, ["--nproc-per-node=2", *train_args(tmp_path)])
    assert_one_line(outcome, code=2, contains=["cannot resume", "round_000001 was written with another config "
                                               "(algorithm.lam was 0.3, now 0.5)", "--overwrite"])
    assert_unchanged(before, run_dir)


# --- the filesystem (family 3) ------------------------------------------------------------------


def test_out_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder\n")
    before = snapshot(tmp_path)
    outcome = run_main(train.main, train_args(tmp_path / "out"))
    assert_one_line(outcome, code=2, contains=["run.out_dir", "is a file, not a folder"])
    assert_unchanged(before, tmp_path)


def test_out_dir_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x\n")
    before = snapshot(tmp_path)
    outcome = run_main(train.main, train_args(tmp_path / "file" / "out"))
    assert_one_line(outcome, code=2, contains="is not a directory")
    assert_unchanged(before, tmp_path)


def test_read_only_out_dir(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", size="1m", read_only=True) as out:
        before = snapshot(out)
        outcome = run_main(train.main, train_args(out))
        assert_one_line(outcome, code=2, contains=["Read-only file system", str(out)])
        assert_unchanged(before, out)


def test_immutable_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with immutable(out):
        before = snapshot(tmp_path)
        outcome = run_main(train.main, train_args(out))
        assert_one_line(outcome, code=2, contains=["cannot create run dir", "Operation not permitted"])
        assert_unchanged(before, tmp_path)


def test_immutable_run_dir_with_results_and_overwrite(tmp_path: Path) -> None:
    run_dir = complete_run(tmp_path)
    with immutable(run_dir):
        before = snapshot(run_dir)
        outcome = run_main(train.main, [*train_args(tmp_path, "algorithm.lam=0.3"), "--overwrite"])
        assert_one_line(outcome, code=2, contains="Operation not permitted")
        assert_unchanged(before, run_dir)


def test_full_disk_fresh_run_is_one_line(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", size="64k") as out:
        outcome = run_main(train.main, [f"run.out_dir={out}", "run.name=run", "data.num_clients=2",
                                        "train.num_rounds=200", "train.eval_every=1", "algorithm.num_local_steps=2"])
        assert_one_line(outcome, code=2, contains="No space left on device")
        assert not (out / "run" / "summary.json").exists()


def test_full_disk_overwrite_keeps_the_old_results(tmp_path: Path) -> None:
    """The reported failure: a rerun on a full disk deleted the old summary and model first."""
    with mounted_tmpfs(tmp_path / "small", size="1m") as out:
        run_dir = complete_run(out)
        fill_disk(out)
        before = snapshot(run_dir)
        outcome = run_main(train.main, [*train_args(out, "algorithm.lam=0.3"), "--overwrite"])
        assert_one_line(outcome, code=2, contains="No space left on device")
        assert_unchanged(before, run_dir)


# A TensorBoard writer thread that dies of the full disk is reported by the main thread in one
# line; its own traceback (threading.excepthook) must not appear, here as pytest's warning.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_full_disk_after_a_checkpoint_exits_75_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    """Every round writes TensorBoard events (the writer's thread), metrics.jsonl and a checkpoint:
    whichever meets the full disk first, the run ends with one line."""
    with mounted_tmpfs(tmp_path / "small", size="2m") as out:
        ckpt = out / "run" / "ckpt"

        def fill_after_first_checkpoint() -> None:
            deadline = time.monotonic() + 60
            while not list(ckpt.glob("round_*/shard_*.json")) and time.monotonic() < deadline:
                time.sleep(0.002)
            fill_disk(out)

        filler = threading.Thread(target=fill_after_first_checkpoint)
        filler.start()
        outcome = run_main(train.main, [f"run.out_dir={out}", "run.name=run", "data.num_clients=2",
                                        "train.num_rounds=3000", "train.eval_every=1", "checkpoint.every=1",
                                        "algorithm.num_local_steps=2"])
        filler.join()
        line = assert_one_line(outcome, code=75, contains="No space left on device")
        assert "rerun the same command to resume" in line
        assert list(ckpt.glob("round_*/shard_*.json"))


def test_full_disk_after_a_checkpoint_in_a_real_process_is_one_line_on_stderr(tmp_path: Path) -> None:
    """As `python -m pfl_dist.train`, where a TensorBoard writer thread that died of the full disk
    printed its traceback (OSError: No space left on device) on stderr before the run's one line.

    The writer's thread meets the full disk first, every time: the disk fills after the checkpoint
    of round 50, and until the next one (round 100) the run writes nothing but TensorBoard events
    (about 5 per round: comm/*, time/round_s; no metrics.jsonl line, eval_every=1000), so the
    event file outgrows the free space of its last page before anything else is written."""
    with mounted_tmpfs(tmp_path / "small", size="2m") as out:
        ckpt = out / "run" / "ckpt"
        env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
        # Output to files outside the small disk: an unread pipe would pause the run.
        with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
            args = [f"run.out_dir={out}", "run.name=run", "data.num_clients=2", "train.num_rounds=3000",
                    "train.eval_every=1000", "checkpoint.every=50", "algorithm.num_local_steps=2"]
            process = subprocess.Popen([sys.executable, "-m", "pfl_dist.train", *args], cwd=REPO, env=env,
                                       stdout=stdout, stderr=stderr, text=True)
            try:
                deadline = time.monotonic() + 120
                while not list(ckpt.glob("round_*/shard_*.json")):
                    assert time.monotonic() < deadline and process.poll() is None, "no checkpoint was written"
                    time.sleep(0.002)
                freeze(process.pid)  # the disk fills at this round, on any machine load
                try:
                    fill_disk(out)
                finally:
                    thaw(process.pid)
                process.wait(timeout=300)
            finally:
                if process.poll() is None:
                    process.kill()
            stdout.seek(0)
            stderr.seek(0)
            outcome = Outcome(code=process.returncode, stdout=stdout.read(), stderr=stderr.read())
        line = assert_one_line(outcome, code=75, contains=["rank 0: cannot write the run's files",
                                                           "No space left on device"])
        assert "rerun the same command to resume" in line
        assert list(ckpt.glob("round_*/shard_*.json"))


def test_sweep_into_a_read_only_out_dir(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1]})
    with mounted_tmpfs(tmp_path / "ro", size="1m", read_only=True) as out:
        outcome = run_main(sweep_cli.main, [str(path), "--out-dir", str(out / "sweep")])
        assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains="Read-only file system")


def test_sweep_out_dir_that_is_a_file(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1]})
    (tmp_path / "out").write_text("x\n")
    before = snapshot(tmp_path / "out")
    outcome = run_main(sweep_cli.main, [str(path)])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains="is a file, not a folder")
    assert_unchanged(before, tmp_path / "out")


# --- concurrent writers (family 4) --------------------------------------------------------------


def test_a_second_run_into_a_locked_run_dir_is_refused(tmp_path: Path) -> None:
    run_dir = complete_run(tmp_path)
    before = snapshot(run_dir)
    lock = DirLock(run_dir, "run dir").acquire()  # another open file: flock conflicts as across processes
    try:
        outcome = run_main(train.main, [*train_args(tmp_path, "algorithm.lam=0.3"), "--overwrite"])
    finally:
        lock.release()
    assert_one_line(outcome, code=2, contains=["in use by another pfl_dist process", f"(pid {os.getpid()})"])
    assert_unchanged(before, run_dir)


def test_two_runs_at_once_into_one_run_dir(tmp_path: Path) -> None:
    """Two real processes: the second is refused while the first trains; the first's metrics have
    each round once (today both exited 0 with interleaved, duplicated metrics.jsonl)."""
    import sys

    from tests.hostile.hostile import REPO

    args = [f"run.out_dir={tmp_path}", "run.name=run", "data.num_clients=2", "train.num_rounds=4000",
            "train.eval_every=500", "algorithm.num_local_steps=2"]
    first = subprocess.Popen([sys.executable, "-m", "pfl_dist.train", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists():
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        freeze(first.pid)  # the first run is held mid-run while the second is tried, on any load
        try:
            assert first.poll() is None, "the first run ended before the second was tried"
            second = run_main(train.main, args)
        finally:
            thaw(first.pid)
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert_one_line(second, code=2, contains=["in use by another pfl_dist process", f"(pid {first.pid})"])
    assert first.returncode == 0, stderr
    rounds = [line.split('"round": ')[1].split(",")[0] for line in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines()]
    assert rounds == [str(r) for r in range(0, 4001, 500)]


def test_a_second_sweep_into_a_locked_sweep_dir_is_refused(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1]})
    (tmp_path / "out").mkdir()
    lock = DirLock(tmp_path / "out", "sweep out_dir").acquire()
    try:
        before = snapshot(tmp_path / "out")
        outcome = run_main(sweep_cli.main, [str(path)])
    finally:
        lock.release()
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains="in use by another pfl_dist process")
    assert_unchanged(before, tmp_path / "out")
    assert_no_traceback(outcome)
    assert ERROR not in outcome.stdout
