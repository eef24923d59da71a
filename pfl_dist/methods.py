"""What each federated method is, without torch: its label, whether it communicates, what its
message is, whether algorithm.lam enters its updates, which other algorithm keys it reads,
whether it needs a model with a body/head split, whether it defines a global model that is
evaluated on its own.

One registry, built-ins and plug-ins through the same path. Each algorithm class states these
facts as a literal `info = MethodInfo(...)` in its class body. This module reads them from the
source by AST without importing it (pfl_dist/plugins.py): every such class in the modules of
pfl_dist/algorithms/ is a built-in (`METHODS`, `read_builtins`), a plug-in `module:Class` is read
from its own file when a config names it (`method_info`). The torch side (pfl_dist/algorithms/
__init__.py) imports the same classes and checks that their `info` is what was read here. The
Trainer writes the facts into summary.json ("method"), and the sweep tables, figures and
TensorBoard views read them from there or from here. There is no other list of method names; this
module imports nothing heavy, so the launcher, the config checks and the torch-free sweep driver
can use it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pfl_dist import plugins
from pfl_dist.errors import ConfigError

# Read only with algorithm.lam: auto (FedCLUP's rule).
LAM_AUTO_KEYS = ("algorithm.lam_auto_c", "algorithm.lam_auto_warmup", "algorithm.lam_auto_init",
                 "algorithm.lam_auto_refresh")
# The local schedule: full-batch GD (algorithm.batch_size null) or minibatch SGD.
GD_SCHEDULE = ("algorithm.num_local_steps",)
MINIBATCH_SCHEDULE = ("algorithm.local_epochs", "algorithm.batch_size")
# What a client's message is (`MethodInfo.message`). With a codec, a client sends Delta_i =
# sent_i - r (r: what the server holds, w_g by default), and this decides whether a compressor
# with error feedback may carry what it left out into the client's next message
# (pfl_dist/exchange/base.py `feedback_rule`; the table in docs/ARCHITECTURE.md).
INCREMENT = "increment"
"""A fresh update the client does not send again: FedAvg's w_i - w_g after local steps from w_g
(the client restarts from w_g next round), SCAFFOLD's y_i - x and c_i+ - c_i. What a codec leaves
out of it is lost unless a residual carries it to the client's next message (Stich et al. 2018)."""
STATE = "state"
"""The difference between state the client keeps and w_g: FedCLUP's w_i - w_g, with w_i trained on
from where it was. What a codec leaves out stays in w_i - w_g and is sent again in the client's
next message, so the kept state is its own memory; a residual would send it twice."""
MESSAGES = (INCREMENT, STATE)


@dataclass(frozen=True)
class MethodInfo:
    name: str  # algorithm.name
    label: str  # how tables and legends name it
    communicates: bool = True  # False: no training traffic at all (LocalTrain)
    message: str = INCREMENT  # what a client sends: INCREMENT or STATE (above)
    uses_lam: bool = False  # algorithm.lam enters the updates (shown in labels, HParams, results.csv)
    lam_symbol: str = "λ"  # how the label writes lam (FedProx's paper calls it mu)
    parameter_groups: bool = False  # needs a model with a body/head split (only the body is sent)
    global_model: bool = True  # w_g is a complete model whose accuracy is meaningful
    # the algorithm.* keys its updates read besides lam (`uses_lam`), what every method reads (the
    # local schedule, local_lr, sample_fraction) and what every communicating one reads
    # (client_weights, comm.codec, comm.downlink_codec): `keys_read`, results.csv's settings columns
    reads: tuple[str, ...] = ()
    paper: str = ""
    # figures: its colour family, a matplotlib sequential colormap name or a '#rrggbb' base colour
    # (a light-to-dark map through it, pfl_dist/sweep/style.py); the built-ins are told apart by
    # tests/unit/test_style.py (CIELAB distance >= 30 between their single-curve colours)
    colors: str = "Greys"
    marker: str = "o"  # figures: its marker
    # a config key added when pfl_dist changed what this method computes at the key's default:
    # always part of its runs' identity (pfl_dist/rundir.py `LATER_KEYS`), so a run made under the
    # earlier rules is another run, never "already complete"
    results_changed_with: str = ""
    # algorithm.params: the settings of a plug-in algorithm, (name, default) pairs; a value given in
    # algorithm.params must have its default's type (ints widen to float) (`check_params`)
    params: tuple[tuple[str, Any], ...] = ()
    # per-client rows of the model's size that its `client_rows()` declare (FedCLUP's local model,
    # Ditto's personal one; SCAFFOLD 2 with c_i; 0 for a method that keeps nothing): the memory
    # estimate counts them without torch (pfl_dist/resources.py); the Trainer refuses a class whose
    # declared rows differ from it
    kept_models: int = 1

    def __post_init__(self) -> None:
        assert self.message in MESSAGES, self.message
        if type(self.kept_models) is not int or self.kept_models < 0:
            raise ValueError(f"kept_models must be an integer >= 0, got {self.kept_models!r}")

    def to_dict(self) -> dict[str, Any]:
        """As summary.json records it (JSON: `reads` as a list, `params` as [name, default] lists;
        `info_from_summary` reads it back)."""
        return {key: _as_json(value) for key, value in asdict(self).items()}


ALGORITHMS_DIR = Path(__file__).with_name("algorithms")
"""The built-in algorithms' package: every module in it is read for `info = MethodInfo(...)` class
literals (`read_builtins`)."""


def read_builtins(directory: Path = ALGORITHMS_DIR) -> tuple[dict[str, MethodInfo], dict[str, plugins.PluginName]]:
    """The built-in methods and where each is declared, read by AST from the source of the modules
    of `directory` (pfl_dist/algorithms/) without importing them: every class whose body assigns
    `info = MethodInfo(...)` is a built-in named `info.name`, read by the same code as a plug-in's
    declaration (`declared_info`). Ordered by module name, then by class position in the module.

    Why no hand-written list: a built-in is its module's class and nothing else. Adding one is
    adding its class (and its test); the torch side (pfl_dist/algorithms/__init__.py `ALGORITHMS`)
    imports each class from where it is found here and checks it against this declaration.
    About 4 ms for the package's few modules, once per process (at import)."""
    methods: dict[str, MethodInfo] = {}
    where: dict[str, plugins.PluginName] = {}
    for path in sorted(directory.glob("*.py")):
        if path.stem == "__init__":
            continue
        for class_name, call in plugins.class_declaration(path, "info").items():
            source = plugins.PluginName(f"pfl_dist.algorithms.{path.stem}", class_name)
            info = declared_info(call, where=f"built-in algorithm {source}")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", info.name):
                raise ConfigError(f"built-in algorithm {source}: its name {info.name!r} must be lower-case letters, "
                                  "digits and '_' (a name with ':' is a plug-in's)")
            if info.name in methods:
                raise ConfigError(f"built-in algorithm {source}: name {info.name!r} is already {where[info.name]}'s")
            methods[info.name], where[info.name] = info, source
    return methods, where


def _as_json(value: Any) -> Any:
    """Tuples (nested ones too) as the lists JSON reads back."""
    return [_as_json(item) for item in value] if isinstance(value, tuple) else value


def method_info(name: str) -> MethodInfo:
    """The facts of algorithm.name: a built-in's from `METHODS`, a plug-in's (`module:Class`) read
    from the `info = MethodInfo(...)` literal in its class body without importing its module
    (pfl_dist/plugins.py), with `name` set to the plug-in name. ConfigError (one line) otherwise."""
    if name in METHODS:
        return METHODS[name]
    if not plugins.is_plugin_name(name):
        from pfl_dist.config import did_you_mean  # config imports this module: imported late

        raise ConfigError(f"algorithm.name {name!r} is not a built-in method{did_you_mean(name, METHOD_NAMES)} "
                          f"nor a plug-in 'package.module:Class'; built-ins: {', '.join(METHOD_NAMES)}")
    return plugin_info(plugins.parse(name, key="algorithm.name"))


def plugin_info(plugin: plugins.PluginName) -> MethodInfo:
    """A plug-in class's declared `info = MethodInfo(...)`, read by AST (no import, no torch)."""
    where = f"algorithm.name={plugin}"
    declaration = plugins.plugin_declaration(plugin, "info", "MethodInfo", where=where)
    return replace(declared_info(declaration, where=where), name=str(plugin))


def declared_info(call: ast.Call, *, where: str) -> MethodInfo:
    """The MethodInfo of a class body's `info = MethodInfo(...)` call (its arguments literals), a
    built-in's and a plug-in's alike; ConfigError (one line, starting with `where`) otherwise."""
    try:
        args, kwargs = plugins.literal_call(call, where=where)
    except ValueError as err:  # names `where` itself
        raise ConfigError(str(err)) from None
    try:
        info = MethodInfo(*args, **kwargs)
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"{where}: its info = MethodInfo(...) is not valid: {err}") from None
    if not isinstance(info.params, tuple) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                     for p in info.params):
        raise ConfigError(f"{where}: its MethodInfo params must be a tuple of (name, default) pairs")
    return info


def check_params(info: MethodInfo, params: dict[str, Any]) -> dict[str, Any]:
    """algorithm.params against the method's declared params: the declared defaults updated with
    `params`; an unknown key or a value of another type than its default's is one ConfigError."""
    from pfl_dist.config import did_you_mean  # config imports this module: imported late

    defaults = dict(info.params)
    resolved = dict(defaults)
    for key, value in params.items():
        dotted = f"algorithm.params.{key}"
        if key not in defaults:
            takes = f"it takes {', '.join(defaults)}" if defaults else "it takes none"
            close = did_you_mean(str(key), list(defaults), prefix="algorithm.params.")
            raise ConfigError(f"unknown config key '{dotted}'{close}: {info.name} has no such parameter ({takes})")
        default = defaults[key]
        if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"{dotted} must be {type(default).__name__}, got {value!r}")
        resolved[key] = value
    return resolved


def keys_read(info: MethodInfo, config: dict[str, Any]) -> list[str]:
    """The algorithm.* and comm.* keys a run of this method with this config (`Config.to_dict()`
    or a summary's `config`) reads: its local schedule (num_local_steps for full-batch GD,
    local_epochs and batch_size for minibatch SGD), local_lr, lam where it enters the updates, the
    method's own keys (`reads`; the lam=auto ones only with lam: auto), algorithm.params when it
    declares params (a plug-in's own settings), and when it communicates
    algorithm.client_weights (the server's means), comm.codec and comm.downlink_codec. sample_fraction, read by every
    method, is left out."""
    algorithm = config["algorithm"]
    schedule = GD_SCHEDULE if algorithm.get("batch_size") is None else MINIBATCH_SCHEDULE
    own = [key for key in info.reads if key not in LAM_AUTO_KEYS or algorithm.get("lam") == "auto"]
    return [*schedule, "algorithm.local_lr", *(["algorithm.lam"] if info.uses_lam else []), *own,
            *(["algorithm.params"] if info.params else []),
            *(["algorithm.client_weights", "comm.codec", "comm.downlink_codec"] if info.communicates else [])]


def info_from_summary(summary: dict[str, Any]) -> MethodInfo:
    """The method facts a finished run recorded (summary.json "method"); a fact it did not record
    (runs from before that key, or before the fact existed) comes from this table by name."""
    recorded = summary.get("method")
    name = recorded.get("name") if isinstance(recorded, dict) else None
    name = name if isinstance(name, str) else summary["config"]["algorithm"]["name"]
    known = METHODS.get(name, MethodInfo(name, name))
    if isinstance(recorded, dict) and isinstance(recorded.get("params"), list):  # JSON: pairs as lists
        recorded = {**recorded, "params": tuple(tuple(pair) for pair in recorded["params"])}
    if not isinstance(recorded, dict):
        return known
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()
                              if k in MethodInfo.__dataclass_fields__}
    return replace(known, **fields)


# The built-ins, read from pfl_dist/algorithms/ once per process: name -> facts, and name -> the
# class that declares them (`module:Class`, which the torch side imports).
METHODS, BUILTIN_CLASSES = read_builtins()
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
