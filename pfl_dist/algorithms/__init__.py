"""Federated algorithms: each owns its client update, its server update and its per-client state
(pfl_dist/algorithms/base.py). The facts about each method (label, whether it communicates,
whether lambda enters it) are the literal `info = MethodInfo(...)` in its class body, which
pfl_dist/methods.py reads torch-free.

The registry: every class of a module in this package that declares its own `info` is a built-in
(`ALGORITHMS`). Which ones there are, and in which module, pfl_dist/methods.py finds by reading
the sources (`BUILTIN_CLASSES`); here each is imported and checked as a plug-in is
(`algorithm_class`), so a new built-in is its module (and its test), with no list to extend."""

from __future__ import annotations

from dataclasses import replace

from pfl_dist import plugins
from pfl_dist.algorithms.base import (
    Algorithm,
    ClientOutput,
    ClientRound,
    ClientState,
    RoundEnd,
    local_sgd,
    prox_step,
)
from pfl_dist.algorithms.classic import FedAvg, FedCLUP, FedProx, LocalTrain, theory_lambda
from pfl_dist.algorithms.groups import FedPer, FedRep
from pfl_dist.algorithms.personal import APFL, Ditto, FedAvgFT, PerFedAvg, PFedMe
from pfl_dist.algorithms.scaffold import Scaffold
from pfl_dist.config import AlgorithmConfig
from pfl_dist.errors import ConfigError
from pfl_dist.methods import BUILTIN_CLASSES, METHODS, MethodInfo, method_info
from pfl_dist.store import Row


def load_checked(where: plugins.PluginName, declared: MethodInfo, *, name: str) -> type[Algorithm]:
    """Import the class `where` (pfl_dist/plugins.py `load`) and check it against the declaration
    the torch-free side read from its source: it subclasses `Algorithm` and its `info` is that
    literal (up to `name`, which a plug-in's config gives). ConfigError (one line) otherwise."""
    cls = plugins.load(where, key="algorithm.name")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"algorithm.name={name}: {cls!r} is not a subclass of pfl_dist.algorithms.Algorithm")
    info = cls.__dict__.get("info")
    if not isinstance(info, MethodInfo) or replace(info, name=declared.name) != declared:
        raise ConfigError(f"algorithm.name={name}: its info = MethodInfo(...) must be a literal in the class body "
                          f"of {cls.__name__} (the config checks read it without importing the module)")
    if hasattr(cls, "init_client_state"):
        # Per-client state is declared since the ClientStore (pfl_dist/store.py); a hand-allocated
        # state would silently not be used, so the class is refused instead.
        raise ConfigError(f"algorithm.name={name}: {cls.__name__}.init_client_state is no longer called; declare "
                          "the per-client rows with client_rows() -> (Row(name, default), ...) and set up "
                          "server-side state in init_server_state(global_model) (docs/EXTENDING.md)")
    return cls


ALGORITHMS: dict[str, type[Algorithm]] = {name: load_checked(where, METHODS[name], name=name)
                                          for name, where in BUILTIN_CLASSES.items()}


def algorithm_class(name: str) -> type[Algorithm]:
    """The class of algorithm.name: a built-in from `ALGORITHMS`, or a plug-in `module:Class`
    imported and checked as a built-in is (`load_checked`). A plug-in is returned as a subclass
    whose `name` and `info.name` are the plug-in name, so summary.json, the tables and the run
    dir name it as the config does. ConfigError (one line) otherwise."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    declared = method_info(name)  # the AST read; one line for a bad name or declaration
    cls = load_checked(plugins.parse(name, key="algorithm.name"), declared, name=name)
    return type(cls.__name__, (cls,), {"info": declared, "__module__": cls.__module__, "__doc__": cls.__doc__})


def build_algorithm(cfg: AlgorithmConfig, *, smoothness: float, groups: dict[str, slice] | None = None,
                    participation: float = 1.0) -> Algorithm:
    return algorithm_class(cfg.name)(cfg, smoothness=smoothness, groups=groups, participation=participation)


__all__ = ["ALGORITHMS", "APFL", "Algorithm", "ClientOutput", "ClientRound", "ClientState", "Ditto", "FedAvg",
           "FedAvgFT", "FedCLUP", "FedPer", "FedProx", "FedRep", "LocalTrain", "PFedMe", "PerFedAvg", "RoundEnd",
           "Row", "Scaffold", "algorithm_class", "build_algorithm", "local_sgd", "prox_step", "theory_lambda"]
