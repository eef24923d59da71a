"""Runs one training job under torchrun, counting on each rank the user files it hashes
(pfl_dist/inputs.py `file_entry`) and the c10d ops it issues (collective_counter_worker's
TorchDispatchMode). Launched by tests/distributed/test_byo_data_distributed.py: only rank 0 may
read the files, and the digests it shares must travel through the Communicator (counted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pfl_dist import inputs
from pfl_dist.config import load_config
from pfl_dist.runtime import env_rank, exit_process
from pfl_dist.train import run
from tests.distributed.collective_counter_worker import CollectiveCounter

hashed: list[str] = []
_file_entry = inputs.file_entry


def counting_file_entry(path: Path, *, max_bytes: int | None = None) -> str:
    hashed.append(str(path))
    return _file_entry(path, max_bytes=max_bytes)


def main() -> None:
    out_dir, *overrides = sys.argv[1:]
    inputs.file_entry = counting_file_entry  # type: ignore[assignment]
    cfg = load_config(None, [f"run.out_dir={out_dir}", *overrides])
    with CollectiveCounter() as counter:
        run(cfg)
    record: dict[str, Any] = {"hashed": hashed, "ops": counter.ops, "payload_bytes": counter.payload_bytes,
                              "run_dir": str(cfg.run_dir)}
    (Path(out_dir) / f"inputs_rank{env_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
    # As pfl_dist.train ends: without the interpreter's teardown, where gloo's threads can abort
    # the process ("terminate called without an active exception", SIGABRT) after the run is done.
    exit_process(0)
