"""Catching SIGTERM/SIGINT for a while, and giving the previous handlers back (no torch here).

Both stop paths use it: a worker's `StopRequest` (pfl_dist/checkpoint.py) records the signal so
the round loop stops at an agreed round, and the launcher forwards it to torchrun's process group
(pfl_dist/launch.py). A subclass says what a signal does in `_handle`.
"""

from __future__ import annotations

import signal
import threading
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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError
