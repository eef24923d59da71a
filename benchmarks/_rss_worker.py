"""`pfl_dist.train` as a torchrun worker that also records its peak RSS (scaling.py, population.py).

Writes {"rank": r, "max_rss_mb": x, "cpu_s": y, "startup_s": z} to $PFL_BENCH_RSS_DIR/rank<r>.json
after training (cpu_s: user + system CPU of the whole worker, start-up and data generation
included; startup_s: the seconds building the Trainer took: task data, the per-client store).
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import pfl_dist.train as train_module

startup: dict[str, float] = {}


class _TimedTrainer(train_module.Trainer):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        super().__init__(*args, **kwargs)
        startup["s"] = time.perf_counter() - started


train_module.Trainer = _TimedTrainer  # type: ignore[misc]
code = train_module.main(sys.argv[1:])
rank = int(os.environ.get("RANK", "0"))
usage = resource.getrusage(resource.RUSAGE_SELF)
out = Path(os.environ["PFL_BENCH_RSS_DIR"]) / f"rank{rank}.json"
out.write_text(json.dumps({"rank": rank, "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
                           "cpu_s": usage.ru_utime + usage.ru_stime, "startup_s": startup.get("s", float("nan"))}))
sys.exit(code)
