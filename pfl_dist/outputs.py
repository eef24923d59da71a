"""Helpers for what pfl_dist writes and prints that need no torch, so the sweep driver and the
plot CLI (which only read and write files) do not pay torch's import."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from pfl_dist.errors import ConfigError

# What a run writes below its run dir, by kind: checked by `check_result_paths` before any write.
RUN_DIR_FOLDERS = ("final", "ckpt", "store")  # store: the lazy store's row files (scratch)
RUN_DIR_FILES = ("metrics.jsonl", "summary.json", "config.yaml", "inputs.json", "sweep_point.json", "final/global.pt")


def check_result_paths(run_dir: Path) -> None:
    """ConfigError when the run dir, a folder or a file a run writes in it, or a checkpoint round
    folder is a symlink or the wrong kind of file. A run never writes or deletes through a link
    (`run_dir/final -> /elsewhere` would otherwise have /elsewhere/global.pt replaced)."""
    def refuse(path: Path, problem: str) -> ConfigError:
        return ConfigError(f"{path} is {problem}; a run writes only real folders and files below its run dir "
                           "(move it away or use another run.name)")

    entries = [(run_dir, True), *[(run_dir / n, True) for n in RUN_DIR_FOLDERS],
               *[(run_dir / n, False) for n in RUN_DIR_FILES]]
    ckpt = run_dir / "ckpt"
    if ckpt.is_dir() and not ckpt.is_symlink() and not run_dir.is_symlink():
        entries += [(path, True) for path in sorted(ckpt.glob("round_*"))]
    for path, folder in entries:
        if path.is_symlink():
            raise refuse(path, "a symlink")
        if folder and path.exists() and not path.is_dir():
            raise refuse(path, "a file, not a folder")
        if not folder and path.exists() and not path.is_file():
            raise refuse(path, "not a regular file")


PARAMETER_ERRORS = ("ITR", "ATR", "IOR", "AOR")  # distances of the models to the truth: no data split
SE_SUFFIX = "_se"  # a metric's standard error on an evaluation cohort (pfl_dist/evaluation.py): tagged as the metric
SPLITS = ("train", "eval")  # where a bare metric name is measured (a task's `metrics_measured_on`)
VAL_PREFIX = "val/"  # metrics on the clients' validation rows (data.val_fraction): named with their split


def metric_tag(name: str, measured_on: str) -> str:
    """'train/loss_personal' for a metric measured on training samples, 'eval/acc_global' for one
    measured on a test split; the parameter errors are always eval/; a metric a task names with its
    split already ('val/acc_personal', on the validation rows) stays as it is. The name of a metric
    in TensorBoard, metrics.jsonl, summary.json `final`, results.csv and the printed lines. A
    standard error sits beside its metric: 'eval/ITR_se', 'train/acc_personal_se'."""
    if "/" in name:
        return name
    return f"eval/{name}" if name.removesuffix(SE_SUFFIX) in PARAMETER_ERRORS else f"{measured_on}/{name}"


def metric_name(tag: str) -> str:
    """A metric's name from its tag: 'train/loss_global' -> 'loss_global'; a validation metric
    keeps its split ('val/acc_personal'), so it never shadows the test metric of the same name."""
    split, sep, name = tag.partition("/")
    return name if sep and split in SPLITS else tag


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """A metrics.jsonl line as its record; None when the line is not one (`5`, torn or damaged
    JSON, a record without an integer round or a metrics mapping)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or type(record.get("round")) is not int:
        return None
    return record if isinstance(record.get("metrics"), dict) else None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """temp file + fsync + os.replace: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


def format_bytes(num: float) -> str:
    """Decimal units, as network counters are usually read (1 KB = 1000 B)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(num) < 1000 or unit == "PB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.3g} {unit}"
        num /= 1000
    raise AssertionError("unreachable")
