"""Helpers for what pfl_dist writes and prints that need no torch, so the sweep driver and the
plot CLI (which only read and write files) do not pay torch's import."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


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
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def format_bytes(num: float) -> str:
    """Decimal units, as network counters are usually read (1 KB = 1000 B)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(num) < 1000 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.3g} {unit}"
        num /= 1000
    raise AssertionError("unreachable")
