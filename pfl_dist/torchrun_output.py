"""torchrun's stderr as the launcher passes it on: a worker's own one-line error, not torchrun's
multi-page report after it, and the worker's exit code rather than torchrun's 1.

torchrun ends a failed job with a log line per failed worker (`failed (exitcode: 3)`) and a
ChildFailedError traceback with a summary table. When a worker has already said what went wrong
in pfl_dist's one line (`pfl_dist: error: ...`, exit 2 or 3; `pfl_dist: stopped ...`, exit 75),
that report is noise: it is held back and dropped, and the launcher exits with the worker's code,
as a direct run would (divergence exits 3). Any other failure passes through unchanged. The agent's
"Received 15 death signal" line after a forwarded SIGTERM is held the same way: it shows when
workers' lines follow it, and goes with the report when the launcher's own stop line ends the job.
"""

from __future__ import annotations

import re
from collections.abc import Callable

PFL_EXIT_CODES = (2, 3, 75)  # config/data/run dir, divergence, stopped (resumable)
_AGENT_LOG = re.compile(r"^[EW]\d{4} .*torch/distributed/elastic/.*(failed \(exitcode|closing signal|death signal)")
_FAILED_CODE = re.compile(r"failed \(exitcode: (-?\d+)\)")


class TorchrunOutput:
    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write
        self.held: list[str] = []
        self.in_report = False
        self.worker_codes: list[int] = []
        self.own_line = False

    def feed(self, line: str) -> None:
        if match := _FAILED_CODE.search(line):
            self.worker_codes.append(int(match.group(1)))
        if line.startswith("pfl_dist:"):
            self.own_line = True
        if self.in_report or line.startswith("Traceback (most recent call last):"):
            self.in_report = True  # torchrun's final report runs to the end of its output
            self.held.append(line)
            return
        if _AGENT_LOG.match(line):
            self.held.append(line)
            return
        self._flush()  # e.g. a restart after a failure: the held lines were not the end
        self.write(line)

    def _flush(self) -> None:
        for line in self.held:
            self.write(line)
        self.held = []

    def finish(self, code: int) -> int:
        """torchrun's exit code -> the launcher's; drops the held report when it is replaced."""
        worker = self.worker_codes[0] if self.worker_codes else None
        if code != 0 and self.own_line and worker in PFL_EXIT_CODES:
            self.held = []
            return int(worker)
        self._flush()
        return code
