"""Errors a user can cause. Each one becomes a single line on stderr and a non-zero exit.

Anything a user can get wrong (config, data, world size) raises a subclass of `PflError`;
`assert` is kept for internal invariants only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class PflError(Exception):
    """Base class: the message is shown to the user as one line, without a traceback."""

    exit_code = 2


class ConfigError(PflError):
    """A config key is unknown, mistyped, out of range, or inconsistent with the world size."""


class DataError(PflError):
    """Data is missing, corrupt, or cannot be partitioned as the config asks."""


class DivergenceError(PflError):
    """A model became NaN/inf. Names the round, what diverged and the key to lower. Every rank
    raises the same one in the same round (pfl_dist/divergence.py), so only rank 0 prints it."""

    exit_code = 3


class ClientDivergenceError(DivergenceError):
    """A client of a method without a per-round collective (LocalTrain) diverged: only the rank
    that hosts it knows, and that rank prints it."""

    rank_specific = True


class NonFiniteMetricError(DivergenceError):
    """An evaluation metric is NaN/inf (the same on every rank). Results are JSON without
    NaN/Infinity, so such a round is never written."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown option, a missing or mistyped argument) are one line
    `<tool>: error: <message>` and exit 2, like every other bad input; argparse's own error prints
    the usage first. `tool`: the prefix of the tool's other error lines."""

    def __init__(self, *args: Any, tool: str = "pfl_dist", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool

    def error(self, message: str) -> NoReturn:
        print(f"{self.tool}: error: {message}", file=sys.stderr)
        sys.exit(2)
