"""Deterministic partitioners: which training samples each federated client holds.

Every rank calls these with the same arguments and must get bit-identical partitions without
communicating, so all randomness comes from `np.random.default_rng(SeedSequence(...))` keyed
by (seed, purpose[, id]). The purpose tag keeps e.g. the class choice and the train/test split
from reusing one stream; the id keys per-client and per-class draws so that they do not
depend on the other clients where that is possible. Results are sorted np.int64 index arrays
into the training split. Bad arguments raise DataError naming the argument.
"""

from __future__ import annotations

import zlib

import numpy as np

from pfl_dist.errors import DataError


def _purpose(tag: str) -> int:
    """A stable 32-bit id for a purpose tag (Python's hash() is salted per process)."""
    return zlib.crc32(f"pfl_dist.partition.{tag}".encode())


_CLASSES = _purpose("classes")
_CLASS_POOL = _purpose("class_pool")
_DIRICHLET = _purpose("dirichlet")
_IID = _purpose("iid")
_SPLIT = _purpose("client_split")
_SELECT = _purpose("select_clients")
_VALIDATION = _purpose("validation_split")


def _rng(seed: int, purpose: int, *ids: int) -> np.random.Generator:
    """Generator for (seed, purpose, *ids); independent streams for different keys."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *ids]))


# --------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value: int, *, low: int, high: int | None = None) -> None:
    """DataError naming `name` unless low <= value (<= high)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise DataError(f"{name} must be {bound}, got {value}")


def _check_labels(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Labels as a 1-D int64 array plus the number of classes (inferred as max + 1)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a non-empty 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    low, high = int(labels.min()), int(labels.max())
    classes = high + 1 if num_classes is None else num_classes
    _check_int("num_classes", classes, low=1)
    if low < 0 or high >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1}, found {low}..{high}")
    return labels, classes


# --------------------------------------------------------------------------------------------
# The paper's scheme: c classes per client


def _choose_classes(num_partitions: int, num_classes: int, classes_per_client: int, seed: int) -> np.ndarray:
    """(num_partitions, c) sorted distinct classes per client: first c of a random order."""
    keys = _rng(seed, _CLASSES).random((num_partitions, num_classes))
    return np.sort(np.argsort(keys, axis=1, kind="stable")[:, :classes_per_client], axis=1)


def partition_classes(
    labels: np.ndarray,
    *,
    num_partitions: int = 300,
    classes_per_client: int,
    seed: int,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """The paper's scheme: each client holds `classes_per_client` (c) random classes.

    Each of the `num_partitions` clients picks c distinct classes uniformly at random and gets
    n = len(labels) // (num_partitions * c) images of each (60000 // (300 c) for MNIST).

    Rule when a class runs out: each class k has one fixed random permutation of its images
    (seeded by (seed, k)). The clients that picked k, in client-id order, take consecutive
    blocks of n images from it, wrapping around to the start once it is used up. So images are
    disjoint across clients as long as the class has enough of them; after that a class's
    images are reused as evenly as possible (each at most ceil(demand / supply) times), while
    other classes are unaffected. A client never holds the same image twice.
    """
    labels, num_classes = _check_labels(labels, num_classes)
    _check_int("num_partitions", num_partitions, low=1)
    _check_int("classes_per_client", classes_per_client, low=1, high=num_classes)
    _check_int("seed", seed, low=0)
    per_class = labels.size // (num_partitions * classes_per_client)
    if per_class == 0:
        raise DataError(
            f"too few samples: {labels.size} labels cannot give {num_partitions} partitions "
            f"x classes_per_client={classes_per_client} at least one image per class"
        )
    chosen = _choose_classes(num_partitions, num_classes, classes_per_client, seed)
    blocks: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for cls in range(num_classes):
        holders = np.flatnonzero((chosen == cls).any(axis=1))
        if holders.size:
            _deal_class(labels, cls, holders, blocks, per_class=per_class, seed=seed)
    return [np.sort(np.concatenate(parts)) for parts in blocks]


def _deal_class(
    labels: np.ndarray,
    cls: int,
    holders: np.ndarray,
    blocks: list[list[np.ndarray]],
    *,
    per_class: int,
    seed: int,
) -> None:
    """Give each holder of `cls` its block of `per_class` images, cycling the class pool."""
    pool = np.flatnonzero(labels == cls)
    if pool.size < per_class:
        raise DataError(
            f"too few samples: class {cls} has {pool.size} images but each client needs "
            f"{per_class}; use more num_partitions or classes_per_client"
        )
    pool = _rng(seed, _CLASS_POOL, cls).permutation(pool)
    offsets = np.arange(holders.size, dtype=np.int64)[:, None] * per_class
    taken = pool[(offsets + np.arange(per_class)) % pool.size]
    for client, block in zip(holders.tolist(), taken, strict=True):
        blocks[client].append(block)


def client_classes(num_partitions: int, *, num_classes: int, classes_per_client: int, seed: int) -> np.ndarray:
    """The (num_partitions, c) sorted class ids `partition_classes` gives each client.

    Cheap (no labels needed), for logging or for restricting personal accuracy to a client's
    own classes.
    """
    _check_int("num_partitions", num_partitions, low=1)
    _check_int("num_classes", num_classes, low=1)
    _check_int("classes_per_client", classes_per_client, low=1, high=num_classes)
    _check_int("seed", seed, low=0)
    return _choose_classes(num_partitions, num_classes, classes_per_client, seed)


# --------------------------------------------------------------------------------------------
# Dirichlet and iid


def _dirichlet_owners(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    num_partitions: int,
    alpha: float,
    num_classes: int,
) -> np.ndarray:
    """One Dirichlet draw, as the owning partition of every sample.

    Each class is split over the partitions in proportions ~ Dir(alpha). As in NIID-Bench, a
    partition already holding its fair share (N / num_partitions) gets none of the following
    classes, which keeps sizes usable at small alpha.
    """
    owners = np.empty(labels.size, dtype=np.int64)
    sizes = np.zeros(num_partitions, dtype=np.int64)
    fair = labels.size / num_partitions
    for cls in range(num_classes):
        pool = rng.permutation(np.flatnonzero(labels == cls))
        share = rng.dirichlet(np.full(num_partitions, alpha)) * (sizes < fair)
        if share.sum() <= 0:  # everyone is full (or all shares underflowed): split evenly
            share = np.ones(num_partitions)
        cuts = (np.cumsum(share / share.sum())[:-1] * pool.size).astype(np.int64)
        owners[pool] = np.searchsorted(cuts, np.arange(pool.size), side="right")
        sizes += np.bincount(owners[pool], minlength=num_partitions)
    return owners


def _top_up(owners: np.ndarray, rng: np.random.Generator, *, num_partitions: int, min_size: int) -> None:
    """In place: move random samples from the largest partitions to those below min_size.

    Partitions are topped up in id order. Needs len(owners) >= num_partitions * min_size,
    which the caller has checked; a donor never drops below min_size itself.
    """
    sizes = np.bincount(owners, minlength=num_partitions)
    for client in np.flatnonzero(sizes < min_size).tolist():
        while sizes[client] < min_size:
            donor = int(np.argmax(sizes))
            count = int(min(min_size - sizes[client], sizes[donor] - min_size))
            held = np.flatnonzero(owners == donor)
            owners[rng.choice(held, size=count, replace=False)] = client
            sizes[client] += count
            sizes[donor] -= count


def _group(owners: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    """Sorted sample indices of each partition, from the owner of every sample."""
    order = np.argsort(owners, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(owners, minlength=num_partitions))[:-1]
    return np.split(order, bounds)


def partition_dirichlet(
    labels: np.ndarray,
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    num_classes: int | None = None,
    max_tries: int = 20,
) -> list[np.ndarray]:
    """Label-skewed partition: class proportions per partition ~ Dirichlet(alpha).

    Partitions are disjoint and cover every sample; small alpha means strong skew. The draw
    is repeated (from the same seeded stream, so still deterministic) until every partition
    has at least `min_size` samples. If `max_tries` draws all fail (e.g. 300 partitions of
    10 classes at alpha=0.1), the last draw is repaired by `_top_up` instead of failing, so
    only a truly impossible request (num_partitions * min_size > len(labels)) is an error.
    """
    labels, num_classes = _check_labels(labels, num_classes)
    _check_int("num_partitions", num_partitions, low=1)
    _check_int("min_size", min_size, low=0)
    _check_int("max_tries", max_tries, low=1)
    _check_int("seed", seed, low=0)
    if not np.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a positive number, got {alpha!r}")
    if min_size * num_partitions > labels.size:
        raise DataError(
            f"too few samples: {labels.size} cannot give num_partitions={num_partitions} "
            f"at least min_size={min_size} each"
        )
    rng = _rng(seed, _DIRICHLET)
    for _ in range(max_tries):
        owners = _dirichlet_owners(labels, rng, num_partitions=num_partitions, alpha=alpha, num_classes=num_classes)
        if np.bincount(owners, minlength=num_partitions).min() >= min_size:
            return _group(owners, num_partitions)
    _top_up(owners, rng, num_partitions=num_partitions, min_size=min_size)
    return _group(owners, num_partitions)


def partition_iid(labels: np.ndarray, *, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, disjoint partition covering every sample; sizes differ by <= 1."""
    labels, _ = _check_labels(labels, None)
    _check_int("num_partitions", num_partitions, low=1, high=labels.size)
    _check_int("seed", seed, low=0)
    order = _rng(seed, _IID).permutation(labels.size)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


# --------------------------------------------------------------------------------------------
# Per-client train/test split and client selection


def train_test_split_client(
    indices: np.ndarray, *, test_fraction: float = 0.1, seed: int, client_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, test), e.g. the paper's 90/10.

    The test size is round-half-up(len * test_fraction), at least 1 when test_fraction > 0,
    and the train part is never empty. It is drawn from a stream keyed by (seed, client_id)
    only, so a rank can split its own clients without building anyone else's. Both parts
    are sorted and disjoint, and together they are `indices`.
    """
    indices = np.asarray(indices, dtype=np.int64)
    _check_int("seed", seed, low=0)
    _check_int("client_id", client_id, low=0)
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    num_test = int(np.floor(indices.size * test_fraction + 0.5))
    if test_fraction > 0:
        num_test = max(num_test, 1)
    if num_test >= indices.size:
        raise DataError(
            f"too few samples: client {client_id} has {indices.size} samples, cannot keep "
            f"{num_test} for test (test_fraction={test_fraction}) and still train"
        )
    order = _rng(seed, _SPLIT, client_id).permutation(indices.size)
    return np.sort(indices[order[num_test:]]), np.sort(indices[order[:num_test]])


def validation_size(num_train: int, val_fraction: float) -> int:
    """How many of `num_train` training rows `validation_split_client` holds out for validation
    (round half up, at least 1; 0 at val_fraction 0): from the count alone, without the rows."""
    if val_fraction == 0:
        return 0
    return max(int(np.floor(num_train * val_fraction + 0.5)), 1)


def validation_split_client(
    indices: np.ndarray, *, val_fraction: float, seed: int, client_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's training indices into (train, validation), as `train_test_split_client`
    does (round-half-up size, at least 1 when val_fraction > 0, train never empty, both sorted,
    disjoint, together `indices`) but from its own stream keyed by (seed, client_id): the test
    split is drawn first and is the same with or without validation rows."""
    indices = np.asarray(indices, dtype=np.int64)
    _check_int("seed", seed, low=0)
    _check_int("client_id", client_id, low=0)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_fraction == 0:
        return indices, np.zeros(0, dtype=np.int64)
    num_val = validation_size(indices.size, val_fraction)
    if num_val >= indices.size:
        raise DataError(
            f"too few samples: client {client_id} has {indices.size} training samples, cannot keep "
            f"{num_val} for validation (val_fraction={val_fraction}) and still train"
        )
    order = _rng(seed, _VALIDATION, client_id).permutation(indices.size)
    return np.sort(indices[order[num_val:]]), np.sort(indices[order[:num_val]])


def select_clients(num_partitions: int, *, num_clients: int, seed: int) -> np.ndarray:
    """The sorted ids of the `num_clients` partitions an experiment uses (the paper: 10 of 300)."""
    _check_int("num_partitions", num_partitions, low=1)
    _check_int("num_clients", num_clients, low=1, high=num_partitions)
    _check_int("seed", seed, low=0)
    chosen = _rng(seed, _SELECT).choice(num_partitions, size=num_clients, replace=False)
    return np.sort(chosen).astype(np.int64)
