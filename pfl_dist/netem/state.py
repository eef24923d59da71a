"""State files: which process owns which emulated-cluster namespaces.

A cluster writes ``STATE_DIR/<suffix>.json`` (its owner's pid and that process's start time,
and the namespaces it is about to create) *before* it creates them, and deletes the file after it
removed them. A file whose owner is gone therefore names namespaces a killed run left behind,
and a ``pflnet-*`` namespace that no live owner's file names is a leftover too. The start time
guards against a recycled pid. STATE_DIR is on /run (tmpfs), which, like the namespaces, does not
survive a reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

NAMESPACE_PREFIX = "pflnet-"  # every namespace of an emulated cluster starts with this
PROBE_PREFIX = "pflprobe-"  # throwaway namespaces of the privilege probe
STATE_DIR = Path(os.environ.get("PFL_NETEM_STATE_DIR", "/run/pfl_dist-netem"))


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _path(suffix: str) -> Path:
    return STATE_DIR / f"{suffix}.json"


def write(suffix: str, namespaces: list[str], **extra: Any) -> Path:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    record = {"pid": pid, "start_time": process_start_time(pid), "namespaces": namespaces, **extra}
    path = _path(suffix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def update(suffix: str, **fields: Any) -> None:
    record = read(_path(suffix))
    if record is not None:
        record.update(fields)
        tmp = _path(suffix).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, _path(suffix))


def remove(suffix: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(suffix).unlink()


def read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def records() -> dict[Path, dict[str, Any]]:
    if not STATE_DIR.is_dir():
        return {}
    found = {path: read(path) for path in sorted(STATE_DIR.glob("*.json"))}
    return {path: record for path, record in found.items() if record is not None}


def is_alive(record: dict[str, Any]) -> bool:
    return process_start_time(int(record["pid"])) == record.get("start_time")


def live_namespaces() -> set[str]:
    return {n for record in records().values() if is_alive(record) for n in record["namespaces"]}


def dead_namespaces() -> list[str]:
    return [n for record in records().values() if not is_alive(record) for n in record["namespaces"]]


def remove_dead_files() -> None:
    for path, record in records().items():
        if not is_alive(record):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
