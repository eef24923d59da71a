"""Softmax regression on the paper's synthetic clients, with the paper's ATR and ITR metrics.

The data comes from pfl_dist/data/synthetic.py (each rank generates only its own clients): all of
them at start-up, or, with lazy data (data.lazy, pfl_dist/data/lazy.py), each client when it is
sampled or evaluated, through a bounded cache (`LazyRows`, pfl_dist/tasks/lazy_rows.py, stands where the eager
tensors stand, and indexing it by rows gives the very tensor indexing them would). The
solver, smoothness bound and metrics (ITR, ATR, losses and accuracies on the clients' training
samples) are the ones every linear per-client task shares (pfl_dist/tasks/linear_clients.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pfl_dist.config import Config
from pfl_dist.data.lazy import client_cache, lazy_data
from pfl_dist.data.synthetic import SyntheticBlock, generate_clients
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.tasks.lazy_rows import LazyRows
from pfl_dist.tasks.linear_clients import BLOCK, LinearClientsTask, block_smoothness

_GENERATION_BLOCK = 256  # clients generated per numpy block


class ClientArrays(NamedTuple):
    """One client's tensors as the eager task stores them: features (n, d) in the run's dtype,
    labels (n,) int64, scale (d,) float64, true model W_k (C, d) float64."""

    features: torch.Tensor
    labels: torch.Tensor
    scale: torch.Tensor
    true_model: torch.Tensor


class SyntheticTask(LinearClientsTask):
    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        data = cfg.data
        self.cfg = cfg
        self.client_ids = client_ids
        self.model = LinearSoftmax(data.dim, data.num_classes, bias=False)
        self.num_params = self.model.num_params
        self.dtype = dtype
        self.device = device
        self.lazy = lazy_data(cfg)
        num_clients, n, d, c = len(client_ids), data.samples_per_client, data.dim, data.num_classes
        if self.lazy:
            self.cache = client_cache(cfg, client_ids, self._materialize)
            field = functools.partial(LazyRows, self.cache, first_id=client_ids.start, device=device)
            self.features = field(field="features", shape=(num_clients, n, d), dtype=dtype)  # type: ignore[assignment]
            self.labels = field(field="labels", shape=(num_clients, n), dtype=torch.long)  # type: ignore[assignment]
            self.scale = field(field="scale", shape=(num_clients, d), dtype=torch.float64)  # type: ignore[assignment]
            self.true_models = field(field="true_model", shape=(num_clients, d, c),  # type: ignore[assignment]
                                    dtype=torch.float64, transposed=True)
            self._set_counts([n] * num_clients, device)
            return
        self.features = torch.empty(num_clients, n, d, dtype=dtype)
        self.labels = torch.empty(num_clients, n, dtype=torch.long)
        self.scale = torch.empty(num_clients, d, dtype=torch.float64)
        # W_k^T, (k, d, C): the truth in the same layout as the model's weight matrix, viewed
        # from (k, C, d) memory as it always was: reductions over it depend on the memory order.
        true_models = torch.empty(num_clients, c, d, dtype=torch.float64).transpose(1, 2)
        # Blocks bound the float64 working memory (100,000 clients fit) and stay cache-sized.
        for start in range(0, num_clients, _GENERATION_BLOCK):
            ids = client_ids[start: start + _GENERATION_BLOCK]
            block = self._generate(ids)
            rows = slice(start, start + len(ids))
            self.features[rows] = torch.from_numpy(block.features)
            self.labels[rows] = torch.from_numpy(block.labels)
            self.scale[rows] = torch.from_numpy(block.scale)
            true_models[rows] = torch.from_numpy(block.true_models).transpose(1, 2)
        self.features, self.labels = self.features.to(device), self.labels.to(device)
        self.scale, self.true_models = self.scale.to(device), true_models.to(device)
        self._set_counts([n] * num_clients, device)

    def _generate(self, ids: Sequence[int]) -> SyntheticBlock:
        data = self.cfg.data
        return generate_clients(ids, seed=self.cfg.run.seed, num_clients=data.num_clients,
                                num_samples=data.samples_per_client, dim=data.dim, num_classes=data.num_classes,
                                R=data.R, center_scale=data.center_scale)

    def _materialize(self, ids: list[int]) -> list[ClientArrays]:
        """The clients of `ids` (global), generated in blocks, each client's tensors its own copy
        (so that dropping it frees it) and cast as the eager tensors cast them. The block is cast
        once and each client's rows copied by numpy (a torch call per client and field cost more
        than the copies)."""
        clients = []
        for start in range(0, len(ids), _GENERATION_BLOCK):
            block = self._generate(ids[start: start + _GENERATION_BLOCK])
            features = torch.from_numpy(block.features).to(self.dtype).numpy()
            for j in range(len(block.labels)):
                clients.append(ClientArrays(*(torch.from_numpy(field[j].copy()) for field in (
                    features, block.labels, block.scale, block.true_models))))
        return clients

    def local_smoothness(self) -> float:
        """Lazy data: every client of this rank generated once, a block at a time, and not kept
        (the eager blocks and arithmetic, so the same bound bit for bit); eager: the stored rows."""
        if not self.lazy:
            return super().local_smoothness()
        largest = -math.inf
        for start in range(0, len(self.client_ids), BLOCK):
            block = self._generate(self.client_ids[start: start + BLOCK])
            largest = max(largest, block_smoothness(torch.from_numpy(block.features).to(self.dtype).to(self.device),
                                                    None))
        return largest

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """The data is generated from (seed, client id) on each rank; only an init file to check."""
        check_init_file(cfg.model.init_file, LinearSoftmax(cfg.data.dim, cfg.data.num_classes, bias=False))

    def init_model(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        return self.model.init_params(generator, dtype=self.dtype).to(self.device)
