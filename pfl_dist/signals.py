"""Catching SIGTERM/SIGINT for a while, and giving the previous handlers back (no torch here).

Both stop paths use it: a worker's `StopRequest` (pfl_dist/checkpoint.py) records the signal so
the round loop stops at an agreed round, and the launcher forwards it to torchrun's process group
(pfl_dist/launch.py). A subclass says what a signal does in `_handle`.

Who gets the signal: a terminal's Ctrl-C and `docker stop` signal the launcher alone, which passes
it on. A Slurm job step is different: `scancel`, `scancel --signal` and a time limit signal every
process of the step at once (slurmstepd signals the step's whole process tree under
proctrack/cgroup and proctrack/linuxproc, also processes in sessions of their own), so the launcher,
torchrun's agent and every worker each get it directly, and the agent then sends it to its
workers a second time. A job script says so with PFL_SIGNAL_EVERY_PROCESS=1
(launch/slurm.sbatch sets it): the launcher passes nothing on, and a worker takes a repeated
signal for the same stop instead of being interrupted by it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

from pfl_dist.errors import ConfigError

EVERY_PROCESS_ENV = "PFL_SIGNAL_EVERY_PROCESS"


def every_process_signalled(environ: Mapping[str, str] | None = None) -> bool:
    """PFL_SIGNAL_EVERY_PROCESS=1: the stop signal reaches every process of the job directly
    (unset or 0: only the launcher, which forwards it)."""
    value = (os.environ if environ is None else environ).get(EVERY_PROCESS_ENV, "")
    if value not in ("", "0", "1"):
        raise ConfigError(f"{EVERY_PROCESS_ENV} must be 1 (the scheduler signals every process of the job) "
                          f"or 0, got '{value}'")
    return value == "1"


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None  # the first signal caught
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """SIGTERM/SIGINT wait while the body runs: a handler runs before it (for a signal already
        caught) or after it, never in the middle of it (pthread_sigmask runs the handlers of
        signals caught so far before it returns)."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError
