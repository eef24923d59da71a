"""`data.kind: client_files`: softmax regression on per-client files (pfl_dist/data/client_files.py).

Each rank reads only its own clients' files. Features are divided per client by their standard
deviation (no centring) when `data.scale_features` is true, or auto on CSV files: what the
reference code does before training, so a rerun of its data with its initial model
(`model.init_file`) and step sizes is the same computation. With `local_true_model.npy` present,
ITR and ATR are reported exactly as on synthetic data (pfl_dist/tasks/linear_clients.py).
"""

from __future__ import annotations

import numpy as np
import torch

from pfl_dist.config import Config
from pfl_dist.data.client_files import (
    ClientArrays,
    data_directory,
    detect_format,
    feature_scale,
    read_client,
    read_true_models,
)
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.tasks.linear_clients import LinearClientsTask


def _build_model(cfg: Config) -> LinearSoftmax:
    return LinearSoftmax(cfg.data.dim, cfg.data.num_classes, bias=cfg.model.kind == "logreg")


def scales_features(cfg: Config, fmt: str) -> bool:
    return fmt == "csv" if cfg.data.scale_features == "auto" else bool(cfg.data.scale_features)


class ClientFilesTask(LinearClientsTask):
    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        data = cfg.data
        self.cfg = cfg
        self.client_ids = client_ids
        self.dtype = dtype
        self.model = _build_model(cfg)
        self.num_params = self.model.num_params
        directory = data_directory(data.data_dir)
        fmt = detect_format(directory, client_ids.start)
        clients = [read_client(directory, c, fmt=fmt, dim=data.dim, num_classes=data.num_classes) for c in client_ids]
        self.arrays: list[ClientArrays] = clients  # as read, for inspection
        counts = [len(c.labels) for c in clients]
        scale = np.ones((len(clients), data.dim))
        features = np.zeros((len(clients), max(counts, default=0), data.dim))
        labels = np.zeros((len(clients), features.shape[1]), dtype=np.int64)
        for i, client in enumerate(clients):
            if scales_features(cfg, fmt):
                scale[i] = feature_scale(client.features)
            features[i, : counts[i]] = client.features / scale[i]
            labels[i, : counts[i]] = client.labels
        self.features = torch.from_numpy(features).to(device, dtype)
        self.labels = torch.from_numpy(labels).to(device)
        self.scale = torch.from_numpy(scale).to(device)
        truth = read_true_models(directory, client_ids, num_clients=data.num_clients, dim=data.dim,
                                 num_classes=data.num_classes)
        # W_k^T, (k, d, C), the model's weight layout, as a view of the (k, C, d) file rows.
        self.true_models = None if truth is None else torch.from_numpy(truth).to(device).transpose(1, 2)
        self._set_counts(counts, device)

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """Every client's file, the true models and the init file, read and checked once."""
        data = cfg.data
        directory = data_directory(data.data_dir)
        fmt = detect_format(directory)
        for client in range(data.num_clients):
            read_client(directory, client, fmt=fmt, dim=data.dim, num_classes=data.num_classes)
        read_true_models(directory, range(data.num_clients), num_clients=data.num_clients, dim=data.dim,
                         num_classes=data.num_classes)
        check_init_file(cfg.model.init_file, _build_model(cfg))

    def init_model(self) -> torch.Tensor:
        """N(0, 1) weights from run.seed (as on synthetic data); model.init_file replaces it."""
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        return self.model.init_params(generator, dtype=self.dtype).to(self.features.device)
