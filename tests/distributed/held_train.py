"""`pfl_dist.train` whose rank HOLD_RANK stops itself right after it wrote its shard of checkpoint
round HOLD_AFTER_CHECKPOINT (both from the environment):

    torchrun ... tests/distributed/held_train.py ARGS

The rank SIGSTOPs itself, so the job cannot get past that checkpoint: its other ranks write their
own shards of the round and then wait for the held rank at the next collective. A test that
SIGKILLs the held rank once the checkpoint is complete therefore kills the job at exactly that
round on any machine load; a kill sent after the checkpoint appeared on disk could otherwise
arrive after the job had already finished (tests/faults.py `crash_after_checkpoint`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from pfl_dist import checkpoint, train

HOLD_ROUND = int(os.environ["HOLD_AFTER_CHECKPOINT"])
HOLD_RANK = int(os.environ["HOLD_RANK"])
_save = checkpoint.Checkpointer.save


def save_then_hold(self: checkpoint.Checkpointer, round_num: int, state: dict[str, Any]) -> Path:
    folder = _save(self, round_num, state)
    if round_num == HOLD_ROUND and self.rank == HOLD_RANK:
        os.kill(os.getpid(), signal.SIGSTOP)
    return folder


checkpoint.Checkpointer.save = save_then_hold  # type: ignore[method-assign]
train.cli()
