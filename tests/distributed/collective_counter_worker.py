"""Runs training jobs under a TorchDispatchMode that sees every c10d op a rank issues.

    torchrun --nproc-per-node=2 tests/distributed/collective_counter_worker.py PLAN.json

PLAN.json: {"runs": [{"out_dir": DIR, "overrides": ["section.key=value", ...]}, ...]}. The runs
share one process group (one torchrun job, as the in-job sweep worker runs its points), each a
session of its own (pfl_dist.train.run_session, the one run path). Launched by
tests/distributed/conftest.py (`counted_runs`), whose runs test_engine_distributed.py,
test_codecs_distributed.py and test_algorithms_distributed.py read.

Each rank writes what the dispatcher saw during each run (op names and tensor bytes, in total and
per op) to DIR/dispatch_rank{R}.json, so the tests can compare it with the Communicator's ledger:
if anything bypassed the Communicator, or the ledger counted other bytes than c10d was handed, the
two would differ. What it saw outside the runs (forming and ending the process group) goes to
outside_rank{R}.json next to PLAN.json.

Bytes counted: an all-reduce's tensors; an all-gather's input (what this rank contributes; the
output, W times as large, is recorded separately as `gathered_bytes`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.runtime import env_rank, exit_process, init_runtime, shutdown_runtime
from pfl_dist.train import run_session


def _nbytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, (list, tuple)):
        return sum(_nbytes(t) for t in tensors)
    return 0


class CollectiveCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.payload_bytes = 0
        self.bytes_by_op: dict[str, int] = {}
        self.gathered_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace == "c10d":
            op = func._schema.name.split("::")[-1]
            self.ops.append(op)
            if op in ("_allgather_base_", "allgather_", "allgather_into_tensor_coalesced_"):
                size = _nbytes(args[1])  # (output, input, ...): this rank's contribution
                self.gathered_bytes += _nbytes(args[0])
            else:
                size = _nbytes(args[0]) if args and isinstance(args[0], (list, tuple)) else 0
            self.payload_bytes += size
            self.bytes_by_op[op] = self.bytes_by_op.get(op, 0) + size
        return func(*args, **(kwargs or {}))


def record(counter: CollectiveCounter) -> str:
    return json.dumps({"ops": counter.ops, "payload_bytes": counter.payload_bytes, "bytes_by_op": counter.bytes_by_op,
                       "gathered_bytes": counter.gathered_bytes})


def main() -> None:
    (plan_path,) = sys.argv[1:]
    plan = json.loads(Path(plan_path).read_text())
    configs = [(Path(entry["out_dir"]), load_config(None, [f"run.out_dir={entry['out_dir']}", *entry["overrides"]]))
               for entry in plan["runs"]]
    outside = CollectiveCounter()
    with outside:
        runtime = init_runtime(configs[0][1])
    stop = StopRequest()
    for out_dir, cfg in configs:
        with CollectiveCounter() as counter:
            run_session(cfg, runtime, stop)
        (out_dir / f"dispatch_rank{env_rank()}.json").write_text(record(counter))
    with outside:
        shutdown_runtime(runtime)
    (Path(plan_path).parent / f"outside_rank{env_rank()}.json").write_text(record(outside))


if __name__ == "__main__":
    main()
    # As pfl_dist.train ends: without the interpreter's teardown, where gloo's threads can abort
    # the process ("terminate called without an active exception", SIGABRT) after the run is done.
    exit_process(0)
