"""TensorBoard's writer thread on a failing disk: the main thread reports it, the thread says nothing.

torch's SummaryWriter hands every event to a background thread (tensorboard's `_AsyncWriterThread`
in tensorboard/summary/writer/event_file_writer.py), which appends it to the event file. When that
append fails (a full disk: ENOSPC), the thread keeps the exception, which tensorboard raises in the
main thread at the writer's next add or flush, and then re-raises it, so `threading.excepthook`
prints the thread's traceback on stderr. The main thread ends the run with its own one line
(`pfl_dist.train.report_disk_error`), so that traceback is a second report of the same error, and
breaks the rule "a fault is one line, no traceback".

`WriterThreadErrors` is a `threading.excepthook` for as long as a `RunLogger` lives: an `OSError`
of the filesystem (`rundir.is_disk_error`) in a TensorBoard writer thread is kept instead of
printed, and `raise_first()` raises it in the main thread, which the logger calls where it
flushes, before it writes summary.json and when it closes. An error that tensorboard itself would
not raise again (one in `close()`'s last writes) is therefore not lost either. Every other
exception, in any thread, goes to the hook that was there before, unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from pfl_dist.rundir import is_disk_error

# The module of tensorboard's writer thread class (`_AsyncWriterThread`): matched by module, so a
# renamed private class still gets the default traceback rather than being silenced by mistake.
WRITER_THREAD_MODULE = "tensorboard.summary.writer.event_file_writer"


def is_writer_thread(thread: threading.Thread | None) -> bool:
    return thread is not None and type(thread).__module__ == WRITER_THREAD_MODULE


class WriterThreadErrors:
    """install() ... raise_first() ... uninstall(); see the module doc."""

    def __init__(self) -> None:
        self.errors: list[OSError] = []
        self._previous: Any = None

    def install(self) -> None:
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def uninstall(self) -> None:
        if threading.excepthook == self._hook:  # a later hook (pytest's) may already have replaced it
            threading.excepthook = self._previous

    def _hook(self, args: Any) -> None:
        error = args.exc_value
        if is_writer_thread(args.thread) and isinstance(error, OSError) and is_disk_error(error):
            self.errors.append(error)
            return
        (self._previous or threading.__excepthook__)(args)

    def raise_first(self) -> None:
        """Raise the first disk error a writer thread had (in the calling thread)."""
        if self.errors:
            raise self.errors[0]
