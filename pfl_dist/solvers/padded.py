"""Minibatch proximal SGD (the paper's image solver), vectorized over a rank's sampled clients.

Every step of every client is

    w_i <- w_i - eta * ( grad L_i(w_i; batch) + lam * (w_i - w_g) )

for `num_epochs` epochs of batches of `batch_size` (lam = 0 for FedAvg and LocalTrain).

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
from typing import Protocol

import numpy as np
import torch

# The tag keeps its original module name: it seeds every shuffle, so renaming it would change results.
_SHUFFLE = zlib.crc32(b"pfl_dist.local_sgd.shuffle")


class MinibatchModel(Protocol):
    def weighted_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """(k, P) gradients of sum_j weights[i, j] * CE(model_i(x[i, j]), y[i, j])."""
        ...


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


def _prox_step(
    model: MinibatchModel,
    models: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    active: torch.Tensor | None = None,
) -> None:
    """One proximal step of every client, in place; `active` (k,) masks clients that sit out."""
    grad = model.weighted_grad(models, x, y, weights)
    if lam:
        grad.add_(models - anchor, alpha=lam)
    if active is not None:
        grad.mul_(active.unsqueeze(1))
    models.sub_(grad, alpha=lr)


def run_plan(
    model: MinibatchModel,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    plan: EpochPlan,
    *,
    rows: torch.Tensor,
    anchor: torch.Tensor,
    lam: float,
    lr: float,
) -> None:
    """All steps of `plan`, in place on `models` (k, P); `rows` picks the clients' data rows."""
    device = models.device
    row_index = rows.to(device).unsqueeze(1)
    positions, weights, active = (t.to(device) for t in (plan.positions, plan.weights, plan.active))
    for step in range(positions.shape[0]):
        batch_x = features[row_index, positions[step]]
        batch_y = labels[row_index, positions[step]]
        _prox_step(model, models, batch_x, batch_y, weights[step], anchor=anchor, lam=lam, lr=lr,
                   active=active[step] if plan.ragged else None)


def prox_sgd_padded(
    model: MinibatchModel,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    rows: torch.Tensor,
    counts: Sequence[int],
    client_ids: Sequence[int],
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_epochs: int,
    batch_size: int,
    seed: int,
    round_idx: int,
) -> torch.Tensor:
    """`num_epochs` epochs of minibatch proximal SGD for the clients in `rows`, in place.

    features/labels hold every client of the rank, padded to a common length; `counts`,
    `client_ids` describe the k clients of `rows` in the same order as the rows of `models`.
    """
    for epoch in range(num_epochs):
        plan = plan_epoch(counts, client_ids=client_ids, batch_size=batch_size, seed=seed,
                          round_idx=round_idx, epoch=epoch, dtype=models.dtype)
        run_plan(model, models, features, labels, plan, rows=rows, anchor=anchor, lam=lam, lr=lr)
    return models


def prox_gd_padded(
    model: MinibatchModel,
    models: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    rows: torch.Tensor,
    counts: Sequence[int],
    anchor: torch.Tensor,
    lam: float,
    lr: float,
    num_steps: int,
) -> torch.Tensor:
    """Full-batch proximal GD (algorithm.batch_size = null) on padded data, in place. The clients'
    data is gathered once: every step uses all of it."""
    rows = rows.to(models.device)
    x, y = features[rows], labels[rows]
    weights = full_batch_weights(counts, num_positions=features.shape[1], dtype=models.dtype).to(models.device)
    for _ in range(num_steps):
        _prox_step(model, models, x, y, weights, anchor=anchor, lam=lam, lr=lr)
    return models
