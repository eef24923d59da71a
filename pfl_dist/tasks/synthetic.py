"""Softmax regression on the paper's synthetic clients, with the paper's ATR and ITR metrics.

The data comes from pfl_dist/data/synthetic.py (each rank generates only its own clients); the
solver, smoothness bound and metrics (ITR, ATR, losses and accuracies on the clients' training
samples) are the ones every linear per-client task shares (pfl_dist/tasks/linear_clients.py).
"""

from __future__ import annotations

import torch

from pfl_dist.config import Config
from pfl_dist.data.synthetic import generate_clients
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.tasks.linear_clients import LinearClientsTask

_GENERATION_BLOCK = 256  # clients generated per numpy block


class SyntheticTask(LinearClientsTask):
    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        data = cfg.data
        self.cfg = cfg
        self.client_ids = client_ids
        self.model = LinearSoftmax(data.dim, data.num_classes, bias=False)
        self.num_params = self.model.num_params
        self.dtype = dtype
        num_clients, n, d, c = len(client_ids), data.samples_per_client, data.dim, data.num_classes
        self.features = torch.empty(num_clients, n, d, dtype=dtype)
        self.labels = torch.empty(num_clients, n, dtype=torch.long)
        self.scale = torch.empty(num_clients, d, dtype=torch.float64)
        # W_k^T, (k, d, C): the truth in the same layout as the model's weight matrix, viewed
        # from (k, C, d) memory as it always was: reductions over it depend on the memory order.
        true_models = torch.empty(num_clients, c, d, dtype=torch.float64).transpose(1, 2)
        # Blocks bound the float64 working memory (100,000 clients fit) and stay cache-sized.
        for start in range(0, num_clients, _GENERATION_BLOCK):
            ids = client_ids[start: start + _GENERATION_BLOCK]
            block = generate_clients(ids, seed=cfg.run.seed, num_clients=data.num_clients, num_samples=n, dim=d,
                                     num_classes=c, R=data.R, center_scale=data.center_scale)
            rows = slice(start, start + len(ids))
            self.features[rows] = torch.from_numpy(block.features)
            self.labels[rows] = torch.from_numpy(block.labels)
            self.scale[rows] = torch.from_numpy(block.scale)
            true_models[rows] = torch.from_numpy(block.true_models).transpose(1, 2)
        self.features, self.labels = self.features.to(device), self.labels.to(device)
        self.scale, self.true_models = self.scale.to(device), true_models.to(device)
        self._set_counts([n] * num_clients, device)

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """The data is generated from (seed, client id) on each rank; only an init file to check."""
        check_init_file(cfg.model.init_file, LinearSoftmax(cfg.data.dim, cfg.data.num_classes, bias=False))

    def init_model(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        return self.model.init_params(generator, dtype=self.dtype).to(self.features.device)
