"""`pfl_dist.run` inside a torchrun job, as a user's script calls it (tests/distributed/test_api.py).

`python api_worker.py OUT.json MODE OVERRIDES.json`; MODE is
- `torchrun`: pfl_dist forms the group from torchrun's environment (and destroys it), twice in a
  row, the second call with a second config. Rank 0 leaves each group 2 s after rank 1 (as a
  rank 0 slow to write its run dir would), so rank 1 forms the second group while the first is
  still alive on rank 0: the second group must not meet the first's store or keys;
- `caller`: the script forms the default group itself first (as Lightning or Ray Train do);
  pfl_dist joins it and leaves it alive: the script then all-reduces on it and destroys it.
Each rank writes OUT.json.rankN: what it got back, and whether the group was still there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import pfl_dist


def late(destroy: Callable[..., None]) -> Callable[..., None]:
    def destroy_late(*args: Any, **kwargs: Any) -> None:
        time.sleep(2)
        destroy(*args, **kwargs)
    return destroy_late


def main() -> None:
    out, mode, overrides_path = sys.argv[1:]
    overrides = json.loads(Path(overrides_path).read_text())
    report: dict[str, object] = {}
    if mode == "caller":
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
        results = [pfl_dist.run(None, overrides)]
        report["group_alive"] = dist.is_initialized()
        total = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(total)
        report["all_reduce"] = float(total)
        dist.destroy_process_group()
    else:
        if os.environ["RANK"] == "0":
            dist.destroy_process_group = late(dist.destroy_process_group)
        results = [pfl_dist.run(None, overrides), pfl_dist.run(None, {**overrides, "algorithm.local_lr": 0.02})]
        report["group_alive"] = dist.is_initialized()
    report["results"] = [{"run_dir": str(r.run_dir), "summary": r.summary, "metrics": r.metrics} for r in results]
    Path(f"{out}.rank{os.environ['RANK']}").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
