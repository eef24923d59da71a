"""Run-directory outputs: TensorBoard events, metrics.jsonl, config.yaml, summary.json.

Only rank 0 writes (`RunLogger`); every other rank gets a `NullLogger` with the same methods.
TensorBoard layout (shared/DESIGN.md):
- step = round:  train/loss_*, eval/acc_*, eval/ATR, eval/ITR, comm/*_bytes, comm/*_bytes_cum,
  time/round_s;
- step = cumulative training wire bytes (int64, exact): tradeoff/<metric>_vs_bytes;
- step = cumulative FL-equivalent bytes (uplink + downlink): tradeoff_fl/<metric>_vs_fl_bytes;
- a custom-scalars page with the trade-off curves, and hparams written at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pfl_dist.comm import Counters, Traffic

TRADEOFF_METRICS = ("acc_personal", "acc_global", "ITR", "ATR")
_RESULT_FILES = ("metrics.jsonl", "summary.json", "final")


def metric_tag(name: str) -> str:
    return f"train/{name}" if name.startswith("loss") else f"eval/{name}"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """temp file + fsync + os.replace: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class NullLogger:
    """What non-logging ranks get: every call is a no-op."""

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
    def __init__(self, run_dir: Path, config: dict[str, Any], *, start_round: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported on rank 0 only: it is slow

        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_round == 0:
            self._clear_previous_results()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # purge_step drops points a crashed attempt wrote after the round we resume from.
        self.writer = SummaryWriter(str(run_dir), purge_step=start_round if start_round else None)
        self.metrics_path = run_dir / "metrics.jsonl"
        if start_round == 0:
            self._add_layout()

    def _clear_previous_results(self) -> None:
        for name in _RESULT_FILES:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for events in self.run_dir.glob("events.out.tfevents.*"):
            events.unlink()

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

    def log_round(self, round_num: int, *, comm: dict[Traffic, Counters], round_s: float) -> None:
        train = comm[Traffic.TRAIN]
        for key in ("payload_bytes", "wire_bytes_model", "uplink_bytes", "downlink_bytes"):
            self.writer.add_scalar(f"comm/{key}", getattr(train, key), round_num)
        self.writer.add_scalar("time/round_s", round_s, round_num)

    def log_eval(self, record: dict[str, Any]) -> None:
        round_num = record["round"]
        for name, value in record["metrics"].items():
            self.writer.add_scalar(metric_tag(name), value, round_num)
        for key, value in record["comm"].items():
            if value is not None:
                self.writer.add_scalar(f"comm/{key}_cum", value, round_num)
        wire = int(record["comm"]["wire_bytes_model"])
        fl_bytes = int(record["comm"]["uplink_bytes"] + record["comm"]["downlink_bytes"])
        for name in TRADEOFF_METRICS:
            if name in record["metrics"]:
                self.writer.add_scalar(f"tradeoff/{name}_vs_bytes", record["metrics"][name], wire)
                self.writer.add_scalar(f"tradeoff_fl/{name}_vs_fl_bytes", record["metrics"][name], fl_bytes)
        with open(self.metrics_path, "a") as f:  # reopened per record: a crash loses no line
            f.write(json.dumps(record) + "\n")

    def log_lambda(self, choice: dict[str, float]) -> None:
        """lam=auto: the estimated heterogeneity and the lambda the rule chose."""
        self.writer.add_scalar("lambda/R_hat", choice["R_hat"], int(choice["round"]))
        self.writer.add_scalar("lambda/lam", choice["lam"], int(choice["round"]))

    def finish(self, summary: dict[str, Any], hparams: dict[str, Any]) -> None:
        metrics = {f"hparam/{k}": v for k, v in summary["final"].items()}
        metrics["hparam/train_wire_bytes"] = summary["comm"]["wire_bytes_model"]
        metrics["hparam/train_fl_bytes"] = summary["comm"]["uplink_bytes"] + summary["comm"]["downlink_bytes"]
        self.writer.add_hparams(hparams, metrics, run_name=".")
        write_json_atomic(self.run_dir / "summary.json", summary)

    def close(self) -> None:
        self.writer.close()
