"""The paper's image experiments (docs/METHOD.md §4) as a Task: MNIST / Fashion-MNIST / mnist5k,
CIFAR-10 and LEAF (FEMNIST) clients.

Data. Every rank loads the dataset (numpy, read-only), partitions the whole training split into
`data.num_partitions` clients with the configured partitioner, picks the experiment's
`data.num_clients` of them by seed (`select_clients`), and splits each picked client 90/10 into
train/test (`train_test_split_client`, keyed by the partition id). All of that is label
arithmetic on every rank; only the rank's own clients are turned into tensors. Experiment client
c is partition `selected[c]`; `client_index_sets` is the one function that maps clients to
sample index sets, so a 1-rank and an N-rank run use the same partition by construction.
LEAF data comes partitioned (one client per writer, with its own test samples): the dataset's
`clients` replaces the partitioner (`dataset_clients`). With `data.val_fraction` > 0 each
client's training indices are then split into training and validation rows (`with_validation`,
keyed by (seed, partition id) on a stream of its own: the test rows are the same with or without
it); the validation rows are never trained on (nor enter the class mask, the naive baseline or L).
With lazy data (data.lazy, pfl_dist/data/lazy.py) the images of a client are gathered (`LazyRows`)
only when it is sampled or evaluated; the labels and everything computed from them stay.

Features are pixels / 255 in [0, 1], neither centred nor standardised (the paper's
ToTensor-only pipeline); LEAF's float samples are used as stored. The input shape and class
count are the dataset's (`ImageDataset.input_shape`, `num_classes`): flat vectors for the linear
models (784 for 28x28, 3072 for CIFAR-10), (channels, height, width) for the CNN.

Metrics (all additive float64 sums, reduced by the engine's one evaluation all-reduce):
- val/acc_personal / val/loss_personal (data.val_fraction > 0): the same on each client's
  validation rows, named with their split (what a sweep's `tune` selects by, never eval/).
- acc_personal / loss_personal: each client's own model on its own test split, with the
  prediction restricted to the classes present in the client's training split (logits of other
  classes are masked to -inf before argmax and softmax), weighted by test samples.
- naive_acc / naive_loss: the class-frequency baseline: predict the client's training class
  frequencies (argmax for accuracy, the frequencies as probabilities for the loss).
  improvement_over_naive = acc_personal - naive_acc.
- acc_global / loss_global: w_g on the official test set. The test set is cut into
  num_clients contiguous slices and each rank evaluates the slices of its own clients, so every
  test image is evaluated exactly once per job on any world size.
Log-probabilities are floored at log(1e-12) in both losses, so a test image of a class its
client never trained on (possible only with the dirichlet/iid partitioners) costs a finite 27.6.

Models (the model registry, pfl_dist/models/__init__.py): logreg/linear on flat pixels, and any
model built from a `torch.nn.Module` factory: the paper's CNN (`cnn`) or a plug-in
`package.module:factory`, given the dataset's (channels, height, width) and class count, through
the same wrapper (pfl_dist/models/module.py). A module model's body/head split for FedRep and
FedPer is the registry's (the CNN's fc2) or the plug-in's `model.head`.

Smoothness (for algorithm.smoothness = auto): logreg/linear use docs/METHOD.md §2's bound
max_i lambda_max(X_i^T X_i) / (4 n_i) on the [0, 1] pixels (with a column of ones for the bias).
The module models have no such constant: a config that would need it (local_lr, FedCLUP's
global_lr or pFedMe's personal_lr left at auto) is rejected with a ConfigError naming them, and
otherwise L is reported as 0 (unused).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from pfl_dist.config import Config
from pfl_dist.data.cifar import load_cifar10
from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE, ImageDataset, load_images
from pfl_dist.data.lazy import ClientCache, client_cache, lazy_data
from pfl_dist.data.leaf import load_leaf
from pfl_dist.data.partition import (
    partition_classes,
    partition_dirichlet,
    partition_iid,
    select_clients,
    train_test_split_client,
    validation_split_client,
)
from pfl_dist.errors import ConfigError, DataError
from pfl_dist.models import ModelEntry, model_entry
from pfl_dist.models.init_file import check_init_file
from pfl_dist.models.linear import LinearSoftmax
from pfl_dist.models.module import ModuleModel
from pfl_dist.solvers.padded import full_batch_weights
from pfl_dist.tasks.base import Batch, padded_batches
from pfl_dist.tasks.lazy_rows import LazyRows

LOG_PROB_FLOOR = math.log(1e-12)
EVAL_CHUNK = 1000  # global-test images per forward pass (bounds CNN activation memory)


class LogRegModel:
    """LinearSoftmax on flat pixels, with the weighted minibatch gradient local SGD needs.
    The default size is the paper's (Fashion-)MNIST: 784 pixels, 10 classes."""

    def __init__(self, *, bias: bool, num_features: int = math.prod(MNIST_INPUT_SHAPE),
                 num_classes: int = MNIST_CLASSES) -> None:
        self.input_shape = (num_features,)
        self.num_classes = num_classes
        self.linear = LinearSoftmax(num_features, num_classes, bias=bias)
        self.num_params = self.linear.num_params

    def init_params(self, seed: int, *, dtype: torch.dtype) -> torch.Tensor:
        """nn.Linear's default U(-1/sqrt(D), 1/sqrt(D)) for D inputs from a fixed seed (not the
        synthetic N(0, 1): on 784 pixels that starts every client with logits of size ~10)."""
        bound = 1.0 / math.sqrt(self.input_shape[0])
        generator = torch.Generator().manual_seed(seed)
        params = torch.rand(self.num_params, generator=generator, dtype=torch.float64) * 2 * bound - bound
        return params.to(dtype)

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.linear.state_dict(flat)

    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.linear.logits(params, x)

    def weighted_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """Analytic: X^T ((softmax - onehot) * w), two batched matmuls for all k clients."""
        return self.linear.weighted_grad(params, x, y, weights)


ImageModel = LogRegModel | ModuleModel


def image_model_entry(cfg: Config) -> ModelEntry:
    """The model registry's entry of model.kind on images (auto = logreg; a plug-in's head is model.head)."""
    return model_entry("logreg" if cfg.model.kind == "auto" else cfg.model.kind, head=cfg.model.head)


def build_image_model(kind: str, *, input_shape: tuple[int, ...], num_classes: int,
                      head: str | None = None) -> ImageModel:
    """model.kind: auto and logreg = multinomial logistic regression with bias; linear = without;
    a kind with a module factory (cnn = the paper's CNN, or a plug-in 'package.module:factory', whose
    head prefix is `head`) = that module, batched over clients. Sized for the dataset's samples
    (channels, height, width) and classes."""
    entry = model_entry("logreg" if kind == "auto" else kind, head=head)
    if entry.factory is not None:
        return ModuleModel.from_entry(entry, input_shape=input_shape, num_classes=num_classes)
    return LogRegModel(bias=kind != "linear", num_features=math.prod(input_shape), num_classes=num_classes)


@dataclass(frozen=True)
class ClientSplit:
    client_id: int  # the experiment's stable client id, 0..num_clients-1
    partition_id: int  # which of the num_partitions partitions it is
    train: np.ndarray  # sorted indices into the official training split
    test: np.ndarray
    # validation rows (data.val_fraction): held out of `train`, never trained on
    val: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))


PAPER_CLIENT_SIZE = 200  # 60000 training images over 300 clients (docs/METHOD.md §4)


def num_partitions(cfg: Config, num_train: int) -> int:
    """data.num_partitions, where 'auto' keeps the paper's client size of 200 images: 300
    partitions of (Fashion-)MNIST, 20 of the 4,000 mnist5k training images."""
    if cfg.data.num_partitions != "auto":
        return int(cfg.data.num_partitions)
    return max(cfg.data.num_clients, num_train // PAPER_CLIENT_SIZE)


def _partition(cfg: Config, labels: np.ndarray) -> list[np.ndarray]:
    data, seed = cfg.data, cfg.run.seed
    parts = num_partitions(cfg, len(labels))
    if data.partition == "classes":
        return partition_classes(labels, num_partitions=parts, classes_per_client=data.classes_per_client, seed=seed)
    if data.partition == "dirichlet":
        return partition_dirichlet(labels, num_partitions=parts, alpha=data.alpha, seed=seed)
    return partition_iid(labels, num_partitions=parts, seed=seed)


def client_index_sets(cfg: Config, train_labels: np.ndarray, *, client_ids: Sequence[int]) -> list[ClientSplit]:
    """Train/test sample indices of the experiment clients `client_ids`; rank-independent."""
    check_image_config(cfg)
    partitions = _partition(cfg, train_labels)
    selected = select_clients(len(partitions), num_clients=cfg.data.num_clients, seed=cfg.run.seed)
    splits = []
    for client_id in client_ids:
        partition_id = int(selected[client_id])
        train, test = train_test_split_client(partitions[partition_id], test_fraction=cfg.data.held_out_fraction,
                                              seed=cfg.run.seed, client_id=partition_id)
        splits.append(ClientSplit(client_id=client_id, partition_id=partition_id, train=train, test=test))
    return splits


def with_validation(cfg: Config, splits: Sequence[ClientSplit]) -> list[ClientSplit]:
    """Each client's training rows split into training and validation rows (data.val_fraction,
    `validation_split_client`, keyed by (seed, partition id) like the test split: the same on any
    number of processes). The test rows are untouched; 0 leaves every split as it is."""
    fraction = cfg.data.val_fraction
    if fraction == 0:
        return list(splits)
    out = []
    for split in splits:
        try:
            train, val = validation_split_client(split.train, val_fraction=fraction, seed=cfg.run.seed,
                                                 client_id=split.partition_id)
        except DataError:  # too few training rows: name the key and the client
            raise DataError(f"data.val_fraction={fraction:g}: client {split.client_id} has {len(split.train)} "
                            "training row(s), too few to hold validation rows out and still train") from None
        out.append(dataclasses.replace(split, train=train, val=val))
    return out


def keys_needing_smoothness(cfg: Config) -> list[str]:
    """The step sizes left at auto whose value needs L: local_lr, FedCLUP's global_lr (1/lam + 1/L),
    pFedMe's personal_lr (1/(L + lam))."""
    algo = cfg.algorithm
    needs = {"local_lr": algo.local_lr == "auto", "global_lr": algo.name == "fedclup" and algo.global_lr == "auto",
             "personal_lr": algo.name == "pfedme" and algo.personal_lr == "auto"}
    return [f"algorithm.{key}" for key, needed in needs.items() if needed]


def check_image_config(cfg: Config) -> None:
    """Config errors that only image runs can have."""
    data = cfg.data
    if data.num_partitions != "auto" and data.num_clients > data.num_partitions:
        raise ConfigError(f"data.num_clients ({data.num_clients}) must be <= data.num_partitions "
                          f"({data.num_partitions}): the experiment uses num_clients of the partitioned clients")
    needing = keys_needing_smoothness(cfg)
    if not image_model_entry(cfg).smoothness and cfg.algorithm.smoothness == "auto" and needing:
        several = len(needing) > 1
        raise ConfigError(f"algorithm.smoothness 'auto' has no formula for model.kind {cfg.model.kind!r}, which "
                          f"'auto' of {' and '.join(needing)} need{'' if several else 's'}: set "
                          f"{'them' if several else 'it'} "
                          "(the paper's CNN runs use local_lr 0.01 and global_lr 1/lam), or an explicit smoothness")


@functools.lru_cache(maxsize=1)
def _dataset(kind: str, data_dir: str | None, download: bool) -> ImageDataset:
    """The dataset, read once per process: an in-job sweep builds one ImageTask per point on the
    same files (~0.3 s each), and the loaded arrays are read-only, so sharing them is safe."""
    if kind == "cifar10":
        return load_cifar10(data_dir)
    return load_images(kind, data_dir=data_dir, download=download)


@functools.lru_cache(maxsize=1)
def _leaf_dataset(data_dir: str | None, min_samples: int, num_clients: int, seed: int) -> ImageDataset:
    return load_leaf(data_dir, min_samples=min_samples, num_clients=num_clients, seed=seed)


def dataset_for(cfg: Config) -> ImageDataset:
    """The config's dataset; for LEAF only the writers the run uses (chosen by seed)."""
    data = cfg.data
    if data.kind == "leaf":
        return _leaf_dataset(data.data_dir, data.min_samples_per_client, data.num_clients, cfg.run.seed)
    return _dataset(data.kind, data.data_dir, data.download)


def dataset_clients(cfg: Config, dataset: ImageDataset, *, client_ids: Sequence[int]) -> list[ClientSplit]:
    """Train/test sample indices of the experiment clients `client_ids`: the dataset's natural
    partition (LEAF writers; both index sets into `dataset.train`), else `client_index_sets`."""
    if dataset.clients is None:
        return client_index_sets(cfg, dataset.train.labels, client_ids=client_ids)
    check_image_config(cfg)
    return [ClientSplit(client_id=c, partition_id=c, train=dataset.clients[c][0], test=dataset.clients[c][1])
            for c in client_ids]


def preflight(cfg: Config) -> None:
    """Everything a launcher can check before starting ranks: config, files, the partition, the
    initial model's file."""
    dataset = dataset_for(cfg)
    with_validation(cfg, dataset_clients(cfg, dataset, client_ids=range(cfg.data.num_clients)))
    model = build_image_model(cfg.model.kind, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                              head=cfg.model.head)
    check_init_file(cfg.model.init_file, model)


def global_test_slice(num_test: int, *, client_ids: range, num_clients: int) -> slice:
    """This rank's contiguous share of the official test set: the slices of its clients."""
    return slice(client_ids.start * num_test // num_clients, client_ids.stop * num_test // num_clients)


def _padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack (n_i, ...) arrays into (k, max n_i, ...), zero-padded."""
    out = np.zeros((len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = array
    return out


def _padded_to(array: np.ndarray, length: int) -> np.ndarray:
    """One client's row of `_padded`: (n, ...) zero-padded to (length, ...)."""
    out = np.zeros((length, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def naive_terms(frequencies: torch.Tensor, test_y: torch.Tensor,
                test_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, n) float64 correct predictions and losses of the class-frequency baseline (each
    client's training class `frequencies` (k, C)) on its padded test labels (k, n); padding 0."""
    valid = _valid(test_counts, test_y.shape[1])
    prediction = frequencies.argmax(dim=1, keepdim=True)
    probs = frequencies.gather(1, test_y)
    log_probs = torch.log(probs).clamp(min=LOG_PROB_FLOOR)
    return ((test_y == prediction) & valid).double(), -(log_probs * valid).double()


class ImageClient(NamedTuple):
    """One client's images with lazy data: its rows of the eager train/test/validation tensors."""

    train_x: torch.Tensor
    test_x: torch.Tensor
    val_x: torch.Tensor


def _valid(counts: torch.Tensor, length: int) -> torch.Tensor:
    """(k, length) True on real samples, False on padding."""
    return torch.arange(length, device=counts.device) < counts.unsqueeze(1)


class ImageTask:
    """This rank's image clients: padded train/test tensors, the model, local SGD and metrics."""

    max_threads: int | None = None  # the runtime's thread rule: CNN and 784-wide batches do split
    metrics_measured_on = "eval"  # accuracies and losses: the clients' test splits and the official test set
    train_x: torch.Tensor  # (k, n_max, *input_shape); with lazy data `LazyRows` (pfl_dist/tasks/lazy_rows.py)
    test_x: torch.Tensor
    val_x: torch.Tensor
    cache: ClientCache[Any]  # lazy data: the clients made (ImageClient here, a subclass's own tuple)

    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        check_image_config(cfg)
        dataset = self.load_dataset(cfg, client_ids)
        self.cfg = cfg
        self.client_ids = client_ids
        self.device = device
        self.dtype = dtype
        self.num_classes = dataset.num_classes
        self.model = build_image_model(cfg.model.kind, input_shape=dataset.input_shape, num_classes=self.num_classes,
                                       head=cfg.model.head)
        self.num_params = self.model.num_params
        self.clients = with_validation(cfg, self.client_splits(cfg, dataset, client_ids))
        self.sample_ndim = dataset.train.images.ndim - 1  # dims of one stored sample
        self._materialize_clients(dataset)
        shard = self.global_test_shard(cfg, dataset, client_ids)
        self.global_x = self._features(dataset.test.images[shard])
        self.global_y = torch.from_numpy(np.array(dataset.test.labels[shard])).to(device)
        self.naive_sums = self._naive_sums()

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        preflight(cfg)

    # --- where the samples come from (a plug-in dataset's DatasetTask overrides these) ------

    def load_dataset(self, cfg: Config, client_ids: range) -> ImageDataset:
        """The samples this rank needs, as an ImageDataset: here the whole data set, shared per process."""
        return dataset_for(cfg)

    def client_splits(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> list[ClientSplit]:
        """Train/test indices into `dataset.train` of the clients `client_ids`."""
        return dataset_clients(cfg, dataset, client_ids=client_ids)

    def global_test_shard(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> slice:
        """The part of `dataset.test` this rank evaluates w_g on: the slices of its clients."""
        return global_test_slice(len(dataset.test), client_ids=client_ids, num_clients=cfg.data.num_clients)

    # --- data -----------------------------------------------------------------------------

    def _features(self, images: np.ndarray) -> torch.Tensor:
        """Stored samples (..., *sample shape) -> features in the model's input shape: uint8 pixels
        / 255, float samples (LEAF) as they are."""
        features = torch.from_numpy(np.array(images)).to(self.device, self.dtype)
        if images.dtype == np.uint8:
            features.div_(255.0)
        return features.reshape(*images.shape[: images.ndim - self.sample_ndim], *self.model.input_shape)

    def _materialize_clients(self, dataset: ImageDataset) -> None:
        """Padded (k, max n_i, ...) tensors of this rank's clients' train and test samples. With
        lazy data (data.lazy) the images are `LazyRows`: a client's are gathered from the dataset
        (loaded once per process) when it is sampled or evaluated; the labels stay (cheap)."""
        source = dataset.train  # a client's test split is held-out images of its own partition
        self.lazy = lazy_data(self.cfg)
        self.train_counts = [len(c.train) for c in self.clients]
        if self.lazy:
            self._source = source
            self._lengths = tuple(max(len(getattr(c, split)) for c in self.clients)
                                  for split in ("train", "test", "val"))
            self.cache = client_cache(self.cfg, self.client_ids, self._materialize)
            shape = (len(self.clients), *self.model.input_shape)
            field = functools.partial(LazyRows, self.cache, first_id=self.client_ids.start, dtype=self.dtype,
                                      device=self.device)
            self.train_x = field(field="train_x", shape=(shape[0], self._lengths[0], *shape[1:]))  # type: ignore
            self.test_x = field(field="test_x", shape=(shape[0], self._lengths[1], *shape[1:]))  # type: ignore
        else:
            self.train_x = self._features(_padded([source.images[c.train] for c in self.clients]))
            self.test_x = self._features(_padded([source.images[c.test] for c in self.clients]))
        self.train_y = torch.from_numpy(_padded([source.labels[c.train] for c in self.clients])).to(self.device)
        self.test_y = torch.from_numpy(_padded([source.labels[c.test] for c in self.clients])).to(self.device)
        self.test_counts = torch.tensor([len(c.test) for c in self.clients], device=self.device)
        self.val_counts: torch.Tensor | None = None  # data.val_fraction: the validation rows, measured as val/...
        if self.cfg.data.val_fraction > 0:
            self.val_x = (field(field="val_x", shape=(shape[0], self._lengths[2], *shape[1:]))  # type: ignore
                          if self.lazy else self._features(_padded([source.images[c.val] for c in self.clients])))
            self.val_y = torch.from_numpy(_padded([source.labels[c.val] for c in self.clients])).to(self.device)
            self.val_counts = torch.tensor([len(c.val) for c in self.clients], device=self.device)
        self.sample_counts = torch.tensor(self.train_counts, dtype=self.dtype, device=self.device)
        class_counts = np.stack([np.bincount(source.labels[c.train], minlength=self.num_classes) for c in self.clients])
        frequencies = class_counts / class_counts.sum(axis=1, keepdims=True)
        self.class_frequencies = torch.from_numpy(frequencies).to(self.device)
        self.class_mask = self.class_frequencies > 0  # (k, C): the classes each client trained on

    def _materialize(self, ids: list[int]) -> list[ImageClient]:
        """Lazy data: the clients of `ids` (global) gathered from the dataset and padded to the
        rank's lengths as the eager tensors are (their rows of them, bit for bit)."""
        out = []
        for client in ids:
            split = self.clients[client - self.client_ids.start]
            parts = [self._features(_padded_to(self._source.images[getattr(split, name)], length))
                     for name, length in zip(("train", "test", "val"), self._lengths, strict=True)]
            out.append(ImageClient(*parts))
        return out

    # --- the Task protocol ---------------------------------------------------------------

    def init_model(self) -> torch.Tensor:
        return self.model.init_params(self.cfg.run.seed, dtype=self.dtype).to(self.device)

    def model_state_dict(self, model: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.state_dict(model)

    def local_smoothness(self) -> float:
        """docs/METHOD.md §2's bound for the linear models; 0 (unused, see module doc) for a module model."""
        if isinstance(self.model, ModuleModel):
            return 0.0
        bounds = []
        for i, n in enumerate(self.train_counts):
            # lazy data: each client gathered once for it, not kept
            train_x = self._materialize([self.client_ids.start + i])[0].train_x if self.lazy else self.train_x[i]
            x = train_x[:n].double()
            if self.model.linear.bias:
                x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)
            gram = x @ x.T if n < x.shape[1] else x.T @ x  # same largest eigenvalue, smaller matrix
            bounds.append(float(torch.linalg.eigvalsh(gram)[-1]) / (4 * n))
        return max(bounds)

    def fused_local_phase(
        self, models: torch.Tensor, rows: torch.Tensor, *, anchor: torch.Tensor, lam: float, lr: float, round_idx: int
    ) -> None:
        """No fused solver: the generic loop (`local_sgd` on `batches` and `gradient`) is the
        image solver, vectorized over the rank's clients as it is."""
        return None

    # --- solver primitives (pfl_dist/algorithms/ composes them) ---------------------------

    def parameter_groups(self) -> dict[str, slice] | None:
        """A module model's body and head (the CNN's: convolutions and fc1, and fc2; a plug-in's:
        model.head names the head); the linear models have no split."""
        return self.model.groups() if isinstance(self.model, ModuleModel) else None

    def parameter_shapes(self) -> list[torch.Size]:
        return [t.shape for t in self.model_state_dict(self.init_model()).values()]

    def full_batch(self, rows: torch.Tensor) -> Batch:
        rows = rows.to(self.device)
        counts = [self.train_counts[int(r)] for r in rows]
        weights = full_batch_weights(counts, num_positions=self.train_x.shape[1], dtype=self.dtype)
        return Batch(self.train_x[rows], self.train_y[rows], weights.to(self.device))

    def batches(self, rows: torch.Tensor, *, round_idx: int, epochs: int | None = None,
                stream: int = 0) -> Iterator[Batch]:
        return padded_batches(self.full_batch, self.train_x, self.train_y, rows, counts=self.train_counts,
                              first_client_id=self.client_ids.start, cfg=self.cfg, round_idx=round_idx,
                              epochs=epochs, stream=stream, dtype=self.dtype)

    def gradient(self, models: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.model.weighted_grad(models, batch.x, batch.y, batch.weights)

    # --- metrics -------------------------------------------------------------------------

    def _naive_sums(self) -> dict[str, torch.Tensor]:
        """The class-frequency baseline on each client's test split (constant: computed once):
        this rank's sums, and each client's (k,) correct predictions and summed loss
        (`naive_per_client`, for a cohort)."""
        correct, losses = naive_terms(self.class_frequencies, self.test_y, self.test_counts)
        self.naive_per_client = (correct.sum(dim=1).cpu(), losses.sum(dim=1).cpu())
        return {"naive_correct": correct.sum(), "naive_loss_sum": losses.sum()}

    def _naive_for(self, rows: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The baseline's sums over the clients in `rows` (None: all of this rank), and their (r,)
        correct predictions and summed losses."""
        correct, loss = self.naive_per_client
        if rows is None:
            return self.naive_sums, correct, loss
        correct, loss = correct[rows.cpu()], loss[rows.cpu()]
        return {"naive_correct": correct.sum(), "naive_loss_sum": loss.sum()}, correct, loss

    def _personal_sums(self, local_models: torch.Tensor, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        correct, losses, test_counts = self._personal_terms(local_models, rows, self.test_x, self.test_y,
                                                            self.test_counts)
        client_correct, samples = correct.sum(dim=1).cpu(), test_counts.double().cpu()
        return {
            "num_test_personal": test_counts.double().sum(),
            "correct_personal": correct.sum(),
            "loss_personal_sum": losses.sum(),
            "client/acc_personal": torch.stack([client_correct, samples]),
            "client/loss_personal": torch.stack([losses.sum(dim=1).cpu(), samples]),
        }

    def _val_sums(self, local_models: torch.Tensor, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The personal accuracy and loss on the validation rows (data.val_fraction), as on the test rows."""
        if self.val_counts is None:
            return {}
        correct, losses, counts = self._personal_terms(local_models, rows, self.val_x, self.val_y, self.val_counts)
        return {"val_num_personal": counts.double().sum(), "val_correct_personal": correct.sum(),
                "val_loss_personal_sum": losses.sum()}

    def _personal_terms(self, local_models: torch.Tensor, rows: torch.Tensor | None, x: torch.Tensor,
                        y: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, n) float64 correct predictions and losses of each client's own model on its rows `x`,
        `y` (padding 0), and the (k,) row counts, for the clients in `rows` (None: all)."""
        class_mask = self.class_mask
        if rows is not None:
            rows = rows.to(self.device)
            x, y, counts, class_mask = x[rows], y[rows], counts[rows], class_mask[rows]
        logits = self.model.logits(local_models, x).double()
        logits = logits.masked_fill(~class_mask.unsqueeze(1), -math.inf)
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        valid = _valid(counts, y.shape[1])
        correct = (logits.argmax(dim=-1) == y) & valid
        losses = -(log_probs.clamp(min=LOG_PROB_FLOOR) * valid)
        return correct.double(), losses, counts

    def _global_terms(self, global_model: torch.Tensor, x: torch.Tensor,
                      y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """w_g on the samples `x`, `y`, EVAL_CHUNK at a time: each chunk's (n,) float64 correct
        predictions and losses, on the CPU."""
        params = global_model.to(self.device, self.dtype).unsqueeze(0)
        for xs, ys in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK), strict=True):
            logits = self.model.logits(params, xs.unsqueeze(0))[0].double()
            log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ys.unsqueeze(-1)).squeeze(-1)
            yield (logits.argmax(dim=-1) == ys).double().cpu(), -log_probs.clamp(min=LOG_PROB_FLOOR).cpu()

    def _global_sums(self, global_model: torch.Tensor, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """w_g on this rank's share of the official test set, whatever `rows` (the cohort)."""
        correct = torch.zeros((), dtype=torch.float64)
        loss = torch.zeros((), dtype=torch.float64)
        for hits, losses in self._global_terms(global_model, self.global_x, self.global_y):
            loss += losses.sum()
            correct += hits.sum()
        return {"num_test_global": torch.tensor(float(len(self.global_y)), dtype=torch.float64),
                "correct_global": correct, "loss_global_sum": loss}

    def metric_sums(self, local_models: torch.Tensor, global_model: torch.Tensor,
                    rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The personal and baseline metrics of the clients in `rows` (None: every client of this
        rank; local_models holds their models, in that order), w_g's on this rank's share of the
        official test set (the same for any cohort: no per-client pair, no standard error)."""
        personal = self._personal_sums(local_models, rows)
        naive, correct, loss = self._naive_for(rows)
        samples = personal["client/acc_personal"][1]
        per_client = {"client/naive_acc": torch.stack([correct, samples]),
                      "client/naive_loss": torch.stack([loss, samples]),
                      "client/improvement_over_naive": torch.stack([personal["client/acc_personal"][0] - correct,
                                                                    samples])}
        return {**personal, **self._global_sums(global_model, rows), **naive, **per_client,
                **self._val_sums(local_models, rows)}

    def finalize_metrics(self, sums: dict[str, torch.Tensor], global_model: torch.Tensor) -> dict[str, float]:
        personal = float(sums["num_test_personal"])
        num_global = float(sums["num_test_global"])
        acc_personal = float(sums["correct_personal"]) / personal
        naive_acc = float(sums["naive_correct"]) / personal
        val = {}
        if "val_num_personal" in sums:  # data.val_fraction: the validation rows, named val/...
            num_val = float(sums["val_num_personal"])
            val = {"val/acc_personal": float(sums["val_correct_personal"]) / num_val,
                   "val/loss_personal": float(sums["val_loss_personal_sum"]) / num_val}
        return {
            "acc_personal": acc_personal,
            "acc_global": float(sums["correct_global"]) / num_global,
            "loss_personal": float(sums["loss_personal_sum"]) / personal,
            "loss_global": float(sums["loss_global_sum"]) / num_global,
            "naive_acc": naive_acc,
            "naive_loss": float(sums["naive_loss_sum"]) / personal,
            "improvement_over_naive": acc_personal - naive_acc,
            **val,
        }
