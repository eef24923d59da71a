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
  train and one test row.
`client(i)` is called only for the clients a rank hosts (and once for every client, one at a
time, by the launcher's preflight), so a dataset can generate or read each client on demand.

Training is ImageTask's, on these arrays (DatasetTask overrides only where the samples come from):
the same models (linear, logreg, cnn, a plug-in model), solvers, byte ledger and metrics. Two
metrics read the dataset's own split: acc_personal is each client's model on its test rows, and
acc_global is w_g on the union of all the clients' test rows (each rank evaluates its own
clients' rows; the sums are reduced over ranks, so any world size evaluates the same rows).

Every check is one ConfigError line naming `data.kind`: a module that cannot be imported, a name
that is missing or not callable, a factory that raises or returns something without the four
members, bad metadata, fewer clients than data.num_clients, a client(i) that raises, arrays of the
wrong type, shape or dtype, labels out of range, non-finite features, a client without train or
test rows.

The run's identity holds `data.params` (in the config) and the sha256 of the factory's module
source (pfl_dist/inputs.py, key `data.kind`), so editing the generator makes another run.

A built-in data kind can be such a dataset: its TASKS entry (pfl_dist/tasks/__init__.py) names
DatasetTask as its target and the factory as `factory` (docs/EXTENDING.md, "As a built-in").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pfl_dist.config import Config
from pfl_dist.data.images import ImageDataset, ImageSplit
from pfl_dist.errors import ConfigError
from pfl_dist.models.init_file import check_init_file
from pfl_dist.plugins import load, parse
from pfl_dist.tasks import task_entry
from pfl_dist.tasks.images import ClientSplit, ImageTask, build_image_model, check_image_config, with_validation

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


class DatasetTask(ImageTask):
    """ImageTask on a plug-in dataset's arrays: this rank's clients only, read through client(i)."""

    def load_dataset(self, cfg: Config, client_ids: range) -> ImageDataset:
        dataset, self._splits = rank_dataset(cfg, client_ids)
        return dataset

    def client_splits(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> list[ClientSplit]:
        return self._splits

    def global_test_shard(self, cfg: Config, dataset: ImageDataset, client_ids: range) -> slice:
        return slice(None)  # `dataset.test` holds exactly this rank's clients' test rows

    @classmethod
    def preflight(cls, cfg: Config) -> None:
        """The launcher's checks before any rank starts: the factory, its metadata, every client's
        arrays (each asked for once and dropped, as client_files' preflight reads every file: a
        bad client stops the launch in one line instead of one rank of a running job), the model
        on the dataset's shape and classes, and the initial model's file."""
        check_image_config(cfg)
        dataset, meta = load_dataset(cfg)
        for client in range(cfg.data.num_clients):
            arrays = client_arrays(dataset, meta, client, kind=cfg.data.kind)
            train = np.arange(len(arrays.y_train))
            with_validation(cfg, [ClientSplit(client_id=client, partition_id=client, train=train, test=train[:0])])
        model = build_image_model(cfg.model.kind, input_shape=meta.input_shape, num_classes=meta.num_classes,
                                  head=cfg.model.head)
        check_init_file(cfg.model.init_file, model)
