"""A worker's ties to the world outside it: its parent process and its output pipes.

- `die_with_parent()`: a torchrun worker asks the kernel for SIGKILL when its parent (the agent)
  dies (prctl PR_SET_PDEATHSIG). A SIGKILLed torchrun then leaves no orphaned workers that would
  go on writing into the run dir a rerun uses. `parent_gone()` is the same check by polling,
  made at every round boundary in case the death signal was not delivered (it is tied to the
  thread that started the worker, and not every platform has prctl).
- `guard_output()`: stdout/stderr that become a broken pipe (`... | head -1`) are redirected to
  /dev/null instead of killing the run with BrokenPipeError; the run writes its results as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Any, TextIO

_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None


class ParentDied(Exception):
    """The torchrun agent that started this worker is gone: stop at once, write nothing more."""

    exit_code = 1


def die_with_parent() -> bool:
    """Under torchrun: SIGKILL this worker when its parent dies. -> whether prctl was applied."""
    global _parent_pid
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    _parent_pid = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        applied = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        applied = False
    if os.getppid() != _parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    return applied


def parent_gone() -> bool:
    """True when the parent recorded by `die_with_parent` has exited (we were re-parented)."""
    return _parent_pid is not None and os.getppid() != _parent_pid


def check_parent() -> None:
    if parent_gone():
        raise ParentDied(f"the torchrun agent (pid {_parent_pid}) that started this worker is gone")


class _PipeSafe:
    """A text stream that switches to /dev/null on the first BrokenPipeError."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def _divert(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # also what C code and child processes write to
            os.close(devnull)
        self._stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._divert()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._divert()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_output() -> None:
    """Make sys.stdout and sys.stderr survive a closed reader (idempotent)."""
    if not isinstance(sys.stdout, _PipeSafe):
        sys.stdout = _PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, _PipeSafe):
        sys.stderr = _PipeSafe(sys.stderr)
