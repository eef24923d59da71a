"""A user's own federated dataset: `data.kind: "package.module:factory"` (docs/EXTENDING.md, "A dataset").

The factory is called with `data.params` as keyword arguments, `factory(**data.params)`, and
returns a federated dataset: any object with
- `num_clients`: how many clients it has (an int >= data.num_clients; the run uses clients
  0..data.num_clients-1);
- `input_shape`: one sample's shape as the model sees it, a tuple of positive ints (`(d,)` for
  feature vectors, `(channels, height, width)` for images);
- `num_classes`: an int >= 2;
- `client(i)`: client i's arrays `(x_train, y_train, x_test, y_test)`: floating-point features of
  shape (n, *input_shape) and integer labels in [0, num_classes) of shape (n,), with at least one
  train and one test row;
and optionally
- `client_size(i)`: client i's row counts `(n_train, n_test)`, two ints >= 1, without its arrays,
  which lazy client data needs (below).
`client(i)` is called only for the clients a rank hosts (and once for every client, one at a
time, by the launcher's preflight), so a dataset can generate or read each client on demand.

Lazy client data (data.lazy, pfl_dist/data/lazy.py): start-up calls `client_size(i)` once per
hosted client (the sample counts and the padded lengths) and `client(i)` for none; `client(i)` is
called when client i is sampled or evaluated, through the rank's `ClientCache`, and its rows of
every per-client tensor (features, labels, validation rows, class frequencies and mask) are the
eager tensors' rows bit for bit (`LazyRows`). The preflight then asks for client 0 only. Without
`client_size`, data.lazy=true is one line naming it (`auto` stays eager); a client whose arrays
do not have client_size's row counts is one line when it is read.

Training is ImageTask's, on these arrays (DatasetTask overrides only where the samples come from):
the same models (linear, logreg, cnn, a plug-in model), solvers, byte ledger and metrics. Two
metrics read the dataset's own split: acc_personal is each client's model on its test rows, and
acc_global is w_g on the union of the evaluated clients' test rows: every client's, or on a
cohort (train.eval_clients N) the cohort's, with each one's pair for a standard error (each rank
evaluates its own clients' rows; the sums are reduced over ranks, so any world size evaluates the
same rows).

Every check is one ConfigError line naming `data.kind`: a module that cannot be imported, a name
that is missing or not callable, a factory that raises or returns something without the four
members, bad metadata, fewer clients than data.num_clients, a client(i) that raises, arrays of the
wrong type, shape or dtype, labels out of range, non-finite features, a client without train or
test rows; with lazy data a missing, raising or ill-typed client_size, or one that disagrees with
client(i).

The run's identity holds `data.params` (in the config) and the sha256 of the factory's module
source (pfl_dist/inputs.py, key `data.kind`), so editing the generator makes another run.

A built-in data kind can be such a dataset: its TASKS entry (pfl_dist/tasks/__init__.py) names
DatasetTask as its target and the factory as `factory` (docs/EXTENDING.md, "As a built-in").
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from pfl_dist.config import Config
from pfl_dist.data.images import ImageDataset, ImageSplit
from pfl_dist.data.lazy import SIZE_MEMBER, client_cache, lazy_data
from pfl_dist.data.partition import validation_size
from pfl_dist.errors import ConfigError, DataError
from pfl_dist.models.init_file import check_init_file
from pfl_dist.plugins import load, parse
from pfl_dist.tasks import task_entry
from pfl_dist.tasks.images import (
    EVAL_CHUNK,
    ClientSplit,
    ImageTask,
    _padded_to,
    _valid,
    build_image_model,
    check_image_config,
    naive_terms,
    with_validation,
)
from pfl_dist.tasks.lazy_rows import LazyRows

PROTOCOL = "num_clients, input_shape, num_classes and client(i) -> (x_train, y_train, x_test, y_test)"
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class FederatedMeta:
    """The checked metadata of a plug-in dataset."""

    num_clients: int
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class ClientArrays:
    """One client's checked arrays: features as returned, labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_dataset(cfg: Config) -> tuple[Any, FederatedMeta]:
    """Import the factory, call it with data.params, and check the object's metadata."""
    kind = cfg.data.kind
    name = task_entry(kind).factory or kind  # a built-in kind's factory, or the plug-in name itself
    factory = load(parse(name, key="data.kind"), key="data.kind")
    if not callable(factory):
        raise ConfigError(f"data.kind={kind}: {type(factory).__name__} object is not callable (name a factory: "
                          "factory(**data.params) returning a federated dataset)")
    try:
        dataset = factory(**cfg.data.params)
    except Exception as err:  # the user's code: one line, not its traceback
        raise ConfigError(f"data.kind={kind}: the factory called with data.params {cfg.data.params!r} raised "
                          f"{type(err).__name__}: {_first_line(err)}") from None
    members = {}
    for name in ("num_clients", "input_shape", "num_classes", "client"):
        try:
            members[name] = getattr(dataset, name)
        except AttributeError:
            continue
        except Exception as err:  # a property of the user's class raised
            raise ConfigError(f"data.kind={kind}: the dataset's {name} raised {type(err).__name__}: "
                              f"{_first_line(err)}") from None
    missing = [name for name in ("num_clients", "input_shape", "num_classes", "client") if name not in members]
    if missing:
        raise ConfigError(f"data.kind={kind}: the factory returned a {type(dataset).__name__} without "
                          f"{', '.join(missing)} (a federated dataset has {PROTOCOL})")
    if not callable(members["client"]):
        raise ConfigError(f"data.kind={kind}: the dataset's client is not callable (client(i) returns {ARRAY_NAMES})")
    num_clients, shape, num_classes = members["num_clients"], members["input_shape"], members["num_classes"]
    if not _is_int(num_clients) or num_clients < 1:
        raise ConfigError(f"data.kind={kind}: the dataset's num_clients must be an int >= 1, got {num_clients!r}")
    if not isinstance(shape, (tuple, list)) or not shape or not all(_is_int(n) and n >= 1 for n in shape):
        raise ConfigError(f"data.kind={kind}: the dataset's input_shape must be a tuple of positive ints "
                          f"(one sample's shape, e.g. (d,)), got {shape!r}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"data.kind={kind}: the dataset's num_classes must be an int >= 2, got {num_classes!r}")
    if num_clients < cfg.data.num_clients:
        raise ConfigError(f"data.num_clients ({cfg.data.num_clients}) must be <= the {num_clients} clients "
                          f"of data.kind={kind}")
    return dataset, FederatedMeta(int(num_clients), tuple(int(n) for n in shape), int(num_classes))


def client_arrays(dataset: Any, meta: FederatedMeta, client: int, *, kind: str) -> ClientArrays:
    """client(i), checked: four arrays of the dataset's shape, dtypes and label range."""
    where = f"data.kind={kind}: client({client})"
    try:
        arrays = dataset.client(client)
    except Exception as err:
        raise ConfigError(f"{where} raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(arrays, (tuple, list)) or len(arrays) != len(ARRAY_NAMES) \
            or not all(isinstance(a, np.ndarray) for a in arrays):
        got = f"a {type(arrays).__name__}" + (f" of {len(arrays)}" if isinstance(arrays, (tuple, list)) else "")
        raise ConfigError(f"{where} must return 4 numpy arrays {ARRAY_NAMES}, got {got}")
    checked = []
    for split, (x, y) in (("train", arrays[:2]), ("test", arrays[2:])):
        if not np.issubdtype(x.dtype, np.floating):
            raise ConfigError(f"{where}: x_{split} must be floating-point features, got dtype {x.dtype}")
        if x.shape[1:] != meta.input_shape:
            raise ConfigError(f"{where}: x_{split} has shape {x.shape}, expected (n, *input_shape) = "
                              f"(n, {', '.join(map(str, meta.input_shape))})")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise ConfigError(f"{where}: y_{split} must be {x.shape[0]} integer labels (shape ({x.shape[0]},)), "
                              f"got dtype {y.dtype} shape {y.shape}")
        if len(y) == 0:
            raise ConfigError(f"{where} has no {split} rows (every client needs at least one train and one test row)")
        if y.min() < 0 or y.max() >= meta.num_classes:
            raise ConfigError(f"{where}: y_{split} holds labels in [{y.min()}, {y.max()}], outside [0, "
                              f"{meta.num_classes - 1}] (num_classes {meta.num_classes})")
        if not np.isfinite(x).all():
            raise ConfigError(f"{where}: x_{split} holds NaN or infinite values")
        checked += [x, y.astype(np.int64)]
    return ClientArrays(*checked)


def size_member(dataset: Any, *, kind: str) -> Any:
    """The dataset's `client_size`, which lazy data needs: ConfigError, one line, without it."""
    try:
        member = getattr(dataset, SIZE_MEMBER, None)
    except Exception as err:  # a property of the user's class raised
        raise ConfigError(f"data.kind={kind}: the dataset's {SIZE_MEMBER} raised {type(err).__name__}: "
                          f"{_first_line(err)}") from None
    if member is None:
        raise ConfigError(f"data.lazy=true needs the dataset's {SIZE_MEMBER}(i) -> (n_train, n_test), a client's row "
                          f"counts without its arrays: data.kind={kind} returned a {type(dataset).__name__} without "
                          f"{SIZE_MEMBER}; add it, or set data.lazy=false")
    if not callable(member):
        raise ConfigError(f"data.kind={kind}: the dataset's {SIZE_MEMBER} is not callable ({SIZE_MEMBER}(i) returns "
                          "(n_train, n_test))")
    return member


def client_sizes(member: Any, client: int, *, kind: str) -> tuple[int, int]:
    """client_size(i), checked: (n_train, n_test), two ints >= 1."""
    try:
        sizes = member(client)
    except Exception as err:
        raise ConfigError(f"data.kind={kind}: {SIZE_MEMBER}({client}) raised {type(err).__name__}: "
                          f"{_first_line(err)}") from None
    if type(sizes) is tuple and len(sizes) == 2 and type(sizes[0]) is int and type(sizes[1]) is int:
        n_train, n_test = sizes  # the common case, checked without the general test (once per hosted client)
    elif isinstance(sizes, (tuple, list)) and len(sizes) == 2 and all(_is_int(n) for n in sizes):
        n_train, n_test = int(sizes[0]), int(sizes[1])
    else:
        raise ConfigError(f"data.kind={kind}: {SIZE_MEMBER}({client}) must return (n_train, n_test), two ints, "
                          f"got {sizes!r}")
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"data.kind={kind}: {SIZE_MEMBER}({client}) returned ({n_train}, {n_test}): every "
                          "client needs at least one train and one test row")
    return n_train, n_test


def check_sizes(arrays: ClientArrays, sizes: tuple[int, int], client: int, *, kind: str) -> None:
    """client(i)'s arrays have the row counts client_size(i) gave: ConfigError, one line, if not."""
    got = (len(arrays.y_train), len(arrays.y_test))
    if got != sizes:
        raise ConfigError(f"data.kind={kind}: client({client}) returned {got[0]} train and {got[1]} test rows, but "
                          f"{SIZE_MEMBER}({client}) gave ({sizes[0]}, {sizes[1]}): they must agree")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def rank_dataset(cfg: Config, client_ids: range) -> tuple[ImageDataset, list[ClientSplit]]:
    """The clients `client_ids` as an ImageDataset of this rank only: `train` holds each client's
    train rows then its test rows, `test` all their test rows (w_g's evaluation); with the
    ClientSplit index sets into `train`. client(i) is called for these clients only."""
    dataset, meta = load_dataset(cfg)
    clients = [client_arrays(dataset, meta, c, kind=cfg.data.kind) for c in client_ids]
    rows, splits, start = [], [], 0
    dtype = np.result_type(*(a.x_train for a in clients), *(a.x_test for a in clients))
    for c, arrays in zip(client_ids, clients, strict=True):
        n_train, n_test = len(arrays.y_train), len(arrays.y_test)
        splits.append(ClientSplit(client_id=c, partition_id=c, train=np.arange(start, start + n_train),
                                  test=np.arange(start + n_train, start + n_train + n_test)))
        rows.append(arrays)
        start += n_train + n_test
    train = ImageSplit(np.concatenate([a for r in rows for a in (r.x_train, r.x_test)]).astype(dtype, copy=False),
                       np.concatenate([a for r in rows for a in (r.y_train, r.y_test)]))
    test = ImageSplit(np.concatenate([r.x_test for r in rows]).astype(dtype, copy=False),
                      np.concatenate([r.y_test for r in rows]))
    return ImageDataset(name=cfg.data.kind, train=train, test=test, num_classes=meta.num_classes,
                        input_shape=meta.input_shape), splits


class DatasetClient(NamedTuple):
    """One client with lazy data: its rows of the eager task's tensors (padded to the rank's
    lengths); the validation rows None without data.val_fraction."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    class_frequencies: torch.Tensor  # (C,) float64, of its training labels
    class_mask: torch.Tensor  # (C,) the classes it trained on


class DatasetTask(ImageTask):
    """ImageTask on a plug-in dataset's arrays: this rank's clients only, read through client(i);
    with lazy data (data.lazy) each client read when it is sampled or evaluated."""

    def __init__(self, cfg: Config, *, client_ids: range, device: torch.device, dtype: torch.dtype) -> None:
        if not lazy_data(cfg):
            super().__init__(cfg, client_ids=client_ids, device=device, dtype=dtype)
            return
        check_image_config(cfg)
        self.cfg, self.client_ids, self.device, self.dtype, self.lazy = cfg, client_ids, device, dtype, True
        self._dataset, self._meta = load_dataset(cfg)
        kind = cfg.data.kind
        size = size_member(self._dataset, kind=kind)
        self.num_classes = self._meta.num_classes
        self.model = build_image_model(cfg.model.kind, input_shape=self._meta.input_shape,
                                       num_classes=self.num_classes, head=cfg.model.head)
        self.num_params = self.model.num_params
        self.sample_ndim = len(self._meta.input_shape)
        # Start-up: each client's row counts from client_size(i) (no arrays), for the sample counts
        # and the padded lengths; the validation rows' count from the train count alone.
        k, fraction = len(client_ids), cfg.data.val_fraction
        # (n_train, n_test) as client_size gave them
        self._sizes = np.fromiter(itertools.chain.from_iterable(client_sizes(size, client, kind=kind)
                                                                for client in client_ids),
                                  dtype=np.int64, count=2 * k).reshape(k, 2)
        val_counts = np.zeros(k, dtype=np.int64)
        if fraction > 0:
            for row, (client, n_train) in enumerate(zip(client_ids, self._sizes[:, 0].tolist(), strict=True)):
                val_counts[row] = validation_size(n_train, fraction)
                if val_counts[row] >= n_train:  # with_validation's line
                    raise DataError(f"data.val_fraction={fraction:g}: client {client} has {n_train} training "
                                    "row(s), too few to hold validation rows out and still train")
        train_counts = self._sizes[:, 0] - val_counts
        self._lengths = (int(train_counts.max(initial=0)), int(self._sizes[:, 1].max(initial=0)),
                         int(val_counts.max(initial=0)))
        self.train_counts = train_counts.tolist()
        self.test_counts = torch.from_numpy(self._sizes[:, 1].copy()).to(device)
        self.sample_counts = torch.from_numpy(train_counts).to(device=device, dtype=dtype)  # not a list's k elements
        self.cache = client_cache(cfg, client_ids, self._materialize)
        rows = functools.partial(LazyRows, self.cache, first_id=client_ids.start, device=device)
        shape = self.model.input_shape
        self.train_x = rows(field="train_x", shape=(k, self._lengths[0], *shape), dtype=dtype)  # type: ignore
        self.train_y = rows(field="train_y", shape=(k, self._lengths[0]), dtype=torch.long)  # type: ignore
        self.test_x = rows(field="test_x", shape=(k, self._lengths[1], *shape), dtype=dtype)  # type: ignore
        self.test_y = rows(field="test_y", shape=(k, self._lengths[1]), dtype=torch.long)  # type: ignore
        self.val_counts = None
        if fraction > 0:
            self.val_x = rows(field="val_x", shape=(k, self._lengths[2], *shape), dtype=dtype)  # type: ignore
            self.val_y = rows(field="val_y", shape=(k, self._lengths[2]), dtype=torch.long)  # type: ignore
            self.val_counts = torch.from_numpy(val_counts).to(device)
        self.class_frequencies = rows(field="class_frequencies", shape=(k, self.num_classes),  # type: ignore
                                      dtype=torch.float64)
        self.class_mask = rows(field="class_mask", shape=(k, self.num_classes), dtype=torch.bool)  # type: ignore

    def _materialize(self, ids: list[int]) -> list[DatasetClient]:  # type: ignore[override]
        """Lazy data: the clients of `ids` (global) from client(i), checked, split and padded to
        the rank's lengths as the eager tensors are (their rows of them, bit for bit)."""
        kind, out = self.cfg.data.kind, []
        lengths = dict(zip(("train", "test", "val"), self._lengths, strict=True))
        for client in ids:
            arrays = client_arrays(self._dataset, self._meta, client, kind=kind)
            n_train, n_test = (int(n) for n in self._sizes[client - self.client_ids.start])
            check_sizes(arrays, (n_train, n_test), client, kind=kind)
            # The eager layout: the client's train rows then its test rows, split by index sets
            x = np.concatenate([arrays.x_train, arrays.x_test])
            y = np.concatenate([arrays.y_train, arrays.y_test])
            split = with_validation(self.cfg, [ClientSplit(client_id=client, partition_id=client,
                                                           train=np.arange(n_train),
                                                           test=np.arange(n_train, n_train + n_test))])[0]
            parts: dict[str, torch.Tensor | None] = {"val_x": None, "val_y": None}
            for name in ("train", "test", "val") if self.cfg.data.val_fraction > 0 else ("train", "test"):
                index = getattr(split, name)
                parts[f"{name}_x"] = self._features(_padded_to(x[index], lengths[name]))
                parts[f"{name}_y"] = torch.from_numpy(_padded_to(y[index], lengths[name])).to(self.device)
            class_counts = np.bincount(y[split.train], minlength=self.num_classes)
            frequencies = torch.from_numpy(class_counts / class_counts.sum()).to(self.device)
            out.append(DatasetClient(**parts, class_frequencies=frequencies,  # type: ignore[arg-type]
                                     class_mask=frequencies > 0))
        return out

    def load_dataset(self, cfg: Config, client_ids: range) -> ImageDataset:
        dataset, self._splits = rank_dataset(cfg, client_ids)
        return dataset

    def client_splits(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> list[ClientSplit]:
        return self._splits

    def global_test_shard(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> slice:
        return slice(None)  # `dataset.test` holds exactly this rank's clients' test rows

    # --- metrics: the baseline and w_g on the evaluated clients' own test rows ---------------

    def _naive_for(self, rows: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Lazy data: the baseline of the cohort's clients, from their rows (eager: computed once
        for every client at start-up, the same numbers)."""
        if not self.lazy or rows is None:
            return super()._naive_for(rows)
        rows = rows.to(self.device)
        correct, losses = naive_terms(self.class_frequencies[rows], self.test_y[rows], self.test_counts[rows])
        correct, loss = correct.sum(dim=1).cpu(), losses.sum(dim=1).cpu()
        return {"naive_correct": correct.sum(), "naive_loss_sum": loss.sum()}, correct, loss

    def _global_sums(self, global_model: torch.Tensor, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """w_g on the test rows of the evaluated clients: every client of this rank (rows None: the
        rows concatenated at start-up), or the cohort's members in `rows`, with each one's pair
        (its correct predictions and summed loss, over its test rows: the standard errors)."""
        if rows is None:
            return super()._global_sums(global_model, rows)
        rows = rows.to(self.device)
        counts = self.test_counts[rows]
        y = self.test_y[rows]
        valid = _valid(counts, y.shape[1])
        x, y = self.test_x[rows][valid], y[valid]  # the clients' test rows, concatenated in order
        owner = torch.repeat_interleave(torch.arange(len(rows), device=self.device), counts)
        correct = torch.zeros((), dtype=torch.float64)
        loss = torch.zeros((), dtype=torch.float64)
        client_correct = torch.zeros(len(rows), dtype=torch.float64)
        client_loss = torch.zeros(len(rows), dtype=torch.float64)
        for (hits, losses), owners in zip(self._global_terms(global_model, x, y), owner.split(EVAL_CHUNK),
                                          strict=True):
            loss += losses.sum()
            correct += hits.sum()
            client_loss.index_add_(0, owners.cpu(), losses)
            client_correct.index_add_(0, owners.cpu(), hits)
        samples = counts.double().cpu()
        return {"num_test_global": samples.sum(), "correct_global": correct, "loss_global_sum": loss,
                "client/acc_global": torch.stack([client_correct, samples]),
                "client/loss_global": torch.stack([client_loss, samples])}

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """The launcher's checks before any rank starts: the factory, its metadata, every client's
        arrays (each asked for once and dropped, as client_files' preflight reads every file: a
        bad client stops the launch in one line instead of one rank of a running job), the model
        on the dataset's shape and classes, and the initial model's file. With lazy data only the
        first client is asked for (its arrays, and client_size agreeing with them): asking for
        every client is what lazy data avoids; another client's mistake is one line when a rank
        first counts it (client_size) or reads it (client(i))."""
        check_image_config(cfg)
        dataset, meta = load_dataset(cfg)
        kind = cfg.data.kind
        size = size_member(dataset, kind=kind) if lazy_data(cfg) else None
        for client in range(1 if size is not None else cfg.data.num_clients):
            arrays = client_arrays(dataset, meta, client, kind=kind)
            if size is not None:
                check_sizes(arrays, client_sizes(size, client, kind=kind), client, kind=kind)
            train = np.arange(len(arrays.y_train))
            with_validation(cfg, [ClientSplit(client_id=client, partition_id=client, train=train, test=train[:0])])
        model = build_image_model(cfg.model.kind, input_shape=meta.input_shape, num_classes=meta.num_classes,
                                  head=cfg.model.head)
        check_init_file(cfg.model.init_file, model)
