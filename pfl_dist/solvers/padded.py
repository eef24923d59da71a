"""The minibatch schedule of clients padded to one length (the paper's image solver's batches),
vectorized over a rank's sampled clients. The steps themselves are the one proximal step of
pfl_dist/algorithms/base.py (`prox_step`, looped by `local_sgd` over `Task.batches`, which
pfl_dist/tasks/base.py's `padded_batches` draws from `plan_epoch` below):

    w_i <- w_i - eta * ( grad L_i(w_i; batch) + lam * (w_i - w_g) )

for `local_epochs` epochs of batches of `batch_size` (lam = 0 for FedAvg and LocalTrain).

How k clients with different sample counts n_i advance together, without a Python loop over
clients in the hot path:
- Per-client epoch lengths. Client i takes ceil(n_i / B) steps per epoch over its own shuffled
  samples, the last batch holding the n_i mod B leftovers (drop_last=False), exactly the steps it
  would take alone. The batched loop runs max_i ceil(n_i / B) steps; a client whose epoch is
  over is masked out of the remaining ones (its update, proximal pull included, is multiplied by 0).
- Padding. Each step gathers a (k, B) block of sample positions. Positions past a client's
  batch point at its sample 0 and carry weight 0; real ones carry 1/b for a batch of b, so the
  weighted loss sum is each client's ordinary mean loss. Padding costs compute, never accuracy.
  Under the paper's `classes` partition all n_i are equal and nothing is padded.
- Shuffles. Client i's order in epoch e of round t is a permutation drawn from
  SeedSequence([seed, tag, t, i, e]), keyed by the stable client id, so it is the same on
  every world size and independent of which other clients share the rank.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# The tag keeps its original module name: it seeds every shuffle, so renaming it would change results.
_SHUFFLE = zlib.crc32(b"pfl_dist.local_sgd.shuffle")


@dataclass(frozen=True)
class EpochPlan:
    """Which samples each client uses at each step of one epoch."""

    positions: torch.Tensor  # (num_steps, k, B) sample positions into each client's padded data
    weights: torch.Tensor  # (num_steps, k, B) 1/b on the b real samples of a batch, 0 on padding
    active: torch.Tensor  # (num_steps, k) 1 if the client takes this step, else 0
    ragged: bool  # some client sits out some step (sample counts differ)


def epoch_permutation(num_samples: int, *, seed: int, round_idx: int, client_id: int, epoch: int,
                      stream: int = 0) -> np.ndarray:
    """Client `client_id`'s sample order in `epoch` of round `round_idx`; `stream` > 0 names another
    independent sequence of orders (a method's second solve in the same round)."""
    entropy = [seed, _SHUFFLE, round_idx, client_id, epoch] + ([stream] if stream else [])
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    return rng.permutation(num_samples)


def plan_epoch(
    counts: Sequence[int],
    *,
    client_ids: Sequence[int],
    batch_size: int,
    seed: int,
    round_idx: int,
    epoch: int,
    dtype: torch.dtype,
    stream: int = 0,
) -> EpochPlan:
    """The padded, masked batch schedule of one epoch for clients with `counts` samples."""
    steps_per_client = [math.ceil(n / batch_size) for n in counts]
    num_steps, k = max(steps_per_client), len(counts)
    positions = np.zeros((num_steps, k, batch_size), dtype=np.int64)
    weights = np.zeros((num_steps, k, batch_size))
    for i, (n, client_id, steps) in enumerate(zip(counts, client_ids, steps_per_client, strict=True)):
        order = np.zeros(steps * batch_size, dtype=np.int64)
        order[:n] = epoch_permutation(n, seed=seed, round_idx=round_idx, client_id=client_id, epoch=epoch,
                                      stream=stream)
        positions[:steps, i] = order.reshape(steps, batch_size)
        sizes = np.minimum(batch_size, n - batch_size * np.arange(steps))[:, None]
        weights[:steps, i] = (np.arange(batch_size) < sizes) / sizes
    return EpochPlan(
        positions=torch.from_numpy(positions),
        weights=torch.from_numpy(weights).to(dtype),
        active=torch.from_numpy((weights.sum(axis=2) > 0).astype(np.float64)).to(dtype),
        ragged=min(steps_per_client) != num_steps,
    )


def full_batch_weights(counts: Sequence[int], *, num_positions: int, dtype: torch.dtype) -> torch.Tensor:
    """(k, num_positions): 1/n_i on each client's n_i real samples, 0 on its padding."""
    counts_array = np.asarray(counts)[:, None]
    return torch.from_numpy((np.arange(num_positions) < counts_array) / counts_array).to(dtype)
