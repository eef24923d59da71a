"""Which clients live on which rank, and which clients take part in round t.

Both are pure functions of the config: every rank computes the same answer with no
communication, and the answer does not depend on the world size.
"""

from __future__ import annotations

import numpy as np

_SAMPLING_STREAM = 0x5A3  # separates the sampling RNG stream from data/model seeds


def client_block(rank: int, *, world_size: int, num_clients: int) -> range:
    """Contiguous block of client ids hosted by `rank`; the first m % W ranks get one extra."""
    base, extra = divmod(num_clients, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def num_sampled(num_clients: int, sample_fraction: float) -> int:
    return max(1, min(num_clients, round(sample_fraction * num_clients)))


def sample_clients(round_idx: int, *, seed: int, num_clients: int, sample_fraction: float) -> np.ndarray:
    """S_t: sorted client ids drawn uniformly without replacement, reproducible from (seed, t)."""
    if sample_fraction >= 1.0:
        return np.arange(num_clients)
    rng = np.random.default_rng([seed, round_idx, _SAMPLING_STREAM])
    chosen = rng.choice(num_clients, size=num_sampled(num_clients, sample_fraction), replace=False)
    return np.sort(chosen)
