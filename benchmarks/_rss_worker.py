"""`pfl_dist.train` as a torchrun worker that also records its peak RSS (for scaling.py).

Writes {"rank": r, "max_rss_mb": x, "cpu_s": y} to $PFL_BENCH_RSS_DIR/rank<r>.json after training
(cpu_s: user + system CPU of the whole worker, start-up and data generation included).
"""

import json
import os
import resource
import sys
from pathlib import Path

from pfl_dist.train import main

code = main(sys.argv[1:])
rank = int(os.environ.get("RANK", "0"))
usage = resource.getrusage(resource.RUSAGE_SELF)
out = Path(os.environ["PFL_BENCH_RSS_DIR"]) / f"rank{rank}.json"
out.write_text(json.dumps({"rank": rank, "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
                           "cpu_s": usage.ru_utime + usage.ru_stime}))
sys.exit(code)
