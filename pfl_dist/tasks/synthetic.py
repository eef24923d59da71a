"""Softmax regression on the paper's synthetic clients, with the paper's ATR and ITR metrics.

The data comes from pfl_dist/data/synthetic.py (each rank generates only its own clients): all of
them at start-up, or, with lazy data (data.lazy, pfl_dist/data/lazy.py), each client when it is
sampled or evaluated, through a bounded cache (`LazyRows` stands where the eager tensors stand,
and indexing it by rows gives the very tensor indexing them would). The
solver, smoothness bound and metrics (ITR, ATR, losses and accuracies on the clients' training
samples) are the ones every linear per-client task shares (pfl_dist/tasks/linear_clients.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from pfl_dist.config import Config
from pfl_dist.data.lazy import ClientCache, cache_capacity, lazy_data
from pfl_dist.data.synthetic import SyntheticBlock, generate_clients
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.sampling import eval_cohort, eval_cohort_size
from pfl_dist.tasks.linear_clients import BLOCK, LinearClientsTask, block_smoothness

_GENERATION_BLOCK = 256  # clients generated per numpy block


class ClientArrays(NamedTuple):
    """One client's tensors as the eager task stores them: features (n, d) in the run's dtype,
    labels (n,) int64, scale (d,) float64, true model W_k (C, d) float64."""

    features: torch.Tensor
    labels: torch.Tensor
    scale: torch.Tensor
    true_model: torch.Tensor


class LazyRows:
    """One of the task's per-client tensors (features, labels, scale, true_models), materialized
    on indexing: `rows[index]`, index a 1-D tensor of local rows, is exactly `eager[index]`. The
    distinct clients are stacked in the eager tensor's memory layout and indexed the same way,
    so what follows (the solver, the metrics' reductions) sees the same tensor."""

    def __init__(self, task: SyntheticTask, field: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.task, self.field, self.shape, self.dtype = task, field, torch.Size(shape), dtype
        self.device = task.device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> torch.Tensor:
        if not isinstance(index, torch.Tensor) or index.dim() != 1:
            raise TypeError(f"lazy client data is indexed by a 1-D tensor of rows, not {type(index).__name__}")
        rows = index.tolist()
        distinct = list(dict.fromkeys(rows))
        position = {row: i for i, row in enumerate(distinct)}
        start = self.task.client_ids.start
        clients = self.task.cache.get([start + row for row in distinct])
        parts = [getattr(client, self.field) for client in clients]
        if self.field == "true_model":  # eager: W_k^T viewed from (k, C, d) memory
            stacked = (torch.stack(parts) if parts else torch.empty(0, *self.shape[2:0:-1], dtype=self.dtype)
                       ).transpose(1, 2)
        else:
            stacked = torch.stack(parts) if parts else torch.empty(0, *self.shape[1:], dtype=self.dtype)
        return stacked.to(self.device)[torch.tensor([position[row] for row in rows], dtype=torch.long,
                                                    device=self.device)]


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
            self.cache = ClientCache(self._materialize, capacity=cache_capacity(cfg), pinned=self._cohort_members())
            self.features = LazyRows(self, "features", (num_clients, n, d), dtype)  # type: ignore[assignment]
            self.labels = LazyRows(self, "labels", (num_clients, n), torch.long)  # type: ignore[assignment]
            self.scale = LazyRows(self, "scale", (num_clients, d), torch.float64)  # type: ignore[assignment]
            self.true_models = LazyRows(self, "true_model", (num_clients, d, c),  # type: ignore[assignment]
                                        torch.float64)
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

    def _cohort_members(self) -> list[int]:
        """The evaluation cohort's members on this rank (pinned in the cache)."""
        data = self.cfg.data
        size = eval_cohort_size(self.cfg.train.eval_clients, data.num_clients)
        if size is None:
            return []
        cohort = eval_cohort(seed=self.cfg.run.seed, num_clients=data.num_clients, size=size)
        return [int(i) for i in cohort if self.client_ids.start <= i < self.client_ids.stop]

    def _materialize(self, ids: list[int]) -> list[ClientArrays]:
        """The clients of `ids` (global), generated in blocks, each client's tensors its own copy
        (so that dropping it frees it) and cast as the eager tensors cast them."""
        clients = []
        for start in range(0, len(ids), _GENERATION_BLOCK):
            block = self._generate(ids[start: start + _GENERATION_BLOCK])
            for j in range(len(block.labels)):
                clients.append(ClientArrays(
                    features=torch.from_numpy(block.features[j]).to(self.dtype, copy=True),
                    labels=torch.from_numpy(block.labels[j]).clone(),
                    scale=torch.from_numpy(block.scale[j]).clone(),
                    true_model=torch.from_numpy(block.true_models[j]).clone()))
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
