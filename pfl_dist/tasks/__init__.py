"""Tasks by `data.kind`: which Task class serves a kind, and which config keys it reads.

This module imports no torch: the launcher and the sweep driver check a config against its task
before any process starts. A task's class is imported only to build it (`build_task`) or to run
its data checks (`preflight`).

Each entry names the keys its task does NOT read. Setting one of them to anything but its
default is an error (one line, exit 2) instead of a silently ignored setting: `model.kind=cnn` or
`algorithm.batch_size=32` on synthetic data would otherwise run the linear model with full-batch
GD and look like a result. A new data kind adds one entry here and a class with the Task
interface (pfl_dist/tasks/base.py).

A plug-in kind, `data.kind: "package.module:factory"` (a user's own federated dataset,
`factory(**data.params)`), has the entry `task_entry` makes from its name: the same path, served
by pfl_dist/tasks/dataset.py's DatasetTask; `data.params` is read by it alone. A built-in kind can
be such a dataset too: an entry whose `factory` names it, with DatasetTask as its target.

Which model kinds a task can build is the model registry's to say (pfl_dist/models/__init__.py:
each entry lists its tasks, and a plug-in `package.module:factory` serves the tasks that build
`torch.nn.Module`s); `check_task_config` reads it for built-in and plug-in kinds alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pfl_dist.data.lazy import check_lazy
from pfl_dist.errors import ConfigError
from pfl_dist.methods import method_info
from pfl_dist.models import DATASET_TASK, MODELS, PLUGIN_FORM, ModelEntry, kinds_for_task, model_entry
from pfl_dist.plugins import is_plugin_name

if TYPE_CHECKING:  # the registry itself stays torch-free
    import torch

    from pfl_dist.config import Config
    from pfl_dist.tasks.base import Task


@dataclass(frozen=True)
class TaskEntry:
    target: str  # "module:Class" of the Task (the model registry's entries name the tasks they serve)
    unused_keys: tuple[str, ...]  # dotted keys the task never reads
    description: str
    auto_model: str = "linear"  # the model.kind that 'auto' builds
    # "module:factory" of a federated dataset (pfl_dist/tasks/dataset.py) that DatasetTask trains on;
    # a plug-in kind's is its own name. None for the tasks that read their own data.
    factory: str | None = None
    # "module:function" of its memory estimate (pfl_dist/resources.py), torch-free and without
    # loading the data: estimate(cfg, blocks, value_bytes) -> one (data bytes, one sample's input
    # shape, classes) per block of client ids. None: no estimate, never refused.
    memory: str | None = None
    # "module:function" naming the files below data.data_dir it reads (pfl_dist/inputs.py):
    # files(root, num_clients) -> names relative to root, which enter the run identity. None: it
    # reads no folder of the user's.
    input_files: str | None = None
    # data.lazy (pfl_dist/data/lazy.py): how the task makes one client when a round samples it or an
    # evaluation measures it, as the console says it ("generated", "read from its file"); None: the
    # task holds every client of a rank from start-up, and data.lazy=true is refused.
    lazy: str | None = None


_IMAGE_ONLY = ("data.data_dir", "data.download", "data.partition", "data.num_partitions",
               "data.classes_per_client", "data.alpha", "data.test_fraction")
_SYNTHETIC_ONLY = ("data.samples_per_client", "data.dim", "data.num_classes", "data.R", "data.center_scale")
_SCALE, _MIN_SAMPLES, _PARAMS = "data.scale_features", "data.min_samples_per_client", "data.params"
_VAL = "data.val_fraction"  # validation rows: the image tasks' and client_files' (not the synthetic generator's)
_IMAGES = TaskEntry(
    target="pfl_dist.tasks.images:ImageTask",
    unused_keys=(*_SYNTHETIC_ONLY, _SCALE, _MIN_SAMPLES, _PARAMS),
    description="28x28 grey images from IDX files, partitioned into non-IID clients",
    auto_model="logreg",
    memory="pfl_dist.resources:image_data_bytes",
    lazy="gathered from the dataset",
)

# A federated dataset (DatasetTask) brings its own clients, splits, shapes and classes: of the data
# keys it reads data.num_clients (how many of its clients take part) and data.params (the factory's
# arguments).
DATASET_UNUSED_KEYS = (*_IMAGE_ONLY, *_SYNTHETIC_ONLY, _SCALE, _MIN_SAMPLES)

TASKS: dict[str, TaskEntry] = {
    "synthetic": TaskEntry(
        target="pfl_dist.tasks.synthetic:SyntheticTask",
        unused_keys=(*_IMAGE_ONLY, "algorithm.batch_size", "algorithm.local_epochs", _SCALE, _MIN_SAMPLES, _PARAMS,
                     _VAL),
        description="the paper's generator: per-client softmax-regression data around true models",
        memory="pfl_dist.resources:synthetic_data_bytes",
        lazy="generated",
    ),
    "fashion_mnist": _IMAGES,
    "mnist": _IMAGES,
    "mnist5k": _IMAGES,
    "cifar10": TaskEntry(
        target="pfl_dist.tasks.images:ImageTask",
        unused_keys=(*_SYNTHETIC_ONLY, "data.download", _SCALE, _MIN_SAMPLES, _PARAMS),
        description="CIFAR-10 (3x32x32 colour, 10 classes) from its python pickle batches, partitioned into clients",
        auto_model="logreg",
        memory="pfl_dist.resources:image_data_bytes",
        lazy="gathered from the dataset",
        input_files="pfl_dist.inputs:cifar10_files",
    ),
    "leaf": TaskEntry(
        target="pfl_dist.tasks.images:ImageTask",
        unused_keys=(*_SYNTHETIC_ONLY, "data.download", "data.partition", "data.num_partitions",
                     "data.classes_per_client", "data.alpha", "data.test_fraction", _SCALE, _PARAMS),
        description="LEAF FEMNIST JSON (28x28, 62 classes): each writer is one client, with its own test samples",
        auto_model="logreg",
        memory="pfl_dist.resources:image_data_bytes",
        lazy="gathered from the dataset",
        input_files="pfl_dist.inputs:leaf_files",
    ),
    "client_files": TaskEntry(
        target="pfl_dist.tasks.client_files:ClientFilesTask",
        unused_keys=("data.samples_per_client", "data.R", "data.center_scale",
                     *(key for key in _IMAGE_ONLY[1:] if key != "data.test_fraction"), _MIN_SAMPLES, _PARAMS),
        description="softmax regression on one CSV or NPZ file per client (the reference code's layout)",
        memory="pfl_dist.resources:client_files_data_bytes",
        input_files="pfl_dist.inputs:client_files_files",
        lazy="read from its file",
    ),
}


_DATASET_PLUGIN = TaskEntry(
    target=DATASET_TASK,
    unused_keys=DATASET_UNUSED_KEYS,
    description="a user's federated dataset: factory(**data.params) gives its clients' arrays, shape and classes",
    auto_model="logreg",
    lazy="made by the dataset's client(i)",  # with the dataset's optional client_size(i) (pfl_dist/tasks/dataset.py)
)


def entry_function(name: str, *, key: str = "data.kind") -> Any:
    """A registry entry's "module:function" (its memory estimate, its input files), imported."""
    from pfl_dist import plugins

    return plugins.load(plugins.parse(name, key=key), key=key)


def task_entry(kind: str) -> TaskEntry:
    """The entry of a built-in data kind, or the plug-in entry for a `package.module:factory` name."""
    if kind in TASKS:
        return TASKS[kind]
    if is_plugin_name(kind):
        return dataclasses.replace(_DATASET_PLUGIN, factory=kind)
    raise ConfigError(f"data.kind must be one of {', '.join(sorted(TASKS))} or {PLUGIN_FORM} "
                      f"(factory(**data.params) returning a federated dataset), got {kind!r}")


def _default(dotted: str) -> Any:
    from pfl_dist.config import SECTIONS

    section, key = dotted.split(".")
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    factory = fields[key].default_factory
    return factory() if callable(factory) else fields[key].default  # data.params: {} from its factory


def set_unused_keys(cfg: Config, unused: Sequence[str]) -> list[str]:
    """The keys of `unused` that the config sets to something other than their default."""
    return [key for key in unused
            if getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) != _default(key)]


def task_model(cfg: Config) -> ModelEntry:
    """The model registry's entry of the config's model.kind ('auto': its task's default)."""
    kind = task_entry(cfg.data.kind).auto_model if cfg.model.kind == "auto" else cfg.model.kind
    return model_entry(kind, head=cfg.model.head)


def _alternatives(kinds: Sequence[str]) -> str:
    return " or ".join(kind if kind.startswith(PLUGIN_FORM) else repr(kind) for kind in kinds)


def check_model_config(cfg: Config) -> None:
    """The model (built-in or plug-in) applies to the data kind, and has the body/head split the
    method needs; model.head is set only where it is read."""
    kind, target = cfg.data.kind, task_entry(cfg.data.kind).target
    model = task_model(cfg)
    if target not in model.tasks:
        raise ConfigError(f"model.kind {cfg.model.kind!r} does not apply to data.kind {kind!r} "
                          f"(it takes {_alternatives(['auto', *kinds_for_task(target)])})")
    method = method_info(cfg.algorithm.name)
    if cfg.model.head is not None and not model.plugin:
        has = f"its own head, {model.head!r}" if model.head else "no head"
        raise ConfigError(f"model.head is for plug-in models ({PLUGIN_FORM}); model.kind {cfg.model.kind!r} has "
                          f"{has}: remove model.head")
    if cfg.model.head is not None and not method.parameter_groups:
        raise ConfigError(f"model.head is read only by the methods with a body/head split; algorithm.name "
                          f"{cfg.algorithm.name!r} trains the whole model: remove model.head")
    if method.parameter_groups and model.head is None:
        if model.plugin:
            takes = "name the head with model.head, the prefix of its parameter names, e.g. model.head=fc2."
        else:
            grouped = [k for k, entry in MODELS.items() if entry.head and target in entry.tasks]
            if PLUGIN_FORM in kinds_for_task(target):
                grouped.append(f"{PLUGIN_FORM} with model.head")
            takes = (f"data.kind {kind!r} has one with model.kind {_alternatives(grouped)}" if grouped
                     else f"data.kind {kind!r} has no such model")
        raise ConfigError(f"algorithm.name {cfg.algorithm.name!r} needs a model with a body/head split; "
                          f"model.kind {cfg.model.kind!r} has none ({takes})")


def check_task_config(cfg: Config) -> None:
    """The config's combination of data kind, model and keys is one its task can run."""
    kind = cfg.data.kind
    entry = task_entry(kind)
    check_model_config(cfg)
    ignored = set_unused_keys(cfg, entry.unused_keys)
    if ignored:
        settings = ", ".join(f"{key}={getattr(getattr(cfg, key.split('.')[0]), key.split('.')[1])!r}"
                             for key in ignored)
        raise ConfigError(f"data.kind {kind!r} does not use {settings}: remove "
                          f"{'it' if len(ignored) == 1 else 'them'} from the config")
    check_lazy(cfg)


def task_class(kind: str) -> type[Task]:
    module, name = task_entry(kind).target.split(":")
    cls: type[Task] = getattr(importlib.import_module(module), name)
    return cls


def build_task(cfg: Config, *, client_ids: range, device: torch.device) -> Task:
    import torch

    return task_class(cfg.data.kind)(cfg, client_ids=client_ids, device=device, dtype=getattr(torch, cfg.train.dtype))


def preflight(cfg: Config) -> None:
    """Everything a launcher can check before starting ranks: the config's combination, then the
    task's own data checks (files, partition), which may load the data once."""
    check_task_config(cfg)
    task_class(cfg.data.kind).preflight(cfg)
