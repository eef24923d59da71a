"""Family 7, damaged files: a checkpoint that verifies but does not load, malformed metrics.jsonl
lines, flipped bits in TensorBoard event files, damaged summary.json / sweep_point.json /
results.csv in a sweep. The run, the sweep and the plot go on, warn in one line, and treat the
damaged record or point as missing: a resume falls back a round, a sweep reruns the point, a
plot leaves the record out.

Before the fix a checkpoint whose bytes matched its checksum but did not decode crashed every
later attempt with a traceback (the vote only checked the checksum); a metrics.jsonl line `5`
crashed every resume (TypeError); a truncated summary.json crashed the sweep's collect step and
the plot; and a flipped bit in an event file silently ended the file there on resume, deleting
every later intact event.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pfl_dist import plot, train
from pfl_dist.sweep import cli as sweep_cli
from pfl_dist.sweep.results import _warned
from pfl_dist.tensorboard_views import TIME_GROUP
from pfl_dist.tracking import read_records
from pfl_dist.train import Trainer
from tests.helpers import TINY, write_sweep
from tests.hostile.hostile import (
    STOPPED,
    TINY_RUN,
    WARNING,
    Outcome,
    assert_no_traceback,
    assert_one_line,
    assert_unchanged,
    finished_run,
    run_main,
    run_module,
    snapshot,
)

RESUMABLE = (*TINY_RUN, "train.num_rounds=4", "checkpoint.every=1")


def scalars(run_dir: Path) -> Counter[tuple[str, int, float]]:
    """Every TensorBoard point; wall-time tags (time/*, 3_tradeoff_train_ms/*) without their times."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    timed = ("time/", "timing/")
    return Counter((tag, 0 if tag.startswith(TIME_GROUP) else p.step,
                    0.0 if tag.startswith(timed) else p.value)
                   for tag in events.Tags()["scalars"] for p in events.Scalars(tag))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(tmp_path_factory.mktemp("reference"), "run", *RESUMABLE)


def stopped_run(out: Path) -> Path:
    """A run stopped (as by SIGTERM) during round 4 of 4: checkpoints of rounds 2 and 3."""
    original = Trainer.run_round

    def run_round(self: Trainer, idx: int) -> bool:
        if idx == 3:
            self.stop._handle(15, None)
        return original(self, idx)

    Trainer.run_round = run_round  # type: ignore[method-assign]
    try:
        outcome = run_main(train.main, [*RESUMABLE, f"run.out_dir={out}", "run.name=run"])
    finally:
        Trainer.run_round = original  # type: ignore[method-assign]
    assert_one_line(outcome, code=75, prefix=STOPPED, contains="after round 3/4")
    return out / "run"


def resume(run_dir: Path) -> Outcome:
    return run_main(train.main, [*RESUMABLE, f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"])


def assert_same_result(run_dir: Path, reference: Path) -> None:
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert got["global_model_sha256"] == want["global_model_sha256"]
    assert got["final"] == want["final"] and got["comm"] == want["comm"]
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3, 4]


# --- checkpoints -----------------------------------------------------------------------------------


def _rewrite_shard(run_dir: Path, round_num: int, data: bytes) -> None:
    """Replace a shard's bytes and update its marker, so the checksum matches the new bytes."""
    folder = run_dir / "ckpt" / f"round_{round_num:06d}"
    (folder / "shard_00000_of_00001.pt").write_bytes(data)
    marker = json.loads((folder / "shard_00000_of_00001.json").read_text())
    marker.update(num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "shard_00000_of_00001.json").write_text(json.dumps(marker))


def _garbage(run_dir: Path) -> None:
    _rewrite_shard(run_dir, 3, b"PK\x03\x04 not a torch file" * 10)


def _truncated_zip(run_dir: Path) -> None:
    data = (run_dir / "ckpt" / "round_000003" / "shard_00000_of_00001.pt").read_bytes()
    _rewrite_shard(run_dir, 3, data[: len(data) // 2])


def _wrong_round(run_dir: Path) -> None:
    _rewrite_shard(run_dir, 3, (run_dir / "ckpt" / "round_000002" / "shard_00000_of_00001.pt").read_bytes())


def _not_a_state(run_dir: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": 1, "round": 3}, buffer)
    _rewrite_shard(run_dir, 3, buffer.getvalue())


def _marker(run_dir: Path, text: str) -> None:
    (run_dir / "ckpt" / "round_000003" / "shard_00000_of_00001.json").write_text(text)


SHARDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "marker_a_number": (lambda run_dir: _marker(run_dir, "5"), "is unreadable"),
    "marker_truncated": (lambda run_dir: _marker(run_dir, '{"round": 3, "ra'), "is unreadable"),
    "garbage": (_garbage, "does not load"),
    "truncated_zip": (_truncated_zip, "does not load"),
    "round_2_bytes_as_round_3": (_wrong_round, "does not hold a round 3 shard"),
    "not_a_state": (_not_a_state, "does not hold a round 3 shard"),
}


@pytest.mark.parametrize(("damage", "message"), SHARDS.values(), ids=SHARDS.keys())
def test_a_checkpoint_that_verifies_but_does_not_load_falls_back_a_round(
        results: Path, reference: Path, damage: Callable[[Path], None], message: str) -> None:
    run_dir = stopped_run(results / "out")
    damage(run_dir)
    before = snapshot(results / "out" / "prev")
    outcome = resume(run_dir)
    assert_one_line(outcome, code=0, prefix=WARNING, contains=["skipping checkpoint round 3", message])
    assert "resume: round 2/4" in outcome.stdout
    assert_same_result(run_dir, reference)
    assert_unchanged(before, results / "out" / "prev")


# --- metrics.jsonl -----------------------------------------------------------------------------------


METRICS_LINES = {"number": b"5", "truncated_json": b'{"round": 1, "metr', "not_utf8": b"\xff\xfe\x00",
                 "list": b"[1, 2]", "round_not_int": b'{"round": "1", "metrics": {}}'}


@pytest.mark.parametrize("line", METRICS_LINES.values(), ids=METRICS_LINES.keys())
def test_a_malformed_metrics_line_is_dropped_on_resume(results: Path, reference: Path, line: bytes) -> None:
    run_dir = stopped_run(results / "out")
    path = run_dir / "metrics.jsonl"
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines[:2], line, *lines[2:]]) + b"\n")
    before = snapshot(results / "out" / "prev")
    outcome = resume(run_dir)
    assert_one_line(outcome, code=0, prefix=WARNING, contains="metrics.jsonl: 1 malformed line(s) dropped")
    assert_same_result(run_dir, reference)
    assert_unchanged(before, results / "out" / "prev")


# --- TensorBoard event files -------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _record_offsets(path: Path) -> list[int]:
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 12 + int.from_bytes(data[pos: pos + 8], "little") + 4
    return offsets


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_flipped_bit_in_an_event_file_costs_one_event(results: Path, reference: Path, where: str) -> None:
    run_dir = stopped_run(results / "out")
    events = sorted(run_dir.glob("events.out.tfevents.*"))[0]
    offsets = _record_offsets(events)
    assert len(offsets) > 40
    target = offsets[10]  # an early scalar: 30+ intact events follow it
    _flip(events, target + (20 if where == "payload" else 2))
    records, damaged = read_records(events)
    assert damaged == 1 and records[10] is None and len(records) == len(offsets)
    before = snapshot(results / "out" / "prev")
    outcome = resume(run_dir)
    assert_one_line(outcome, code=0, prefix=WARNING, contains=["1 damaged TensorBoard record(s) dropped",
                                                                f"{len(offsets) - 1} intact ones kept"])
    assert_same_result(run_dir, reference)
    got, want = scalars(run_dir), scalars(reference)
    assert not got - want and sum((want - got).values()) == 1  # exactly the damaged event is missing
    assert_unchanged(before, results / "out" / "prev")


def test_missing_event_files_are_named_not_dropped_silently(results: Path) -> None:
    run_dir = stopped_run(results / "out")
    for events in run_dir.glob("events.out.tfevents.*"):
        events.write_bytes(b"")  # emptied, as by a crash of the file system
    before = snapshot(results / "out" / "prev")
    outcome = resume(run_dir)
    assert_one_line(outcome, code=0, prefix=WARNING, contains=["TensorBoard events logged up to the checkpoint",
                                                                "are missing"])
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == [3]
    assert_unchanged(before, results / "out" / "prev")


def test_a_torn_last_event_record_is_not_damage(tmp_path: Path) -> None:
    run_dir = finished_run(tmp_path, "run")
    events = sorted(run_dir.glob("events.out.tfevents.*"))[0]
    data = events.read_bytes()
    records, damaged = read_records(events)
    events.write_bytes(data[:-5])  # a crash while the last record was written
    torn, torn_damaged = read_records(events)
    assert damaged == torn_damaged == 0 and torn == records[:-1]


# --- sweeps and plots ------------------------------------------------------------------------------


POINTS = ("R=0.1__seed=0", "R=1.0__seed=0")


@pytest.fixture
def sweep_dir(results: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A sweep file with two points, both finished (run in-process), and its results.csv."""
    out = results / "sweep"
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=") for a in TINY_RUN)}
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(out), overrides=overrides, grid={"data.R": [0.1, 1.0]})
    for name, r in zip(POINTS, ("0.1", "1.0"), strict=True):
        finished_run(out, name, f"data.R={r}")
        (out / name / "sweep_point.json").write_text(json.dumps({"variant": None, "point_wall_s": 1.0}))
    outcome = run_main(sweep_cli.main, [str(sweep), "--no-plot"])
    assert outcome.code == 0, outcome.describe()
    _warned.clear()  # warnings are once per process and file: each case starts afresh
    return sweep, out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


SWEEP_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "summary_truncated": (lambda out: _truncate(out / POINTS[1] / "summary.json"), "summary.json is damaged"),
    "summary_a_list": (lambda out: (out / POINTS[1] / "summary.json").write_text("[]"), "summary.json is damaged"),
    "summary_empty": (lambda out: (out / POINTS[1] / "summary.json").write_text(""), "summary.json is damaged"),
}


@pytest.mark.parametrize(("damage", "message"), SWEEP_DAMAGE.values(), ids=SWEEP_DAMAGE.keys())
def test_a_sweep_treats_a_damaged_summary_as_a_point_to_rerun(sweep_dir: tuple[Path, Path],
                                                              damage: Callable[[Path], None], message: str) -> None:
    sweep, out = sweep_dir
    damage(out)
    before = snapshot(out / POINTS[0])
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=0, prefix=WARNING, contains=[POINTS[1], message])
    assert f"done    {POINTS[0]}" in outcome.stdout and f"pending {POINTS[1]}" in outcome.stdout
    # The collect step of an invocation that runs nothing new keeps the intact point's row.
    _warned.clear()  # a new invocation (a new process) warns again
    outcome = run_main(sweep_cli.main, [str(sweep), "--only", "^none$", "--no-plot"])
    assert_one_line(outcome, code=0, prefix=WARNING, contains=message)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(POINTS[0])
    assert_unchanged(before, out / POINTS[0])


PLOT_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "summary_truncated": (lambda out: _truncate(out / POINTS[1] / "summary.json"), "summary.json is damaged"),
    "metrics_line_5": (lambda out: (out / POINTS[1] / "metrics.jsonl").write_text(
        (out / POINTS[1] / "metrics.jsonl").read_text() + "5\n"), "metrics.jsonl has 1 malformed line(s)"),
    "metrics_truncated": (lambda out: _truncate(out / POINTS[1] / "metrics.jsonl"), "malformed line(s)"),
    "results_csv_damaged": (lambda out: (out / "results.csv").write_bytes(b"\x00garbage\n1,2\n"),
                            "results.csv is damaged"),
}


@pytest.mark.parametrize(("damage", "message"), PLOT_DAMAGE.values(), ids=PLOT_DAMAGE.keys())
def test_the_plot_goes_on_past_damaged_files(sweep_dir: tuple[Path, Path], tmp_path: Path,
                                             damage: Callable[[Path], None], message: str) -> None:
    _, out = sweep_dir
    damage(out)
    before = snapshot(out)
    figures = tmp_path / "figures"
    outcome = run_main(plot.main, [str(out), "--out", str(figures)])
    assert_one_line(outcome, code=0, prefix=WARNING, contains=message)
    assert list(figures.glob("*.png"))
    assert_unchanged(before, out)


def test_a_damaged_sweep_point_file_leaves_its_columns_empty(sweep_dir: tuple[Path, Path]) -> None:
    sweep, out = sweep_dir
    _truncate(out / POINTS[1] / "sweep_point.json")
    before = snapshot(out / POINTS[1])
    outcome = run_main(sweep_cli.main, [str(sweep), "--no-plot"])
    assert_one_line(outcome, code=0, prefix=WARNING, contains="sweep_point.json is damaged")
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].startswith(POINTS[1])
    assert_unchanged(before, out / POINTS[1])


def test_rerunning_a_point_with_a_damaged_summary_trains_it_again(results: Path, reference: Path) -> None:
    """What the sweep does with a pending point: the run in it completes, its summary is whole."""
    run_dir = finished_run(results / "out", "run", *RESUMABLE)
    _truncate(run_dir / "summary.json")
    before = snapshot(results / "out" / "prev")
    outcome = resume(run_dir)
    assert outcome.code == 0 and not outcome.stderr_lines, outcome.describe()
    assert_no_traceback(outcome)
    assert "summary.json is unreadable; the run counts as incomplete" in outcome.stdout  # pfl_dist/rundir.py
    assert_same_result(run_dir, reference)
    assert_unchanged(before, results / "out" / "prev")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sweep_reruns_a_point_whose_summary_is_damaged_end_to_end(tmp_path: Path) -> None:
    """Real torchrun jobs: the damaged point is trained again, the intact one is left alone."""
    sweep = write_sweep(tmp_path / "s.yaml", overrides=TINY, grid={"data.R": [0.1, 1.0]},
                        launch={"nproc_per_node": 2, "mode": "in_job"})
    out = tmp_path / "out"
    first = run_module("pfl_dist.sweep", str(sweep), "--no-plot", timeout=600)
    assert first.code == 0, first.describe()
    intact, damaged = out / POINTS[0], out / POINTS[1]
    want = json.loads((damaged / "summary.json").read_text())["global_model_sha256"]
    _truncate(damaged / "summary.json")
    before = snapshot(intact)
    outcome = run_module("pfl_dist.sweep", str(sweep), "--no-plot", timeout=600)
    assert_one_line(outcome, code=0, prefix=WARNING, contains=[POINTS[1], "summary.json is damaged"])
    assert "1 already complete, 1 to run" in outcome.stdout
    assert json.loads((damaged / "summary.json").read_text())["global_model_sha256"] == want
    assert len((out / "results.csv").read_text().splitlines()) == 3
    assert_unchanged(before, intact)
