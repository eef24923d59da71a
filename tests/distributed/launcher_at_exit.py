"""`python -m pfl_dist.launch ARGS`, held at its very end: a test opens the window between torchrun's
end and the launcher's own exit, in which docker-compose's SIGTERM can reach a launcher.

    python tests/distributed/launcher_at_exit.py AT_EXIT GO ARGS...

The launcher runs as usual (pfl_dist.launch's cli). When it is about to end, at the last Python
code it runs (os._exit, or the atexit handlers of an interpreter exit), it creates the file
AT_EXIT and waits until the file GO exists; then it exits as it would have. A test sends its
signal in between: whatever the launcher does with a signal at that point decides its exit code.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

at_exit, go = Path(sys.argv[1]), Path(sys.argv[2])
del sys.argv[1:3]
_real_exit = os._exit
_held = False


def hold() -> None:
    global _held
    if _held:
        return
    _held = True
    at_exit.touch()
    while not go.exists():  # signal handlers run between these sleeps
        time.sleep(0.01)


def _exit(code: int) -> None:
    hold()
    _real_exit(code)


os._exit = _exit  # type: ignore[assignment]
atexit.register(hold)

from pfl_dist.launch import cli  # noqa: E402 (after the hooks: the launcher reads os._exit at call time)

cli()
