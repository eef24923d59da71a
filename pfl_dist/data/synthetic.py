"""The paper's synthetic softmax-regression clients (docs/METHOD.md §4).

Client k, with seed (k + seed * m):
    W_k ~ N(0, R^2) of shape (C, d),  v_k ~ N(0, I_d),
    X_k ~ N(v_k, diag(j^-1.2, j = 1..d)) with n rows,  y = argmax(X_k W_k^T).
Features are scaled per client by their standard deviation, without centring (a constant
feature, every feature of a one-sample client, keeps scale 1). Each rank
generates only its own clients, and a client's data depends only on (seed, k, m).

In that generator R does not change the data: y = argmax(X_k W_k^T) is invariant to the scale
of W_k, and W_k at any R is the same draw times R, so every R gives bit-identical clients and
only the truth the errors are measured against moves. `center_scale` > 0 adds a centre shared
by all clients, W_k = W_0 + R * Z_k with W_0 ~ N(0, center_scale^2) drawn from a stream of its
own (seed only): then R is the spread of the clients' rules around a common one, so small R
means similar labels and large R different ones (docs/RESULTS.md §1b). center_scale = 0 is the
paper's generator, bit for bit.

Clients are generated in blocks: one generator per client (its stream is the client's data,
so that cannot be shared), one draw per client for all three of W_k, v_k and X_k (the same
stream positions as three successive draws), and the arithmetic vectorized over the block.
Every step is the same IEEE operation on the same operands as the one-client version, so the
data is bit for bit what `generate_client` always produced (tests/unit/test_golden.py); the
block form is ~4x faster, which matters for 50,000 clients per rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticClient:
    features: np.ndarray  # (n, d), scaled by `scale`
    labels: np.ndarray  # (n,) int64
    scale: np.ndarray  # (d,) per-feature standard deviation used for scaling
    true_model: np.ndarray  # W_k, (C, d), in the unscaled feature space


@dataclass(frozen=True)
class SyntheticBlock:
    """Several clients stacked along a leading axis (the fields of SyntheticClient)."""

    features: np.ndarray  # (k, n, d)
    labels: np.ndarray  # (k, n) int64
    scale: np.ndarray  # (k, d)
    true_models: np.ndarray  # (k, C, d)


def generate_clients(
    client_ids: Sequence[int], *, seed: int, num_clients: int, num_samples: int, dim: int, num_classes: int, R: float,
    center_scale: float = 0.0,
) -> SyntheticBlock:
    num_model = num_classes * dim
    draws = client_draws(client_ids, np.empty((len(client_ids), num_model + dim + num_samples * dim)), seed=seed,
                         num_clients=num_clients)
    # Generator.normal(loc, scale) is loc + scale * standard_normal, element by element.
    true_models = shared_center(seed, num_classes, dim, center_scale) + R * draws[:, :num_model].reshape(
        -1, num_classes, dim)
    center = draws[:, num_model: num_model + dim]
    noise = draws[:, num_model + dim:]  # (k, n * d): each client's X_k draws, row after row
    feature_std = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)
    # v_k + noise * std, element by element, with the d standard deviations tiled along a client's
    # whole n x d row: numpy's inner loop then runs over n x d numbers, not d.
    features = (noise * np.tile(feature_std, num_samples)).reshape(-1, num_samples, dim)
    features += center[:, None, :]
    labels = np.argmax(features @ true_models.transpose(0, 2, 1), axis=2).astype(np.int64)
    scale = features.std(axis=1)
    # A constant feature keeps scale 1, as StandardScaler does and as client files do: with one
    # sample per client every feature is constant, and dividing by its std 0 gave 0/0 = NaN.
    scale[scale == 0] = 1.0
    features /= scale[:, None, :]
    return SyntheticBlock(features=features, labels=labels, scale=scale, true_models=true_models)


def client_draws(client_ids: Sequence[int], out: np.ndarray, *, seed: int, num_clients: int) -> np.ndarray:
    """Each client's standard normals, in its row of `out` (W_k's, then v_k's, then X_k's): its own
    generator, seeded (client id + seed x m). These draws are the client's data bit for bit."""
    for row, client_id in enumerate(client_ids):
        np.random.default_rng(client_id + seed * num_clients).standard_normal(out=out[row])
    return out


def shared_center(seed: int, num_classes: int, dim: int, center_scale: float) -> np.ndarray:
    """W_0, (C, d): zero for the paper's generator, else one draw shared by every client.

    Its stream is seeded by the pair (seed, 1) (a different SeedSequence entropy than any
    client's single integer), so it does not overlap the clients' streams.
    """
    if center_scale == 0:
        return np.zeros((num_classes, dim))  # 0.0 + x == x: the paper's numbers exactly
    return center_scale * np.random.default_rng([seed, 1]).standard_normal((num_classes, dim))


def generate_client(
    client_id: int, *, seed: int, num_clients: int, num_samples: int, dim: int, num_classes: int, R: float,
    center_scale: float = 0.0,
) -> SyntheticClient:
    block = generate_clients([client_id], seed=seed, num_clients=num_clients, num_samples=num_samples, dim=dim,
                             num_classes=num_classes, R=R, center_scale=center_scale)
    return SyntheticClient(features=block.features[0], labels=block.labels[0], scale=block.scale[0],
                           true_model=block.true_models[0])
