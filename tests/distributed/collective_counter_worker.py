"""Runs one training job under a TorchDispatchMode that sees every c10d op a rank issues.

Launched by tests/distributed/test_engine_distributed.py through torchrun. Each rank writes what
the dispatcher saw (op names and tensor bytes) so the test can compare it with the Communicator's
ledger: if anything bypassed the Communicator, the two would differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pfl_dist.config import load_config
from pfl_dist.runtime import env_rank
from pfl_dist.train import run


class CollectiveCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.payload_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace == "c10d":
            self.ops.append(func._schema.name.split("::")[-1])
            tensors = args[0] if args and isinstance(args[0], (list, tuple)) else []
            self.payload_bytes += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return func(*args, **(kwargs or {}))


def main() -> None:
    out_dir, *overrides = sys.argv[1:]
    cfg = load_config(None, [f"run.out_dir={out_dir}", *overrides])
    with CollectiveCounter() as counter:
        run(cfg)
    record = {"ops": counter.ops, "payload_bytes": counter.payload_bytes}
    (Path(out_dir) / f"dispatch_rank{env_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
