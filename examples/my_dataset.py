"""A dataset plug-in for pfl_dist: Gaussian blobs with a per-client label skew (docs/EXTENDING.md, "A dataset").

    PYTHONPATH=examples python -m pfl_dist.train data.kind=my_dataset:blobs data.num_clients=8

`blobs(**data.params)` is the factory that `data.kind: "my_dataset:blobs"` names. Every class c
has a centre shared by all clients; a sample of class c is its centre plus Gaussian noise. Client
i draws its labels mostly from its own class, i % num_classes (with probability `skew`), and
uniformly otherwise, so the clients are non-IID. A client's rows are generated from (seed, i)
when pfl_dist asks for them (`client(i)`), so a rank makes only the clients it hosts.
`client_size(i)` (optional) gives a client's row counts without making it, which lets a run with
`data.lazy=true` make each client only when it is sampled or evaluated.
"""

from __future__ import annotations

import numpy as np


class Blobs:
    """The federated dataset: num_clients, input_shape, num_classes, client(i) and client_size(i)."""

    def __init__(self, *, num_clients: int = 20, dim: int = 10, num_classes: int = 4, train_samples: int = 60,
                 test_samples: int = 20, skew: float = 0.8, noise: float = 1.0, seed: int = 0) -> None:
        if not 0.0 <= skew <= 1.0:
            raise ValueError(f"skew must be in [0, 1], got {skew}")
        if train_samples < 1 or test_samples < 1:
            raise ValueError("every client needs train_samples >= 1 and test_samples >= 1")
        self.num_clients = num_clients
        self.input_shape = (dim,)
        self.num_classes = num_classes
        self.train_samples, self.test_samples = train_samples, test_samples
        self.skew, self.noise, self.seed = skew, noise, seed
        self.centers = np.random.default_rng([seed, num_clients]).normal(scale=2.0, size=(num_classes, dim))

    def client(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test) of client i, from (seed, i) alone."""
        rng = np.random.default_rng([self.seed, i])
        probs = np.full(self.num_classes, (1.0 - self.skew) / self.num_classes)
        probs[i % self.num_classes] += self.skew
        n = self.train_samples + self.test_samples
        y = rng.choice(self.num_classes, size=n, p=probs)
        x = self.centers[y] + self.noise * rng.normal(size=(n, *self.input_shape))
        return x[: self.train_samples], y[: self.train_samples], x[self.train_samples:], y[self.train_samples:]

    def client_size(self, i: int) -> tuple[int, int]:
        """(n_train, n_test) of client i without making its rows (optional: data.lazy needs it)."""
        return self.train_samples, self.test_samples


def blobs(**params: object) -> Blobs:
    return Blobs(**params)  # type: ignore[arg-type]
