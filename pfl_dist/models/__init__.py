"""Models by `model.kind`: one registry for the built-in kinds and the plug-ins.

Models are pure functions of a flat, client-stacked parameter matrix w of shape (k, P): every
client's model is one row, so the engine's aggregation, checkpointing and byte ledger are
model-agnostic. Two families compute on those rows:
- the linear softmax models (`linear.py`), with analytic gradients, and
- `torch.nn.Module`s (`module.py`): the module is a template that `torch.func.functional_call`
  runs with a row's parameters, and `torch.func.vmap` turns the k clients of a rank into one
  batched computation. The paper's CNN (`cnn.py`) is one; a user's `model.kind:
  "package.module:factory"` is another, through the same wrapper.

This module imports no torch: the config checks (pfl_dist/tasks/__init__.py), the launcher and
the sweep driver read an entry's facts before any process starts. What a model kind is used for
is stated here once, in its entry:
- which tasks can build it (`tasks`: the Task classes, "module:Class" as in the task registry);
- whether it has a body/head split for FedRep and FedPer (`head`: the parameter-name prefix of the
  head; a plug-in's comes from `model.head`);
- whether docs/METHOD.md §2 gives it a smoothness bound (`smoothness`: algorithm.smoothness auto);
- its parameter count for a dataset's input shape and classes (`num_params`), which the memory
  estimate (`memory_bytes`, pfl_dist/resources.py) and the byte ledger's expectations rest on.
A plug-in's entry is made by `model_entry` from its name: its parameter count builds the module
(importing torch and the user's module), since nothing else can know it.
tests/unit/test_model_registry.py checks every built-in entry against the model it builds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from pfl_dist.errors import ConfigError
from pfl_dist.plugins import is_plugin_name

IMAGE_TASK = "pfl_dist.tasks.images:ImageTask"
SYNTHETIC_TASK = "pfl_dist.tasks.synthetic:SyntheticTask"
CLIENT_FILES_TASK = "pfl_dist.tasks.client_files:ClientFilesTask"
DATASET_TASK = "pfl_dist.tasks.dataset:DatasetTask"  # a plug-in data.kind (ImageTask on its arrays)
# The tasks that build a `torch.nn.Module` model from a factory: inputs of any shape, batched over
# clients with vmap. The linear-clients tasks (synthetic, client_files) are softmax regression
# throughout: their solver, smoothness bound and ITR/ATR read w as a (d, C) matrix.
MODULE_TASKS = (IMAGE_TASK, DATASET_TASK)
# The (k, P) client-model matrices a round works on besides the per-client rows kept between
# rounds (the algorithm's and the codec's, counted by pfl_dist/resources.py): the copies it trains
# and the new ones it returns.
WORKING_COPIES = 2

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # the model.kind value
    tasks: tuple[str, ...]  # "module:Class" of the Tasks that can build it
    num_params: Callable[[Shape, int], int]  # parameters for (input shape of one sample, classes)
    description: str
    head: str | None = None  # parameter-name prefix of the head (FedRep, FedPer); None = no body/head split
    smoothness: bool = False  # docs/METHOD.md §2's smoothness bound applies (algorithm.smoothness auto)
    factory: str | None = None  # "module:factory" of its torch.nn.Module; None for the analytic linear models

    @property
    def plugin(self) -> bool:
        return self.kind not in MODELS

    def memory_bytes(self, input_shape: Shape, num_classes: int, *, clients: int, value_bytes: int,
                     copies: int) -> int:
        """Bytes of `copies` (k, P) matrices of a rank's k clients' models."""
        return copies * clients * self.num_params(input_shape, num_classes) * value_bytes


def _linear_params(input_shape: Shape, num_classes: int) -> int:
    return math.prod(input_shape) * num_classes


def _logreg_params(input_shape: Shape, num_classes: int) -> int:
    return math.prod(input_shape) * num_classes + num_classes


def _cnn_params(input_shape: Shape, num_classes: int) -> int:
    """conv3x3(32), conv3x3(64), two 2x2 pools, fc(128), fc(C); with biases (models/cnn.py)."""
    channels, height, width = input_shape
    return (channels * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * (height // 4) * (width // 4) * 128 + 128) \
        + (128 * num_classes + num_classes)


MODELS: dict[str, ModelEntry] = {
    "linear": ModelEntry(
        kind="linear", tasks=(SYNTHETIC_TASK, IMAGE_TASK, CLIENT_FILES_TASK, DATASET_TASK), num_params=_linear_params,
        smoothness=True, description="softmax regression without bias, logits = x @ W (the paper's synthetic model)"),
    "logreg": ModelEntry(
        kind="logreg", tasks=(IMAGE_TASK, CLIENT_FILES_TASK, DATASET_TASK), num_params=_logreg_params, smoothness=True,
        description="multinomial logistic regression with bias, logits = x @ W + b"),
    "cnn": ModelEntry(
        kind="cnn", tasks=MODULE_TASKS, num_params=_cnn_params, head="fc2.",
        factory="pfl_dist.models.cnn:paper_cnn",
        description="the paper's CNN: conv3x3(32) - pool2 - conv3x3(64) - pool2 - fc(128) - fc(C)"),
}

PLUGIN_FORM = "a plug-in 'package.module:factory'"


def check_kind(kind: str) -> None:
    """`kind` is 'auto', a built-in model or a plug-in name; one ConfigError line otherwise."""
    if kind != "auto" and kind not in MODELS and not is_plugin_name(kind):
        known = ", ".join(repr(k) for k in ("auto", *MODELS))
        raise ConfigError(f"model.kind must be one of {known} or {PLUGIN_FORM} (a function of "
                          f"(input_shape, num_classes) returning a torch.nn.Module), got {kind!r}")


def model_entry(kind: str, *, head: str | None = None) -> ModelEntry:
    """The entry of a built-in `kind`, or the one made for a plug-in name (its head: `model.head`)."""
    check_kind(kind)
    if kind in MODELS:
        return MODELS[kind]
    return ModelEntry(kind=kind, tasks=MODULE_TASKS, num_params=functools.partial(_plugin_params, kind),
                      description=f"the torch.nn.Module that {kind} returns", head=head, factory=kind)


@functools.lru_cache(maxsize=16)
def _plugin_params(kind: str, input_shape: Shape, num_classes: int) -> int:
    from pfl_dist.models.module import build_module  # imports torch and the user's module

    return sum(p.numel() for p in build_module(kind, input_shape=input_shape, num_classes=num_classes).parameters())


def kinds_for_task(target: str) -> list[str]:
    """The model.kind values a Task class can build, for error messages: the built-in ones, then
    the plug-in form when the task builds modules."""
    return [kind for kind, entry in MODELS.items() if target in entry.tasks] + \
        ([PLUGIN_FORM] if target in MODULE_TASKS else [])
