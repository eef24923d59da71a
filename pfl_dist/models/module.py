"""Any `torch.nn.Module` as a function of flat per-client parameters, batched over clients.

`model.kind: "package.module:factory"` names a function `factory(input_shape, num_classes)` that
returns a `torch.nn.Module` mapping a batch (n, *input_shape) to logits (n, num_classes). The
paper's CNN is built the same way (`pfl_dist.models.cnn:paper_cnn`, the registry's `cnn`).

Every client's model is one row of a (k, P) tensor, like the linear models, so the engine's
aggregation, checkpointing and byte accounting are model-agnostic. The module is only a template:
`torch.func.functional_call` runs it with a row's parameters (views into the row, no copy), and
`torch.func.vmap(torch.func.grad(...))` turns k clients' minibatch gradients into one batched
computation. Each client's loss and gradient depend only on its own row and batch, so a client
trains the same whether it shares its rank with 0 or 99 other clients.

The flat layout: the module's parameters in `named_parameters()` order, except that the head's
(the parameters whose names start with the head prefix, FedRep's and FedPer's personal part) are
moved to the end, so that body and head are two slices of the row (`groups`). Every parameter is
trained (`requires_grad` is not read). The run's dtype is the rows' dtype: a float64 run computes
in float64 whatever dtype the factory's module was built in.

Initialisation: the factory's own initial parameters, drawn under `torch.manual_seed(run.seed)`
inside `torch.random.fork_rng` (the process's RNG is left as it was), so every rank builds the
same initial model for any world size.

Buffers are refused (one line naming the first one): a buffer such as BatchNorm's running
statistics is state that changes in the forward pass, outside the (k, P) rows that are averaged,
sent, counted and checkpointed, so it would be neither federated nor resumed. GroupNorm and
LayerNorm normalise without buffers. (BatchNorm without running statistics has no buffer but
would normalise over the padded rows of a ragged batch, pfl_dist/solvers/padded.py.)

A single client (k = 1, e.g. one client per process) always takes the plain path: vmap over a
batch of one only adds overhead. `vectorize=False` computes the same gradients with a Python loop
of ordinary autograd calls, one client at a time; the wrapper probes vmap once at construction
and falls back to it (with a warning) if the probe raises, e.g. for a module whose forward calls
`.item()` or branches on tensor values.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from pfl_dist.errors import ConfigError
from pfl_dist.models import ModelEntry
from pfl_dist.plugins import load, parse

Factory = Callable[[tuple[int, ...], int], nn.Module]
PROBE_BATCH = 2  # samples of the output-shape check and the vmap probe


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_factory(kind: str) -> Factory:
    """The callable that `kind` ('package.module:factory') names; one ConfigError line otherwise."""
    factory = load(parse(kind, key="model.kind"), key="model.kind")
    if not callable(factory):
        raise ConfigError(f"model.kind={kind}: {kind.partition(':')[2]!r} is not callable (its type is "
                          f"{type(factory).__name__}): name a factory(input_shape, num_classes) returning a "
                          "torch.nn.Module")
    return factory


def call_factory(factory: Factory, kind: str, *, input_shape: tuple[int, ...], num_classes: int,
                 seed: int = 0) -> nn.Module:
    """factory(input_shape, num_classes) under `seed`, checked to be a Module with parameters
    and no buffers; the process's RNG state is left unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(tuple(input_shape), num_classes)
        except Exception as err:  # the user's code: one line, not its traceback
            raise ConfigError(f"model.kind={kind}: the factory raised {_first_line(err)} for input_shape "
                              f"{tuple(input_shape)}, num_classes {num_classes}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.kind={kind}: the factory returned an object of type {type(module).__name__}, "
                          "not a torch.nn.Module")
    buffer = next((name for name, _ in module.named_buffers()), None)
    if buffer is not None:
        raise ConfigError(f"model.kind={kind}: the module has a buffer {buffer!r} (e.g. BatchNorm's running "
                          "statistics), state outside the parameters that are federated and checkpointed; use a "
                          "module without buffers (GroupNorm or LayerNorm instead of BatchNorm)")
    if not any(True for _ in module.parameters()):
        raise ConfigError(f"model.kind={kind}: the module has no parameters to train")
    return module


def build_module(kind: str, *, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """The module that the plug-in or built-in `kind` builds (checked as `call_factory` does)."""
    return call_factory(load_factory(kind), kind, input_shape=input_shape, num_classes=num_classes, seed=seed)


class ModuleModel:
    """Flat-parameter view of the module a factory builds: logits and weighted minibatch
    gradients for (k, P) client rows (the interface of pfl_dist/solvers/padded.py)."""

    def __init__(self, factory: Factory, *, kind: str, input_shape: tuple[int, ...], num_classes: int,
                 head: str | None = None, vectorize: bool = True) -> None:
        self.factory = factory
        self.kind = kind
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)  # one sample, e.g. (channels, height, width)
        self.template = call_factory(factory, kind, input_shape=self.input_shape,
                                     num_classes=num_classes).requires_grad_(False)
        named = list(self.template.named_parameters())
        self.head = head
        self.head_size = 0
        if head is not None:
            in_head = [name.startswith(head) for name, _ in named]
            if not any(in_head) or all(in_head):
                which = "no" if not any(in_head) else "every"
                raise ConfigError(f"model.head {head!r} matches {which} parameter of model.kind {kind} (its "
                                  f"parameters: {_names(named)}); name the prefix of the head's parameters only")
            named = [p for p, h in zip(named, in_head, strict=True) if not h] + \
                [p for p, h in zip(named, in_head, strict=True) if h]
            self.head_size = sum(p.numel() for p, h in zip(self.template.parameters(), in_head, strict=True) if h)
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.num_params = sum(self.sizes)
        self._check_output()
        self.vectorize = vectorize and _vmap_works(self)

    @classmethod
    def from_entry(cls, entry: ModelEntry, *, input_shape: tuple[int, ...], num_classes: int) -> ModuleModel:
        """The model of a registry entry with a factory: a built-in one (cnn) or a plug-in."""
        assert entry.factory is not None, "the analytic linear models have no module"
        return cls(load_factory(entry.factory), kind=entry.kind, input_shape=input_shape, num_classes=num_classes,
                   head=entry.head)

    def _check_output(self) -> None:
        x = torch.zeros(PROBE_BATCH, *self.input_shape)
        try:
            with torch.no_grad():
                out = self._forward(self.init_params(0, dtype=torch.float32), x)
        except Exception as err:  # the user's forward: one line, not its traceback
            raise ConfigError(f"model.kind={self.kind}: the module's forward on a batch of shape {tuple(x.shape)} "
                              f"raised {_first_line(err)}") from None
        expected = (PROBE_BATCH, self.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model.kind={self.kind}: the module maps a batch of shape {tuple(x.shape)} to "
                              f"{got}, expected {expected} (one logit per class)")

    def groups(self) -> dict[str, slice] | None:
        """{"body": ..., "head": ...} slices of the flat row; None without a head prefix."""
        if self.head is None:
            return None
        body = self.num_params - self.head_size
        return {"body": slice(0, body), "head": slice(body, self.num_params)}

    def init_params(self, seed: int, *, dtype: torch.dtype) -> torch.Tensor:
        """The factory's own initialisation under `seed`: the same flat model on every rank."""
        fresh = dict(call_factory(self.factory, self.kind, input_shape=self.input_shape, num_classes=self.num_classes,
                                  seed=seed).named_parameters())
        return torch.cat([fresh[name].detach().flatten() for name in self.names]).to(dtype)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """One flat row (P,) -> {parameter name: view of that row}."""
        return {name: part.view(shape) for name, part, shape in
                zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat model (P,) as named tensors that the module's `load_state_dict` accepts."""
        return {name: tensor.clone() for name, tensor in self.unflatten(flat).items()}

    def _batched(self, params: torch.Tensor) -> bool:
        """vmap for k > 1 clients; one client (the 1-client-per-process layout) takes the plain
        autograd path, which skips vmap's batching overhead (benchmarks/cnn_throughput.py)."""
        return self.vectorize and params.shape[0] > 1

    def _forward(self, flat: torch.Tensor, x: torch.Tensor) -> Any:
        return functional_call(self.template, self.unflatten(flat), (x,))

    def _weighted_loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j CE(f(x_j), y_j): with w_j = 1/b on a batch of b, the usual mean loss."""
        return (F.cross_entropy(self._forward(flat, x), y, reduction="none") * w).sum()

    @torch.no_grad()
    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params (k, P), x (k, n, *input_shape) -> (k, n, C); each client's own model on its own x."""
        if self._batched(params):
            return vmap(self._forward)(params, x)
        return torch.stack([self._forward(p, xi) for p, xi in zip(params, x, strict=True)])

    def weighted_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
        """Gradient (k, P) of each client's weighted loss; rows with all-zero weights get 0."""
        if self._batched(params):
            return vmap(grad(self._weighted_loss))(params, x, y, weights)
        return torch.stack([self._autograd_grad(p, xi, yi, wi)
                            for p, xi, yi, wi in zip(params, x, y, weights, strict=True)])

    def _autograd_grad(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        leaf = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            (result,) = torch.autograd.grad(self._weighted_loss(leaf, x, y, w), leaf)
        return result


def _names(named: list[tuple[str, nn.Parameter]]) -> str:
    names = [name for name, _ in named]
    return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def _vmap_works(model: ModuleModel) -> bool:
    """Run one tiny batched gradient; False (and a warning) if this backend cannot vmap it."""
    params = model.init_params(0, dtype=torch.float32).repeat(2, 1)
    x = torch.zeros(2, 1, *model.input_shape)
    y = torch.zeros(2, 1, dtype=torch.long)
    try:
        vmap(grad(model._weighted_loss))(params, x, y, torch.ones(2, 1))
    except RuntimeError as err:  # a missing batching rule surfaces as a RuntimeError
        warnings.warn(f"torch.func.vmap unavailable for model.kind {model.kind} ({err}); training clients one "
                      "at a time", RuntimeWarning, stacklevel=3)
        return False
    return True
