"""Which clients live on which rank, which clients take part in round t, and which are evaluated.

All are pure functions of the config: every rank computes the same answer with no
communication, and the answer does not depend on the world size.

The evaluation cohort (`train.eval_clients`, docs/ARCHITECTURE.md "Evaluation on a cohort"): N
client ids drawn uniformly without replacement from (run seed, num_clients, N), once for the
whole run. Fixed, not re-drawn per evaluation: successive evaluations then measure the same
clients, so a change in a learning curve is the model's change and not another draw of clients
(paired rounds), a resumed run evaluates the clients it evaluated before, and lazily materialized
client data can keep the cohort's rows cached. `auto` evaluates every client up to
EVAL_ALL_UP_TO clients (every run from before the key, which evaluated all) and a cohort of
AUTO_COHORT above.
"""

from __future__ import annotations

import numpy as np

_SAMPLING_STREAM = 0x5A3  # separates the sampling RNG stream from data/model seeds
_COHORT_STREAM = 0xC0407  # the evaluation cohort's stream ([seed, stream]: never a round's [seed, t, stream])
EVAL_ALL_UP_TO = 1_000_000  # train.eval_clients=auto evaluates every client up to this many
AUTO_COHORT = 10_000  # ... and a cohort of this many above


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


def eval_cohort_size(eval_clients: int | str, num_clients: int) -> int | None:
    """How many clients an evaluation covers: None = every client (no cohort). An N of at least
    num_clients is every client: a sample without replacement cannot be larger."""
    if eval_clients == "all":
        return None
    if eval_clients == "auto":
        return None if num_clients <= EVAL_ALL_UP_TO else AUTO_COHORT
    size = int(eval_clients)
    return None if size >= num_clients else size


def eval_cohort(*, seed: int, num_clients: int, size: int) -> np.ndarray:
    """The evaluation cohort: `size` distinct sorted client ids drawn uniformly without replacement,
    reproducible from (seed, num_clients, size) alone, so the same on every rank for any world size
    (each rank evaluates the members it hosts). O(size) memory for any num_clients."""
    rng = np.random.default_rng([seed, _COHORT_STREAM])
    return np.sort(rng.choice(num_clients, size=size, replace=False))


def participation_counts(*, seed: int, num_clients: int, sample_fraction: float, num_rounds: int) -> np.ndarray:
    """(m,) int64: in how many of rounds 0..num_rounds-1 each client is sampled, which is how many
    local updates it has received when a run of num_rounds rounds completes. A run evaluated on a
    cohort reports this instead of summing every client's count over the ranks, and checks it
    against the counts each rank kept (pfl_dist/train.py)."""
    if sample_fraction >= 1.0:
        return np.full(num_clients, num_rounds, dtype=np.int64)
    counts = np.zeros(num_clients, dtype=np.int64)
    for round_idx in range(num_rounds):
        counts[sample_clients(round_idx, seed=seed, num_clients=num_clients, sample_fraction=sample_fraction)] += 1
    return counts
