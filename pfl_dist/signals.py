"""Catching SIGTERM/SIGINT for a while, and giving the previous handlers back (no torch here).

Both stop paths use it: a worker's `StopRequest` (pfl_dist/checkpoint.py) records the signal so
the round loop stops at an agreed round, and the launcher forwards it to torchrun's process group
(pfl_dist/launch.py). A subclass says what a signal does in `_handle`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any


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
