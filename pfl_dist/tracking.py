"""Run-directory outputs: TensorBoard events, metrics.jsonl, config.yaml, inputs.json, summary.json.

Only rank 0 writes (`RunLogger`); every other rank gets a `NullLogger` with the same methods.
TensorBoard layout (docs/ARCHITECTURE.md; the names and which counters exist:
pfl_dist/tensorboard_views.py):
- step = round: the metrics, named by where they are measured (`metric_tag`): train/<metric> on
  the clients' training samples, eval/<metric> on test splits and for ITR/ATR (distances to the
  true models); comm/<counter> and comm/<counter>_cum (only counters the run's traffic can make
  nonzero), time/round_s; time/compute_s, time/comm_s, time/wait_s (means over ranks) and
  time/wait_s_max, written at each evaluation for the rounds since the previous one
  (pfl_dist/timing.py);
- the trade-off curves, first on every page: 1_tradeoff_fl_bytes/<metric>/<method> (step =
  cumulative uplink + downlink bytes), 2_tradeoff_wire_bytes_W<W>/<metric>/<method> (step =
  cumulative training wire bytes, W > 1), 3_tradeoff_train_ms/<metric>/<method> (step =
  cumulative training wall-clock milliseconds on rank 0, evaluation excluded);
- a custom-scalars layout (written with the first evaluation, when the metrics are known) and the
  HParams experiment, written at the end.

Resuming from round t (pfl_dist/checkpoint.py) keeps exactly what was logged up to round t:
metrics.jsonl (its metrics keyed by the same tags) is cut back to rounds <= t, and the TensorBoard
events to the first N the logger had written when round t was checkpointed (N is saved in the
checkpoint). A purge_step of t + 1 would not do: TensorBoard purges by step across all tags, and
the trade-off tags' steps are bytes, so it would also drop their points of rounds <= t, and keep
stale ones when the bytes are 0.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import yaml

from pfl_dist.comm import Counters, Traffic
from pfl_dist.inputs import RECORD_FILE, Inputs
from pfl_dist.outputs import parse_record, write_bytes_atomic, write_json_atomic
from pfl_dist.tensorboard_views import (
    FL_BYTES_TAG,
    RunViews,
    hparams_metric_tags,
    hparams_summaries,
    layout_summary,
)
from pfl_dist.timing import RoundTimes
from pfl_dist.writer_thread import WriterThreadErrors

_RESULT_FILES = ("metrics.jsonl", "summary.json", "final")


PARAMETER_ERRORS = ("ITR", "ATR", "IOR", "AOR")  # distances of the models to the truth: no data split


def metric_tag(name: str, measured_on: str) -> str:
    """'train/loss_personal' for a metric measured on training samples, 'eval/acc_global' for one
    measured on a test split; the parameter errors are always eval/."""
    return f"eval/{name}" if name in PARAMETER_ERRORS else f"{measured_on}/{name}"


def read_records(path: Path) -> tuple[list[bytes | None], int]:
    """The records of a TFRecord (TensorBoard event) file in order, and how many were damaged.

    A record is `length (u64) | masked crc32c of length | payload | masked crc32c of payload`.
    A payload whose checksum fails is one damaged record (None in the list; its length is still
    trusted, since the length's own checksum passed). A length whose checksum fails is one damaged
    record too: the reader then searches forward for the next offset where a length and its
    payload both verify, so one flipped bit costs one record, not the rest of the file. A record
    cut short at the end of the file (a crash while writing it) is dropped without counting.
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = path.read_bytes()

    def record_at(pos: int) -> tuple[bool, int] | None:
        """-> (payload verifies, end) for a verified length at `pos`; None when there is none."""
        header = data[pos: pos + 8]
        if len(data) - pos < 12 or masked_crc32c(header) != struct.unpack("<I", data[pos + 8: pos + 12])[0]:
            return None
        end = pos + 12 + struct.unpack("<Q", header)[0] + 4
        if end > len(data):
            return None
        payload = data[pos + 12: end - 4]
        return masked_crc32c(payload) == struct.unpack("<I", data[end - 4: end])[0], end

    records: list[bytes | None] = []
    damaged, pos = 0, 0
    while pos < len(data):
        found = record_at(pos)
        if found is None:
            resync = next((p for p in range(pos + 1, len(data) - 12) if (r := record_at(p)) is not None and r[0]), None)
            if resync is None:  # nothing intact follows: a record cut short at the end, or damage
                damaged += int(len(data) - pos >= 12 and not _length_verifies(data, pos))
                break
            records.append(None)
            damaged += 1
            pos = resync
            continue
        intact, end = found
        records.append(data[pos + 12: end - 4] if intact else None)
        damaged += int(not intact)
        pos = end
    return records, damaged


def _length_verifies(data: bytes, pos: int) -> bool:
    """The length at `pos` matches its checksum (then a failing record there was cut short)."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    return bool(masked_crc32c(data[pos: pos + 8]) == struct.unpack("<I", data[pos + 8: pos + 12])[0])


def first_events(paths: list[Path], num_events: int) -> list[Any]:
    """The first `num_events` summary events of the event files, in the order they were written
    (files ordered by their first event's time; a torn last record ends a file).

    A damaged record is counted where it was (as one event) and dropped, so the events after it
    are kept and still line up with `num_events`; one warning line says how many were lost, and
    one says how many are missing when the files hold fewer than `num_events`.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    loaded: list[list[Any]] = []
    for path in paths:
        records, damaged = read_records(path)
        events: list[Any] = []
        for record in records:
            try:
                events.append(Event.FromString(record) if record is not None else None)
            except DecodeError:
                events.append(None)
                damaged += 1
        if damaged:
            print(f"pfl_dist: warning: {path}: {damaged} damaged TensorBoard record(s) dropped, "
                  f"{sum(e is not None for e in events)} intact ones kept", file=sys.stderr, flush=True)
        loaded.append(events)
    loaded.sort(key=lambda events: next((e.wall_time for e in events if e is not None), 0.0))
    summaries = [e for events in loaded for e in events if e is None or e.HasField("summary")]
    if len(summaries) < num_events:  # files deleted or cut short: say so, never drop events silently
        where = paths[0].parent if paths else "the run dir"
        print(f"pfl_dist: warning: {where}: {num_events - len(summaries)} of the {num_events} TensorBoard events "
              "logged up to the checkpoint are missing (event files deleted or cut short)", file=sys.stderr, flush=True)
    return [e for e in summaries[:num_events] if e is not None]


class NullLogger:
    """What non-logging ranks get: every call is a no-op."""

    num_events = 0  # TensorBoard events written, across resumed attempts (saved in checkpoints)

    def flush(self) -> None:
        pass

    def log_round(self, round_num: int, *, comm: dict[Traffic, Counters], round_s: float) -> None:
        pass

    def log_eval(self, record: dict[str, Any]) -> None:
        pass

    def log_round_times(self, times: list[RoundTimes]) -> None:
        pass

    def log_lambda(self, choice: dict[str, float]) -> None:
        pass

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    def __init__(self, run_dir: Path, config: dict[str, Any], *, world_size: int, start_round: int = 0,
                 num_events: int = 0, metrics_measured_on: str, inputs: Inputs | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported on rank 0 only: it is slow

        self.run_dir = run_dir
        self.measured_on = metrics_measured_on
        self.views = RunViews.of(config, world_size=world_size)
        self.layout_written = start_round > 0  # a resumed run's events hold it already
        self.metrics_path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_round == 0:
            self._clear_previous_results()
        write_bytes_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        if inputs:  # the contents of the user files it reads (pfl_dist/inputs.py), for an unfinished run too
            write_json_atomic(run_dir / RECORD_FILE, {key: record.to_dict() for key, record in inputs.items()})
        else:
            (run_dir / RECORD_FILE).unlink(missing_ok=True)
        old_files = sorted(run_dir.glob("events.out.tfevents.*"))
        kept = first_events(old_files, num_events) if start_round else []
        # A disk error in the writer's thread is raised here in the main thread, not printed there.
        self.thread_errors = WriterThreadErrors()
        self.thread_errors.install()
        try:
            self.writer = SummaryWriter(str(run_dir))
            self.num_events = 0
            if start_round:
                self._truncate_metrics(start_round)
                self._copy_events(kept, old_files)
        except BaseException:
            self.thread_errors.uninstall()
            raise

    def _copy_events(self, events: list[Any], old_files: list[Path]) -> None:
        """Into this writer's new file, then the old files go. Dying in between leaves duplicates
        only until the next resume, which keeps the first N events again (old files first)."""
        file_writer = self.writer.file_writer
        assert file_writer is not None
        for event in events:
            file_writer.add_event(event, walltime=event.wall_time)
        self.num_events = len(events)
        self.flush()  # the copies are on disk before the originals go
        for path in old_files:
            path.unlink()

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.num_events += 1

    def flush(self) -> None:
        """Before a checkpoint: every event it counts must be on disk."""
        self.writer.flush()
        self.thread_errors.raise_first()

    def _clear_previous_results(self) -> None:
        for name in _RESULT_FILES:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for events in self.run_dir.glob("events.out.tfevents.*"):
            events.unlink()

    def _truncate_metrics(self, last_round: int) -> None:
        """Keep the records of rounds <= last_round, as the bytes they were. A line that is not a
        record (a torn last line, `5`, damaged JSON) is dropped with one warning line."""
        kept, bad = [], 0
        lines = self.metrics_path.read_bytes().splitlines() if self.metrics_path.exists() else []
        for line in lines:
            record = parse_record(line)
            if record is None:
                bad += line.strip() != b""
            elif record["round"] <= last_round:
                kept.append(line + b"\n")
        if bad:
            print(f"pfl_dist: warning: {self.metrics_path}: {bad} malformed line(s) dropped", file=sys.stderr,
                  flush=True)
        write_bytes_atomic(self.metrics_path, b"".join(kept))

    def _summary(self, summary: Any) -> None:
        file_writer = self.writer.file_writer
        assert file_writer is not None
        file_writer.add_summary(summary)
        self.num_events += 1

    def log_round(self, round_num: int, *, comm: dict[Traffic, Counters], round_s: float) -> None:
        train = comm[Traffic.TRAIN]
        for key in self.views.round_counter_keys():
            self._scalar(f"comm/{key}", getattr(train, key), round_num)
        if self.views.compressed and train.compression_ratio is not None:
            self._scalar("comm/compression_ratio", train.compression_ratio, round_num)
        self._scalar("time/round_s", round_s, round_num)

    def log_eval(self, record: dict[str, Any]) -> None:
        if not self.layout_written:  # the first evaluation says which metrics the run has
            self._summary(layout_summary(self.views.layout(record["metrics"])))
            self.layout_written = True
        round_num = record["round"]
        tagged = {metric_tag(name, self.measured_on): value for name, value in record["metrics"].items()}
        for tag, value in tagged.items():
            self._scalar(tag, value, round_num)
        for key, value in record.get("personal", {}).items():  # the distribution over clients
            self._scalar(f"{self.measured_on}/clients/{key}", value, round_num)
        comm = record["comm"]
        for key in self.views.counter_keys():
            if comm.get(key) is not None:
                self._scalar(f"comm/{key}_cum", comm[key], round_num)
        self._scalar(FL_BYTES_TAG, comm["uplink_bytes"] + comm["downlink_bytes"], round_num)
        for tag, value, step in self.views.tradeoff_points(record):
            self._scalar(tag, value, step)
        with open(self.metrics_path, "a") as f:  # reopened per record: a crash loses no line
            f.write(json.dumps({**record, "metrics": tagged}, allow_nan=False) + "\n")

    def log_round_times(self, times: list[RoundTimes]) -> None:
        for t in times:
            for name in ("compute_s", "comm_s", "wait_s"):
                self._scalar(f"time/{name}", t.mean(name), t.round)
            self._scalar("time/wait_s_max", max(t.wait_s), t.round)

    def log_lambda(self, choice: dict[str, float]) -> None:
        """lam=auto: the estimated heterogeneity and the lambda the rule chose."""
        self._scalar("lambda/R_hat", choice["R_hat"], int(choice["round"]))
        self._scalar("lambda/lam", choice["lam"], int(choice["round"]))

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any]) -> None:
        """The HParams row: its metric columns are the last values of per-round tags."""
        metric_tags = hparams_metric_tags([metric_tag(name, self.measured_on) for name in summary["final"]])
        for hparams_summary in hparams_summaries(hparams, metric_tags):
            self._summary(hparams_summary)
        self.flush()  # summary.json marks the run complete: every event is on disk before it
        write_json_atomic(self.run_dir / "summary.json", summary)

    def close(self) -> None:
        try:
            self.writer.close()
            self.thread_errors.raise_first()  # e.g. the last events failed in close's own flush
        finally:
            self.thread_errors.uninstall()
