"""Memory a config needs, checked before anything is allocated.

A typo such as `data.dim=1000000000` used to reach `torch.empty` and fail there with a
traceback (or, just below the machine's size, get the process killed by the OOM killer). The
launcher (for the ranks it starts on this machine) and every rank (for itself) compare an
estimate of the rank's largest allocations with the memory available to it, and refuse with one
line holding both numbers.

The estimate counts only what certainly gets allocated, so it errs low and never refuses a
config that fits: the rank's client data (features and labels, padded to its largest client as
the tasks store them) and its per-client models and state: 2 x t x P values for a round's working
copies, t the rank's share of the clients one round trains (the copies it trains and the new ones
it returns, `WORKING_COPIES`), plus the store of the rows kept between rounds: dense, kept x k x P
values for the rank's k clients; lazy, at most its cache's bound (`store.cache_mb`; rows never
written cost nothing, spilled rows are on disk). P is the model's size for the dataset's input
shape and classes (the model registry's `memory_bytes`, pfl_dist/models/__init__.py; a plug-in
model's P is counted on the module its factory builds); `kept` the per-client rows of the model's
size kept between rounds, which each registry entry declares: the algorithm's
(`MethodInfo.kept_models`: FedCLUP's local model 1, SCAFFOLD's y_i and c_i 2, Per-FedAvg 0) and
the codec's error-feedback residual (1 where `feedback_rule` keeps one, pfl_dist/exchange/spec.py:
a residual has the wire's size, so SCAFFOLD's 2-model one counts as 1, and FedRep's and FedPer's,
the body's only, not at all).
store.backend=auto chooses the back-end from the same numbers (`store_backend`): dense while the
dense store takes at most DENSE_STORE_SHARE (a quarter) of the memory available to the rank,
which leaves the data, the working copies and an evaluation room; lazy above. Each rank chooses
for itself (the Trainer logs rank 0's choice); with the available memory unknown, dense.
Per data.kind, from what is known without loading the data, by the function its registry entry
names (`TaskEntry.memory`, pfl_dist/tasks/__init__.py):
- synthetic: exact, k x n x (d values + a label), k the clients that hold data at once: every
  client of the rank, or with lazy data the cache's bound (pfl_dist/data/lazy.py
  `resident_clients`: a round's sampled clients plus the evaluation cohort);
- fashion_mnist, mnist, mnist5k: the dataset's standard training size, cut as the partitioner
  cuts it (classes: N // (partitions x c) images of each of c classes; iid: N // partitions;
  dirichlet: ragged, so one image); with lazy data for `resident_clients` only;
- cifar10: the same, with N read from the training batches' pickle openings (their array shape;
  pfl_dist/data/cifar.py) and 3 x 32 x 32 samples;
- leaf: every chosen writer has at least data.min_samples_per_client training samples of 784
  values (its real count would need the JSON parsed); 62 classes;
- client_files: each client's sample count from its .npz header, or its CSV's rows counted by
  the CSV reader's own function (`csv_rows`, pfl_dist/data/client_files.py: the same blocks and
  the same size bound, so a file the reader refuses is refused here, before anything is
  allocated); the padded tensors, plus the arrays as read (float64) and the feature scales, which
  the task keeps; with lazy data the padded tensors and scales of `resident_clients` only.
Available memory is /proc/meminfo's MemAvailable, or the cgroup (v2) limit minus current usage
when that is lower (a container's limit, not the host's free memory), for all the ranks on this
machine; and one rank must fit in the address space `ulimit -v` (RLIMIT_AS) leaves a process,
the limit minus the checking process's VmSize.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pfl_dist.config import Config
from pfl_dist.data import cifar, leaf
from pfl_dist.data.client_files import FORMATS, client_file, samples_at_least
from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE
from pfl_dist.data.lazy import lazy_data, resident_clients
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.spec import feedback_rule, parse_codec
from pfl_dist.methods import method_info
from pfl_dist.models import WORKING_COPIES
from pfl_dist.outputs import format_bytes
from pfl_dist.sampling import client_block, num_sampled
from pfl_dist.tasks import entry_function, task_entry, task_model

_DTYPE_BYTES = {"float32": 4, "float64": 8}
DENSE_STORE_SHARE = 0.25  # store.backend=auto: dense while its rows take at most this share of a rank's memory
_LABEL_BYTES = 8  # int64 labels
PAPER_CLIENT_SIZE = 200  # tasks/images.py: num_partitions 'auto' keeps 200 images per client
IMAGE_TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "mnist5k": 4_000}


def _image_samples_per_client(cfg: Config, num_train: int) -> int:
    """The fewest samples the largest client of a rank can hold (tasks/images.py's partition)."""
    data = cfg.data
    if data.kind == "leaf":
        return data.min_samples_per_client
    partitions = max(data.num_clients, num_train // PAPER_CLIENT_SIZE) if data.num_partitions == "auto" \
        else data.num_partitions
    if data.partition == "classes":
        return max(1, num_train // (partitions * data.classes_per_client) * data.classes_per_client)
    return max(1, num_train // partitions) if data.partition == "iid" else 1


def _image_kind(cfg: Config) -> tuple[int, tuple[int, int, int], int] | None:
    """(training images, input shape, classes) of an image kind; None for the others."""
    kind, data_dir = cfg.data.kind, cfg.data.data_dir
    if kind in IMAGE_TRAIN_SIZES:
        return IMAGE_TRAIN_SIZES[kind], MNIST_INPUT_SHAPE, MNIST_CLASSES
    if kind == "cifar10":
        num_train = sum(cifar.batch_images_at_least(Path(data_dir) / name) for name in cifar.TRAIN_BATCHES) \
            if data_dir is not None else 0
        return num_train, cifar.INPUT_SHAPE, cifar.NUM_CLASSES
    if kind == "leaf":
        return 0, leaf.INPUT_SHAPE, leaf.NUM_CLASSES
    return None


def kept_copies(cfg: Config) -> int:
    """The rows of the model's size the store keeps per client between rounds: the algorithm's
    kept rows and the codec's residual where the (algorithm, codec) pair keeps one."""
    info = method_info(cfg.algorithm.name)
    residual = feedback_rule(error_feedback=parse_codec(cfg.comm.codec).entry.error_feedback, message=info.message)
    # a method that sends only the body (FedRep, FedPer) keeps a residual of the body's size, less
    # than P and not known without the model: not counted, so the estimate stays a lower bound
    return info.kept_models + int(residual and not info.parameter_groups)


def trained_clients(cfg: Config, clients: int) -> int:
    """A rank of `clients` clients' share of the clients one round trains (rounded down: the
    estimate errs low)."""
    data = cfg.data
    return min(clients, num_sampled(data.num_clients, cfg.algorithm.sample_fraction) * clients // data.num_clients)


def dense_store_bytes(cfg: Config, *, clients: int, num_params: int) -> int:
    """The dense store's rows of the model's size for a rank of `clients` clients."""
    return kept_copies(cfg) * clients * num_params * _DTYPE_BYTES[cfg.train.dtype]


def store_backend(cfg: Config, *, dense_bytes: int, available: int | None) -> tuple[str, str]:
    """(store.backend with auto resolved, why) for a rank whose dense store would take
    `dense_bytes`, with `available` bytes of memory (None: unknown)."""
    backend = cfg.store.backend
    if backend != "auto":
        return backend, f"store.backend={backend}"
    if available is None:
        return "dense", "store.backend=auto: the available memory is unknown"
    share = f"{format_bytes(dense_bytes)} of the {format_bytes(available)} available to a rank"
    if dense_bytes <= DENSE_STORE_SHARE * available:
        return "dense", f"store.backend=auto: the dense rows take {share} (dense up to a quarter)"
    return "lazy", f"store.backend=auto: the dense rows would take {share} (dense up to a quarter)"


Shape = tuple[int, ...]
Estimate = tuple[int, Shape, int]  # (data bytes of a block's clients, one sample's input shape, classes)


def synthetic_data_bytes(cfg: Config, blocks: Sequence[range], value: int) -> list[Estimate]:
    """Exact: k x n x (d values + a label) per block, k the block's clients that hold data at once
    (all of them, or with lazy data the cache's bound: `resident_clients`)."""
    data = cfg.data
    return [(resident_clients(cfg, len(block)) * data.samples_per_client * (data.dim * value + _LABEL_BYTES),
             (data.dim,), data.num_classes) for block in blocks]


def image_data_bytes(cfg: Config, blocks: Sequence[range], value: int) -> list[Estimate]:
    """The fewest images the largest client of each block can hold, cut as the partitioner cuts."""
    image = _image_kind(cfg)
    assert image is not None, cfg.data.kind
    num_train, input_shape, num_classes = image
    per_client = _image_samples_per_client(cfg, num_train) * (math.prod(input_shape) * value + _LABEL_BYTES)
    return [(resident_clients(cfg, len(block)) * per_client, input_shape, num_classes) for block in blocks]


def client_files_data_bytes(cfg: Config, blocks: Sequence[range], value: int) -> list[Estimate]:
    """Each client's sample count from its file's header or rows: the padded tensors, the arrays as
    read (float64) and the feature scales, which the task keeps; with lazy data the padded tensors
    and scales of the clients that hold data at once (`resident_clients`), no arrays kept as read."""
    data, shape = cfg.data, (cfg.data.dim,)
    if data.data_dir is None:
        return [(0, shape, data.num_classes) for _ in blocks]
    estimates: list[Estimate] = []
    for block in blocks:
        counts = []
        for client in block:
            paths = [client_file(Path(data.data_dir), client, fmt) for fmt in FORMATS]
            counts.append(max((samples_at_least(path, dim=data.dim) for path in paths if path.is_file()), default=0))
        resident = resident_clients(cfg, len(block))
        padded = resident * max(counts, default=0) * (data.dim * value + _LABEL_BYTES)
        # ClientArrays, float64 features and int64 labels: kept eagerly, dropped once padded when lazy
        as_read = 0 if lazy_data(cfg) else sum(counts) * (data.dim * 8 + _LABEL_BYTES)
        scales = resident * data.dim * 8  # the per-client feature scales (float64)
        estimates.append((padded + as_read + scales, shape, data.num_classes))
    return estimates


def estimate_rank_bytes(cfg: Config, *, world_size: int, rank: int | None = None,
                        available: int | None = None) -> tuple[int, int]:
    """-> (data bytes, per-client model and state bytes) of `rank`, or of the rank that needs the
    most: the data kind's registry entry estimates its data (`TaskEntry.memory`), the model's its
    size, the algorithm's and the codec's the kept rows (`kept_copies`), held as the back-end
    `store_backend` chooses with `available` bytes per rank."""
    entry = task_entry(cfg.data.kind)
    if entry.memory is None:
        return 0, 0  # a kind without an estimate (a plug-in dataset) is never refused
    model, value = task_model(cfg), _DTYPE_BYTES[cfg.train.dtype]
    blocks = [client_block(r, world_size=world_size, num_clients=cfg.data.num_clients)
              for r in (range(world_size) if rank is None else [rank])]
    needs = []
    for block, (data_bytes, shape, classes) in zip(blocks, entry_function(entry.memory)(cfg, blocks, value),
                                                   strict=True):
        working = model.memory_bytes(shape, classes, clients=trained_clients(cfg, len(block)), value_bytes=value,
                                     copies=WORKING_COPIES)
        dense = model.memory_bytes(shape, classes, clients=len(block), value_bytes=value, copies=kept_copies(cfg))
        lazy = store_backend(cfg, dense_bytes=dense, available=available)[0] == "lazy"
        needs.append((data_bytes, working + (min(dense, cache_bytes(cfg)) if lazy else dense)))
    return max(needs, key=sum)


def cache_bytes(cfg: Config) -> int:
    """The lazy store's RAM cache bound (store.cache_mb) in bytes."""
    return int(cfg.store.cache_mb * 2**20)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # 'max' = no limit


def address_space_left() -> int | None:
    """RLIMIT_AS (`ulimit -v`) minus this process's mapped address space (VmSize); None without
    a limit. Every allocation maps address space, so past this one fails whatever RAM is free."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        mapped = int(fields["VmSize"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        mapped = 0
    return max(0, limit - mapped)


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


def check_memory(cfg: Config, *, world_size: int, ranks_here: int = 1, rank: int | None = None,
                 available: int | None = None) -> None:
    """ConfigError when `ranks_here` ranks of this config cannot fit in the available memory
    (`rank`: a rank checking itself; None: the rank that needs the most), or one rank cannot fit
    in the address space `ulimit -v` leaves a process (each rank is a process of its own)."""
    available = available_bytes() if available is None else available
    data_bytes, model_bytes = estimate_rank_bytes(cfg, world_size=world_size, rank=rank,
                                                  available=None if available is None else available // ranks_here)
    per_rank = data_bytes + model_bytes
    if available is not None and per_rank * ranks_here > available:
        ranks = f"; {ranks_here} ranks here: {format_bytes(per_rank * ranks_here)}" if ranks_here > 1 else ""
        _refuse(cfg, data_bytes=data_bytes, model_bytes=model_bytes, detail=ranks,
                limit=f"{format_bytes(available)} is available")
    space = address_space_left()
    if space is not None and per_rank > space:
        _refuse(cfg, data_bytes=data_bytes, model_bytes=model_bytes, detail="",
                limit=f"{format_bytes(space)} of address space is left to this process (ulimit -v)")


def _refuse(cfg: Config, *, data_bytes: int, model_bytes: int, detail: str, limit: str) -> NoReturn:
    lower = {"synthetic": "data.num_clients, data.samples_per_client or data.dim",
             "client_files": "data.num_clients"}.get(cfg.data.kind, "data.num_clients or the model (model.kind)")
    raise ConfigError(
        f"the config needs at least {format_bytes(data_bytes + model_bytes)} of memory per rank (data "
        f"{format_bytes(data_bytes)} + client models and state {format_bytes(model_bytes)}{detail}), but only "
        f"{limit}; "
        f"lower {lower}, or use more ranks or nodes")
