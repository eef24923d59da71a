"""`data.kind: client_files`: softmax regression on per-client files (pfl_dist/data/client_files.py).

Each rank reads only its own clients' files. Features are divided per client by their standard
deviation (no centring) when `data.scale_features` is true, or auto on CSV files: what the
reference code does before training, so a rerun of its data with its initial model
(`model.init_file`) and step sizes is the same computation. With `local_true_model.npy` present,
ITR and ATR are reported exactly as on synthetic data (pfl_dist/tasks/linear_clients.py).

Held-out rows: with `data.test_fraction` set (in (0, 1)), each client's rows are split into
training and test rows by `train_test_split_client` (pfl_dist/data/partition.py, the images'
split), drawn from (run.seed, client id) only, so the split is the same on any number of
processes. The test rows are never trained on: the local solver, the smoothness bound L and
the feature scale see only the training rows, and the losses and accuracies are measured on the
test rows (named eval/...). `auto` (the default) keeps every row for training, as the reference
code does, and the losses and accuracies are then measured on those training rows (train/...).
With `data.val_fraction` > 0 the training rows (what the test split left) are split again, by the
images' `validation_split_client` from (run.seed, client id): the validation rows are never
trained on (nor enter L or the feature scale) and each client's own model is measured on them as
val/loss_personal and val/acc_personal.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pfl_dist.config import Config
from pfl_dist.data.client_files import (
    ClientArrays,
    client_rows,
    data_directory,
    detect_format,
    feature_scale,
    read_client,
    read_true_models,
    true_model_rows,
    true_models_file,
)
from pfl_dist.data.layout import client_file
from pfl_dist.data.lazy import client_cache, lazy_data
from pfl_dist.data.partition import train_test_split_client, validation_split_client
from pfl_dist.errors import DataError
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.tasks.lazy_rows import LazyRows
from pfl_dist.tasks.linear_clients import BLOCK, LinearClientsTask, block_smoothness


def _build_model(cfg: Config) -> LinearSoftmax:
    return LinearSoftmax(cfg.data.dim, cfg.data.num_classes, bias=cfg.model.kind == "logreg")


def scales_features(cfg: Config, fmt: str) -> bool:
    return fmt == "csv" if cfg.data.scale_features == "auto" else bool(cfg.data.scale_features)


def held_out_split(cfg: Config, client: int, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows) of client `client`'s `num_rows` rows: from (run.seed, client
    id) alone, so any rank computes the same split; no test rows with test_fraction auto."""
    fraction = cfg.data.held_out_fraction
    if fraction == 0:
        return np.arange(num_rows), np.zeros(0, dtype=np.int64)
    try:
        return train_test_split_client(np.arange(num_rows), test_fraction=fraction, seed=cfg.run.seed,
                                       client_id=client)
    except DataError:  # too few rows to hold some out: name the key and the client
        raise DataError(f"data.test_fraction={fraction:g}: client {client + 1} has {num_rows} row(s), too few to "
                        "hold a test split out and still train") from None


def validation_split(cfg: Config, client: int, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of client `client`'s training rows (data.val_fraction; the
    images' `validation_split_client`, from (run.seed, client id) alone); none at 0."""
    fraction = cfg.data.val_fraction
    try:
        return validation_split_client(train_rows, val_fraction=fraction, seed=cfg.run.seed, client_id=client)
    except DataError:  # too few training rows to hold some out: name the key and the client
        raise DataError(f"data.val_fraction={fraction:g}: client {client + 1} has {len(train_rows)} training "
                        "row(s), too few to hold validation rows out and still train") from None


def client_split(cfg: Config, client: int, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, test rows, validation rows) of client `client`'s `num_rows` rows: the
    held-out split, then the validation rows out of what it left for training."""
    train, test = held_out_split(cfg, client, num_rows)
    train, val = validation_split(cfg, client, train)
    return train, test, val


def _rows(arrays: ClientArrays, rows: np.ndarray) -> ClientArrays:
    return ClientArrays(features=arrays.features[rows], labels=arrays.labels[rows])


def _padded(clients: list[ClientArrays], scale: np.ndarray, *, device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Scaled features (k, n_max, d) and labels (k, n_max), zero-padded, and the row counts."""
    counts = [len(c.labels) for c in clients]
    features = np.zeros((len(clients), max(counts, default=0), scale.shape[1]))
    labels = np.zeros((len(clients), features.shape[1]), dtype=np.int64)
    for i, client in enumerate(clients):
        features[i, : counts[i]] = client.features / scale[i]
        labels[i, : counts[i]] = client.labels
    return torch.from_numpy(features).to(device, dtype), torch.from_numpy(labels).to(device), counts


def _padded_client(arrays: ClientArrays, scale: np.ndarray, length: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's row of `_padded`: scaled features (length, d) in `dtype` and labels (length,),
    zero-padded, computed as `_padded` computes them (float64, then cast)."""
    features = np.zeros((length, scale.shape[0]))
    labels = np.zeros(length, dtype=np.int64)
    features[: len(arrays.labels)] = arrays.features / scale
    labels[: len(arrays.labels)] = arrays.labels
    return torch.from_numpy(features).to(dtype), torch.from_numpy(labels)


class FileClient(NamedTuple):
    """One client's tensors with lazy data: its row of each of the eager task's tensors (padded to
    the rank's longest client, as they are). None where the run has no such rows."""

    features: torch.Tensor  # (n_max, d) scaled training features, the run's dtype
    labels: torch.Tensor  # (n_max,) int64
    scale: torch.Tensor  # (d,) float64
    true_model: torch.Tensor | None  # (C, d) float64 W_k
    test_features: torch.Tensor | None  # data.test_fraction: the held-out rows
    test_labels: torch.Tensor | None
    val_features: torch.Tensor | None  # data.val_fraction: the validation rows
    val_labels: torch.Tensor | None


class ClientFilesTask(LinearClientsTask):
    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        data = cfg.data
        self.cfg = cfg
        self.client_ids = client_ids
        self.dtype = dtype
        self.device = device
        self.model = _build_model(cfg)
        self.num_params = self.model.num_params
        directory = data_directory(data.data_dir)
        fmt = detect_format(directory, client_ids.start)
        self.lazy = lazy_data(cfg)
        if self.lazy:
            self._init_lazy(directory, fmt)
            return
        clients = [read_client(directory, c, fmt=fmt, dim=data.dim, num_classes=data.num_classes) for c in client_ids]
        self.arrays: list[ClientArrays] = clients  # as read, for inspection
        splits = [held_out_split(cfg, client, len(arrays.labels)) for client, arrays in zip(client_ids, clients,
                                                                                          strict=True)]
        validation = [validation_split(cfg, client, rows) for client, (rows, _) in zip(client_ids, splits, strict=True)]
        splits = [(train_rows, test_rows) for (train_rows, _), (_, test_rows) in zip(validation, splits, strict=True)]
        train = [_rows(arrays, rows) for arrays, (rows, _) in zip(clients, splits, strict=True)]
        scale = np.ones((len(clients), data.dim))
        for i, arrays in enumerate(train):
            if scales_features(cfg, fmt):
                scale[i] = feature_scale(arrays.features)  # of the training rows only
        self.features, self.labels, counts = _padded(train, scale, device=device, dtype=dtype)
        self.scale = torch.from_numpy(scale).to(device)
        truth = read_true_models(directory, client_ids, num_clients=data.num_clients, dim=data.dim,
                                 num_classes=data.num_classes)
        # W_k^T, (k, d, C), the model's weight layout, as a view of the (k, C, d) file rows.
        self.true_models = None if truth is None else torch.from_numpy(truth).to(device).transpose(1, 2)
        self._set_counts(counts, device)
        if data.held_out_fraction > 0:
            test = [_rows(arrays, rows) for arrays, (_, rows) in zip(clients, splits, strict=True)]
            self.test_rows = [rows for _, rows in splits]  # each client's held-out row numbers, for inspection
            self._set_eval(*_padded(test, scale, device=device, dtype=dtype), measured_on="eval")
        if data.val_fraction > 0:
            val = [_rows(arrays, rows) for arrays, (_, rows) in zip(clients, validation, strict=True)]
            self.val_row_numbers = [rows for _, rows in validation]  # each client's validation row numbers
            self.val_rows = _padded(val, scale, device=device, dtype=dtype)

    def _init_lazy(self, directory: Path, fmt: str) -> None:
        """Lazy data: each client's row count (a CSV's lines counted, an .npz's header; no number
        parsed) and its splits' sizes, for the counts and the padded lengths; the true models'
        file memory-mapped. A client's file is read when it is sampled or evaluated (`_materialize`)."""
        cfg, data, device, ids = self.cfg, self.cfg.data, self.device, self.client_ids
        self._directory, self._fmt, self._scaled = directory, fmt, scales_features(cfg, fmt)
        self._num_rows = [client_rows(directory, c, fmt=fmt, dim=data.dim) for c in ids]
        counts, test_counts, val_counts = [], [], []
        for client, num_rows in zip(ids, self._num_rows, strict=True):
            train, test, val = client_split(cfg, client, num_rows)  # sizes only: not kept
            counts.append(len(train))
            test_counts.append(len(test))
            val_counts.append(len(val))
        self._lengths = (max(counts, default=0), max(test_counts, default=0), max(val_counts, default=0))
        self._truth = true_models_file(directory, num_clients=data.num_clients, dim=data.dim,
                                       num_classes=data.num_classes)
        self.cache = client_cache(cfg, ids, self._materialize)
        rows = functools.partial(LazyRows, self.cache, first_id=ids.start, device=device)
        k, d, c = len(ids), data.dim, data.num_classes
        self.features = rows(field="features", shape=(k, self._lengths[0], d), dtype=self.dtype)  # type: ignore
        self.labels = rows(field="labels", shape=(k, self._lengths[0]), dtype=torch.long)  # type: ignore
        self.scale = rows(field="scale", shape=(k, d), dtype=torch.float64)  # type: ignore[assignment]
        self.true_models = None if self._truth is None else rows(  # type: ignore[assignment]
            field="true_model", shape=(k, d, c), dtype=torch.float64, transposed=True)
        self._set_counts(counts, device)
        if data.held_out_fraction > 0:
            self._set_eval(rows(field="test_features", shape=(k, self._lengths[1], d), dtype=self.dtype),  # type: ignore
                           rows(field="test_labels", shape=(k, self._lengths[1]), dtype=torch.long),  # type: ignore
                           test_counts, measured_on="eval")
        if data.val_fraction > 0:
            self.val_rows = (rows(field="val_features", shape=(k, self._lengths[2], d), dtype=self.dtype),  # type: ignore
                             rows(field="val_labels", shape=(k, self._lengths[2]), dtype=torch.long),
                             val_counts)

    def _materialize(self, ids: list[int]) -> list[FileClient]:
        """The clients of `ids` (global) read from their files, split and scaled as the eager task
        does, each padded to the rank's lengths: their rows of the eager tensors, bit for bit."""
        data, out = self.cfg.data, []
        train_length, test_length, val_length = self._lengths
        for client in ids:
            arrays = read_client(self._directory, client, fmt=self._fmt, dim=data.dim, num_classes=data.num_classes)
            expected = self._num_rows[client - self.client_ids.start]
            if len(arrays.labels) != expected:
                raise DataError(f"{client_file(self._directory, client, self._fmt)}: holds {len(arrays.labels)} "
                                f"samples, {expected} when the run started: a client's file changed during the run")
            train_rows, test_rows, val_rows = client_split(self.cfg, client, expected)
            train = _rows(arrays, train_rows)
            scale = feature_scale(train.features) if self._scaled else np.ones(data.dim)  # of the training rows
            features, labels = _padded_client(train, scale, train_length, self.dtype)
            test = (_padded_client(_rows(arrays, test_rows), scale, test_length, self.dtype)
                    if data.held_out_fraction > 0 else (None, None))
            val = (_padded_client(_rows(arrays, val_rows), scale, val_length, self.dtype)
                   if data.val_fraction > 0 else (None, None))
            truth = (None if self._truth is None
                     else torch.from_numpy(true_model_rows(self._truth, [client], self._directory)[0]))
            out.append(FileClient(features, labels, torch.from_numpy(scale), truth, *test, *val))
        return out

    def local_smoothness(self) -> float:
        """Lazy data: every client of this rank read once, a block at a time, and not kept (the
        eager blocks and arithmetic, so the same bound bit for bit); eager: the stored rows."""
        if not self.lazy:
            return super().local_smoothness()
        largest = -math.inf
        for start in range(0, len(self.client_ids), BLOCK):
            block = self._materialize(list(self.client_ids[start: start + BLOCK]))
            features = torch.stack([client.features for client in block]).to(self.device)
            largest = max(largest, block_smoothness(features, None if self.equal_counts
                                                    else self.counts[start: start + BLOCK]))
        return largest

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """Every client's file (and its held-out split), the true models and the init file, read
        and checked once."""
        data = cfg.data
        directory = data_directory(data.data_dir)
        fmt = detect_format(directory)
        for client in range(data.num_clients):
            arrays = read_client(directory, client, fmt=fmt, dim=data.dim, num_classes=data.num_classes)
            validation_split(cfg, client, held_out_split(cfg, client, len(arrays.labels))[0])
        read_true_models(directory, range(data.num_clients), num_clients=data.num_clients, dim=data.dim,
                         num_classes=data.num_classes)
        check_init_file(cfg.model.init_file, _build_model(cfg))

    def init_model(self) -> torch.Tensor:
        """N(0, 1) weights from run.seed (as on synthetic data); model.init_file replaces it."""
        generator = torch.Generator().manual_seed(self.cfg.run.seed)
        return self.model.init_params(generator, dtype=self.dtype).to(self.features.device)
