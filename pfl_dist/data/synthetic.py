"""The paper's synthetic softmax-regression clients (shared/PAPER.md §4).

Client k, with seed (k + seed * m):
    W_k ~ N(0, R^2) of shape (C, d),  v_k ~ N(0, I_d),
    X_k ~ N(v_k, diag(j^-1.2, j = 1..d)) with n rows,  y = argmax(X_k W_k^T).
Features are scaled per client by their standard deviation, without centring. Each rank
generates only its own clients, and a client's data depends only on (seed, k, m).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticClient:
    features: np.ndarray  # (n, d), scaled by `scale`
    labels: np.ndarray  # (n,) int64
    scale: np.ndarray  # (d,) per-feature standard deviation used for scaling
    true_model: np.ndarray  # W_k, (C, d), in the unscaled feature space


def generate_client(
    client_id: int, *, seed: int, num_clients: int, num_samples: int, dim: int, num_classes: int, R: float
) -> SyntheticClient:
    rng = np.random.default_rng(client_id + seed * num_clients)
    true_model = rng.normal(0.0, R, size=(num_classes, dim))
    center = rng.normal(0.0, 1.0, size=dim)
    feature_std = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)
    features = center + rng.normal(size=(num_samples, dim)) * feature_std
    labels = np.argmax(features @ true_model.T, axis=1).astype(np.int64)
    scale = features.std(axis=0)
    return SyntheticClient(features=features / scale, labels=labels, scale=scale, true_model=true_model)
