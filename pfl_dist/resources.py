"""Memory a config needs, checked before anything is allocated.

A typo such as `data.dim=1000000000` used to reach `torch.empty` and fail there with a
traceback (or, just below the machine's size, get the process killed by the OOM killer). The
launcher (for the ranks it starts on this machine) and every rank (for itself) compare an
estimate of the rank's largest allocations with the memory available to it, and refuse with one
line holding both numbers.

The estimate counts only what certainly gets allocated, so it errs low and never refuses a
config that fits: the rank's data (features and labels of its clients) and its per-client models
(the local models, the copies a round trains and the new ones it returns: 3 x k x P values).
Available memory is /proc/meminfo's MemAvailable, or the cgroup (v2) limit minus current usage
when that is lower (a container's limit, not the host's free memory).
"""

from __future__ import annotations

import math
from pathlib import Path

from pfl_dist.config import Config
from pfl_dist.errors import ConfigError
from pfl_dist.outputs import format_bytes

_DTYPE_BYTES = {"float32": 4, "float64": 8}
_LABEL_BYTES = 8  # int64 labels
_MODEL_COPIES = 3  # local models, the copies trained in a round, the models the round returns
NUM_PIXELS = 28 * 28
NUM_IMAGE_CLASSES = 10
# Model sizes of the image models (checked against the models in tests/hostile/test_resources.py).
IMAGE_NUM_PARAMS = {"cnn": 421_642, "logreg": NUM_PIXELS * NUM_IMAGE_CLASSES + NUM_IMAGE_CLASSES,
                    "linear": NUM_PIXELS * NUM_IMAGE_CLASSES}
IMAGE_TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "mnist5k": 4_000}


def clients_per_rank(num_clients: int, world_size: int) -> int:
    return math.ceil(num_clients / world_size)  # client_block gives the first ranks one extra


def estimate_rank_bytes(cfg: Config, *, world_size: int) -> tuple[int, int]:
    """-> (data bytes, per-client model bytes) of the rank hosting the most clients."""
    data = cfg.data
    value = _DTYPE_BYTES[cfg.train.dtype]
    k = clients_per_rank(data.num_clients, world_size)
    if data.kind == "synthetic":
        n, d = data.samples_per_client, data.dim
        data_bytes = k * n * (d * value + _LABEL_BYTES)
        num_params = d * data.num_classes
    elif data.kind in IMAGE_TRAIN_SIZES:
        train = IMAGE_TRAIN_SIZES[data.kind]
        # as tasks/images.py's num_partitions: 'auto' keeps 200 images per client
        partitions = max(data.num_clients, train // 200) if data.num_partitions == "auto" else data.num_partitions
        per_client = max(1, train // max(1, partitions))
        data_bytes = k * per_client * (NUM_PIXELS * value + _LABEL_BYTES)
        kind = "logreg" if cfg.model.kind == "auto" else cfg.model.kind
        num_params = IMAGE_NUM_PARAMS[kind]
    else:  # a task without an estimate here is never refused
        return 0, 0
    return data_bytes, _MODEL_COPIES * k * num_params * value


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # 'max' = no limit


def available_bytes() -> int | None:
    """Memory this process can still allocate: MemAvailable, capped by a cgroup v2 limit; None
    when neither can be read (then nothing is refused)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    limit, used = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
    if limit is not None and used is not None:
        candidates.append(max(0, limit - used))
    return min(candidates) if candidates else None


def check_memory(cfg: Config, *, world_size: int, ranks_here: int = 1, available: int | None = None) -> None:
    """ConfigError when `ranks_here` ranks of this config cannot fit in the available memory."""
    data_bytes, model_bytes = estimate_rank_bytes(cfg, world_size=world_size)
    per_rank = data_bytes + model_bytes
    available = available_bytes() if available is None else available
    if available is None or per_rank * ranks_here <= available:
        return
    ranks = f"; {ranks_here} ranks here: {format_bytes(per_rank * ranks_here)}" if ranks_here > 1 else ""
    raise ConfigError(
        f"the config needs at least {format_bytes(per_rank)} of memory per rank (data {format_bytes(data_bytes)}"
        f" + client models {format_bytes(model_bytes)}{ranks}), but only {format_bytes(available)} is available; "
        "lower data.num_clients, data.samples_per_client or data.dim, or use more ranks or nodes")
