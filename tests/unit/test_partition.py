"""Partitioners (pfl_dist.data.partition): determinism, the paper's counts, disjointness."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pfl_dist.data.partition import (
    client_classes,
    partition_classes,
    partition_dirichlet,
    partition_iid,
    select_clients,
    train_test_split_client,
)
from pfl_dist.errors import DataError


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """60,000 MNIST-like labels, 6,000 per class, in a fixed shuffled order."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(10), 6000))


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n and np.unique(joined).size == n


# --------------------------------------------------------------------------------------------
# classes per client (the paper's scheme)


@pytest.mark.parametrize("c", [1, 2, 3, 5, 7, 10])
def test_classes_scheme_counts(labels: np.ndarray, c: int) -> None:
    parts = partition_classes(labels, num_partitions=300, classes_per_client=c, seed=0)
    per_class = 60000 // (300 * c)
    assert len(parts) == 300
    for part in parts:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, no repeats
        held, counts = np.unique(labels[part], return_counts=True)
        assert held.size == c and counts.tolist() == [per_class] * c


def test_classes_matches_client_classes(labels: np.ndarray) -> None:
    parts = partition_classes(labels, num_partitions=300, classes_per_client=3, seed=4)
    chosen = client_classes(300, num_classes=10, classes_per_client=3, seed=4)
    assert chosen.shape == (300, 3)
    for part, classes in zip(parts, chosen, strict=True):
        assert np.unique(labels[part]).tolist() == classes.tolist()


def test_classes_is_deterministic_and_seed_dependent(labels: np.ndarray) -> None:
    a = partition_classes(labels, num_partitions=300, classes_per_client=2, seed=7)
    b = partition_classes(labels, num_partitions=300, classes_per_client=2, seed=7)
    c = partition_classes(labels, num_partitions=300, classes_per_client=2, seed=8)
    assert_same(a, b)
    assert sum(not np.array_equal(x, y) for x, y in zip(a, c, strict=True)) > 250


def test_classes_disjoint_when_supply_suffices(labels: np.ndarray) -> None:
    # c = 10: every client takes 20 of each class, 300 * 20 = 6000 = the supply exactly.
    parts = partition_classes(labels, num_partitions=300, classes_per_client=10, seed=1)
    assert_disjoint_cover(parts, 60000)


def test_classes_overdemand_reuses_evenly(labels: np.ndarray) -> None:
    parts = partition_classes(labels, num_partitions=300, classes_per_client=2, seed=0)
    chosen = client_classes(300, num_classes=10, classes_per_client=2, seed=0)
    uses = np.bincount(np.concatenate(parts), minlength=60000)
    for cls in range(10):
        demand = int((chosen == cls).sum()) * 100
        in_class = uses[labels == cls]
        assert in_class.sum() == demand
        assert in_class.max() == math.ceil(demand / 6000)  # wraps around the pool evenly
        assert in_class.min() == demand // 6000


def test_classes_bad_arguments(labels: np.ndarray) -> None:
    for bad in (0, 11):
        message = re.escape(f"classes_per_client must be 1..10, got {bad}")
        with pytest.raises(DataError, match=message):
            partition_classes(labels, num_partitions=300, classes_per_client=bad, seed=0)
    with pytest.raises(DataError, match="too few samples"):
        partition_classes(labels[:500], num_partitions=300, classes_per_client=2, seed=0)
    with pytest.raises(DataError, match="seed must be >= 0"):
        partition_classes(labels, classes_per_client=2, seed=-1)
    with pytest.raises(DataError, match="num_partitions must be >= 1"):
        partition_classes(labels, num_partitions=0, classes_per_client=2, seed=0)
    with pytest.raises(DataError, match="labels must be a non-empty 1-D integer array"):
        partition_classes(labels.astype(float), classes_per_client=2, seed=0)


def test_classes_class_smaller_than_one_block() -> None:
    skewed = np.array([0] * 95 + [1] * 5)  # each client needs 50 of a class; class 1 has 5
    with pytest.raises(DataError, match="class 1 has 5 images but each client needs 50"):
        partition_classes(skewed, num_partitions=1, classes_per_client=2, seed=0)


# --------------------------------------------------------------------------------------------
# Dirichlet


@pytest.mark.parametrize(("num_partitions", "alpha"), [(10, 0.1), (100, 0.5), (300, 0.1)])
def test_dirichlet_disjoint_cover_and_min_size(labels: np.ndarray, num_partitions: int, alpha: float) -> None:
    parts = partition_dirichlet(labels, num_partitions=num_partitions, alpha=alpha, seed=0)
    assert len(parts) == num_partitions
    assert_disjoint_cover(parts, 60000)
    assert min(p.size for p in parts) >= 10 and all(p.dtype == np.int64 for p in parts)


def test_dirichlet_is_deterministic_and_seed_dependent(labels: np.ndarray) -> None:
    a = partition_dirichlet(labels, num_partitions=20, alpha=0.5, seed=3)
    assert_same(a, partition_dirichlet(labels, num_partitions=20, alpha=0.5, seed=3))
    b = partition_dirichlet(labels, num_partitions=20, alpha=0.5, seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_alpha_controls_skew(labels: np.ndarray) -> None:
    def top_class_share(alpha: float) -> float:
        parts = partition_dirichlet(labels, num_partitions=10, alpha=alpha, seed=0)
        return float(np.mean([np.bincount(labels[p]).max() / p.size for p in parts]))

    assert top_class_share(0.1) > 0.5
    assert top_class_share(1000.0) < 0.15


def test_dirichlet_bad_arguments(labels: np.ndarray) -> None:
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(DataError, match="alpha must be a positive number"):
            partition_dirichlet(labels, num_partitions=10, alpha=alpha, seed=0)
    with pytest.raises(DataError, match=r"too few samples.*min_size=10"):
        partition_dirichlet(labels[:100], num_partitions=11, alpha=1.0, seed=0)


# --------------------------------------------------------------------------------------------
# iid


def test_iid_sizes_cover_and_determinism(labels: np.ndarray) -> None:
    parts = partition_iid(labels, num_partitions=300, seed=0)
    assert [p.size for p in parts] == [200] * 300
    assert_disjoint_cover(parts, 60000)
    assert_same(parts, partition_iid(labels, num_partitions=300, seed=0))
    other = partition_iid(labels, num_partitions=300, seed=1)
    assert not np.array_equal(parts[0], other[0])
    uneven = partition_iid(labels[:1003], num_partitions=10, seed=0)
    assert sorted(p.size for p in uneven) == [100] * 7 + [101] * 3


def test_iid_bad_arguments(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"num_partitions must be 1..10, got 11"):
        partition_iid(labels[:10], num_partitions=11, seed=0)


# --------------------------------------------------------------------------------------------
# per-client split and client selection


def test_split_is_90_10_disjoint_and_complete() -> None:
    indices = np.arange(1000, 1200, dtype=np.int64)
    train, test = train_test_split_client(indices, seed=0, client_id=5)
    assert train.size == 180 and test.size == 20
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), indices)
    assert train.dtype == np.int64 and np.all(np.diff(test) > 0)
    odd = train_test_split_client(np.arange(198), seed=0, client_id=0)  # c = 3: 66 * 3
    assert (odd[0].size, odd[1].size) == (178, 20)


def test_split_is_keyed_by_seed_and_client_id() -> None:
    indices = np.arange(200)
    first = train_test_split_client(indices, seed=1, client_id=3)
    again = train_test_split_client(indices, seed=1, client_id=3)
    np.testing.assert_array_equal(first[1], again[1])
    other_client = train_test_split_client(indices, seed=1, client_id=4)
    other_seed = train_test_split_client(indices, seed=2, client_id=3)
    assert not np.array_equal(first[1], other_client[1])
    assert not np.array_equal(first[1], other_seed[1])


def test_split_bad_arguments() -> None:
    with pytest.raises(DataError, match="test_fraction must be in"):
        train_test_split_client(np.arange(10), test_fraction=1.0, seed=0, client_id=0)
    with pytest.raises(DataError, match="too few samples: client 2 has 1 samples"):
        train_test_split_client(np.arange(1), seed=0, client_id=2)
    train, test = train_test_split_client(np.arange(10), test_fraction=0.0, seed=0, client_id=0)
    assert train.size == 10 and test.size == 0


def test_select_clients() -> None:
    ids = select_clients(300, num_clients=10, seed=0)
    assert ids.dtype == np.int64 and ids.shape == (10,)
    assert np.all(np.diff(ids) > 0) and ids.min() >= 0 and ids.max() < 300
    np.testing.assert_array_equal(ids, select_clients(300, num_clients=10, seed=0))
    assert not np.array_equal(ids, select_clients(300, num_clients=10, seed=1))
    np.testing.assert_array_equal(select_clients(5, num_clients=5, seed=9), np.arange(5))
    with pytest.raises(DataError, match=r"num_clients must be 1..300, got 301"):
        select_clients(300, num_clients=301, seed=0)
