"""Run-directory outputs: TensorBoard events, metrics.jsonl, config.yaml, summary.json.

Only rank 0 writes (`RunLogger`); every other rank gets a `NullLogger` with the same methods.
TensorBoard layout (docs/ARCHITECTURE.md):
- step = round:  train/loss_*, eval/acc_*, eval/ATR, eval/ITR, comm/*_bytes, comm/*_bytes_cum,
  time/round_s;
- step = cumulative training wire bytes (int64, exact): tradeoff/<metric>_vs_bytes;
- step = cumulative FL-equivalent bytes (uplink + downlink): tradeoff_fl/<metric>_vs_fl_bytes;
- a custom-scalars page with the trade-off curves, and hparams written at the end.

Resuming from round t (pfl_dist/checkpoint.py) keeps exactly what was logged up to round t:
metrics.jsonl is cut back to rounds <= t, and the TensorBoard events to the first N the logger had
written when round t was checkpointed (N is saved in the checkpoint). A purge_step of t + 1 would
not do: TensorBoard purges by step across all tags, and the trade-off tags' steps are bytes, so
it would also drop their points of rounds <= t, and keep stale ones when the bytes are 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from pfl_dist.comm import Counters, Traffic
from pfl_dist.outputs import write_bytes_atomic, write_json_atomic

TRADEOFF_METRICS = ("acc_personal", "acc_global", "ITR", "ATR")
_RESULT_FILES = ("metrics.jsonl", "summary.json", "final")


def metric_tag(name: str) -> str:
    return f"train/{name}" if name.startswith("loss") else f"eval/{name}"


def first_events(paths: list[Path], num_events: int) -> list[Any]:
    """The first `num_events` summary events of the event files, in the order they were written
    (files ordered by their first event's time; a torn last record ends a file)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    # Raw records parsed as they are (EventFileLoader would migrate scalars to tensor summaries).
    loaded = [[Event.FromString(record) for record in RawEventFileLoader(str(path)).Load()] for path in paths]
    loaded.sort(key=lambda events: events[0].wall_time if events else 0.0)
    summaries = [event for events in loaded for event in events if event.HasField("summary")]
    return summaries[:num_events]


class NullLogger:
    """What non-logging ranks get: every call is a no-op."""

    num_events = 0  # TensorBoard events written, across resumed attempts (saved in checkpoints)

    def flush(self) -> None:
        pass

    def log_round(self, round_num: int, *, comm: dict[Traffic, Counters], round_s: float) -> None:
        pass

    def log_eval(self, record: dict[str, Any]) -> None:
        pass

    def log_lambda(self, choice: dict[str, float]) -> None:
        pass

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger(NullLogger):
    def __init__(self, run_dir: Path, config: dict[str, Any], *, start_round: int = 0, num_events: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported on rank 0 only: it is slow

        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_round == 0:
            self._clear_previous_results()
        write_bytes_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        old_files = sorted(run_dir.glob("events.out.tfevents.*"))
        kept = first_events(old_files, num_events) if start_round else []
        self.writer = SummaryWriter(str(run_dir))
        self.num_events = 0
        if start_round == 0:
            self._add_layout()
        else:
            self._truncate_metrics(start_round)
            self._copy_events(kept, old_files)

    def _copy_events(self, events: list[Any], old_files: list[Path]) -> None:
        """Into this writer's new file, then the old files go. Dying in between leaves duplicates
        only until the next resume, which keeps the first N events again (old files first)."""
        file_writer = self.writer.file_writer
        assert file_writer is not None
        for event in events:
            file_writer.add_event(event, walltime=event.wall_time)
        self.num_events = len(events)
        self.writer.flush()
        for path in old_files:
            path.unlink()

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.num_events += 1

    def flush(self) -> None:
        """Before a checkpoint: every event it counts must be on disk."""
        self.writer.flush()

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
        """Keep the records of rounds <= last_round; a torn last line is dropped."""
        records = []
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["round"] <= last_round:
                records.append(record)
        write_bytes_atomic(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records).encode())

    def _add_layout(self) -> None:
        layout = {
            "trade-off (training wire bytes)": {
                name: ["Multiline", [f"tradeoff/{name}_vs_bytes"]] for name in TRADEOFF_METRICS
            },
            "trade-off (FL-equivalent bytes)": {
                name: ["Multiline", [f"tradeoff_fl/{name}_vs_fl_bytes"]] for name in TRADEOFF_METRICS
            },
        }
        self.writer.add_custom_scalars(layout)
        self.num_events += 1

    def log_round(self, round_num: int, *, comm: dict[Traffic, Counters], round_s: float) -> None:
        train = comm[Traffic.TRAIN]
        for key in ("payload_bytes", "wire_bytes_model", "uplink_bytes", "downlink_bytes"):
            self._scalar(f"comm/{key}", getattr(train, key), round_num)
        if train.compression_ratio is not None:
            self._scalar("comm/compression_ratio", train.compression_ratio, round_num)
        self._scalar("time/round_s", round_s, round_num)

    def log_eval(self, record: dict[str, Any]) -> None:
        round_num = record["round"]
        for name, value in record["metrics"].items():
            self._scalar(metric_tag(name), value, round_num)
        for key, value in record["comm"].items():
            if value is not None:
                self._scalar(f"comm/{key}_cum", value, round_num)
        self._log_tradeoff(record)
        with open(self.metrics_path, "a") as f:  # reopened per record: a crash loses no line
            f.write(json.dumps(record) + "\n")

    def _log_tradeoff(self, record: dict[str, Any]) -> None:
        wire = int(record["comm"]["wire_bytes_model"])
        fl_bytes = int(record["comm"]["uplink_bytes"] + record["comm"]["downlink_bytes"])
        for name in TRADEOFF_METRICS:
            if name in record["metrics"]:
                self._scalar(f"tradeoff/{name}_vs_bytes", record["metrics"][name], wire)
                self._scalar(f"tradeoff_fl/{name}_vs_fl_bytes", record["metrics"][name], fl_bytes)

    def log_lambda(self, choice: dict[str, float]) -> None:
        """lam=auto: the estimated heterogeneity and the lambda the rule chose."""
        self._scalar("lambda/R_hat", choice["R_hat"], int(choice["round"]))
        self._scalar("lambda/lam", choice["lam"], int(choice["round"]))

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any]) -> None:
        metrics = {f"hparam/{k}": v for k, v in summary["final"].items()}
        metrics["hparam/train_wire_bytes"] = summary["comm"]["wire_bytes_model"]
        metrics["hparam/train_fl_bytes"] = summary["comm"]["uplink_bytes"] + summary["comm"]["downlink_bytes"]
        self.writer.add_hparams(hparams, metrics, run_name=".")
        write_json_atomic(self.run_dir / "summary.json", summary)

    def close(self) -> None:
        self.writer.close()
