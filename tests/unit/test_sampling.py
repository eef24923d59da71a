from __future__ import annotations

import numpy as np

from pfl_dist.sampling import client_block, num_sampled, sample_clients


def test_blocks_cover_all_clients_once_and_are_contiguous() -> None:
    for num_clients, world_size in [(8, 4), (10, 4), (1000, 3), (5, 5)]:
        blocks = [client_block(r, world_size=world_size, num_clients=num_clients) for r in range(world_size)]
        ids = [i for b in blocks for i in b]
        assert ids == list(range(num_clients))
        sizes = [len(b) for b in blocks]
        assert max(sizes) - min(sizes) <= 1


def test_sampling_is_reproducible_and_varies_by_round() -> None:
    a = sample_clients(7, seed=3, num_clients=1000, sample_fraction=0.1)
    b = sample_clients(7, seed=3, num_clients=1000, sample_fraction=0.1)
    c = sample_clients(8, seed=3, num_clients=1000, sample_fraction=0.1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)


def test_sampling_is_roughly_uniform() -> None:
    counts = np.zeros(50)
    for t in range(2000):
        counts[sample_clients(t, seed=0, num_clients=50, sample_fraction=0.2)] += 1
    expected = 2000 * 10 / 50
    assert np.all(np.abs(counts - expected) < 0.15 * expected)


def test_full_participation_and_rounding() -> None:
    assert np.array_equal(sample_clients(0, seed=0, num_clients=5, sample_fraction=1.0), np.arange(5))
    assert num_sampled(10, 0.01) == 1  # at least one client
    assert num_sampled(1000, 0.1) == 100
