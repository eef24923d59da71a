"""Resume under real torchrun: a corrupt newest checkpoint falls back to the previous one and the
run still ends bitwise equal; a different world size re-shards the clients by id."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults import (
    OVERRIDES,
    checkpoint_complete,
    compare_runs,
    crash_after_checkpoint,
    run_reference,
    start_torchrun,
)
from tests.helpers import read_summary

pytestmark = pytest.mark.distributed

NPROC = 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_reference(tmp_path_factory.mktemp("resume"), nproc=NPROC)


def crash_after(out: Path, name: str, round_num: int) -> list[int]:
    """A job without restarts whose rank 1 is SIGKILLed once round_num is checkpointed; ->
    the rounds with a complete checkpoint left behind."""
    crash_after_checkpoint(out, name, round_num, nproc=NPROC, overrides=OVERRIDES)
    rounds = sorted(int(p.name.split("_")[1]) for p in (out / name / "ckpt").iterdir())
    return [r for r in rounds if checkpoint_complete(out / name, r, NPROC)]


@pytest.fixture(scope="module")
def crashed(reference: Path) -> tuple[Path, list[int]]:
    """One crashed run (rank 1 SIGKILLed after round 8 is checkpointed) for the tests to copy:
    its run dir and its complete checkpoint rounds."""
    return reference.parent / "crashed", crash_after(reference.parent, "crashed", 8)


def copy_run(crashed: tuple[Path, list[int]], name: str) -> tuple[Path, list[int]]:
    """The crashed run under another name (resume ignores run.name), so each test resumes its own."""
    run_dir, complete = crashed
    shutil.copytree(run_dir, run_dir.parent / name)
    return run_dir.parent, complete


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(reference: Path,
                                                                  crashed: tuple[Path, list[int]]) -> None:
    # Prepare: a crashed run, then one flipped byte in rank 1's newest shard
    name = "corrupt"
    out, complete = copy_run(crashed, name)
    newest, previous = complete[-1], complete[-2]
    shard = out / name / "ckpt" / f"round_{newest:06d}" / "shard_00001_of_00002.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    # Execute
    job = start_torchrun(out, name, nproc=NPROC, max_restarts=0, overrides=OVERRIDES)
    assert job.wait(300) == 0, job.output()
    # Assert: rank 1 warned, every rank resumed from the previous round, same result
    warnings = [line for line in job.output().splitlines() if "is corrupt" in line]
    assert warnings == [f"pfl_dist: warning: rank 1: skipping checkpoint round {newest}: {shard} is corrupt "
                        "(sha256 mismatch)"]
    assert read_summary(out / name)["resumed_from"] == [previous]
    assert compare_runs(out / name, reference) == []


def test_a_different_world_size_reshards_by_client_id(reference: Path, crashed: tuple[Path, list[int]]) -> None:
    # Prepare: checkpoints written by 2 ranks
    name = "reshard"
    out, complete = copy_run(crashed, name)
    newest = complete[-1]
    # Execute: resume them with 4 ranks
    job = start_torchrun(out, name, nproc=4, max_restarts=0, overrides=OVERRIDES)
    assert job.wait(300) == 0, job.output()
    # Assert: same clients trained the same number of times; metrics equal up to summation order
    assert f"resume: round {newest}/30 from {out / name / 'ckpt'}, re-sharded from 2 ranks" in job.output()
    got, want = read_summary(out / name), read_summary(reference)
    assert got["world_size"] == 4 and got["resumed_from"] == [newest]
    assert got["participation"] == want["participation"]
    for key in ("uplink_bytes", "downlink_bytes", "num_collectives"):
        assert got["comm"][key] == want["comm"][key]
    for metric, value in want["final"].items():
        assert got["final"][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), metric
