"""What each federated method is, without torch: its label, whether it communicates, what its
message is, whether algorithm.lam enters its updates, which other algorithm keys it reads,
whether it needs a model with a body/head split, whether it defines a global model that is
evaluated on its own.

The algorithm classes (pfl_dist/algorithms/) take these facts from here (`Algorithm.info`), the
Trainer writes them into summary.json ("method"), and the sweep tables and figures read them
from there. This module is the only list of method names; it imports nothing heavy, so the
launcher, the config checks and the torch-free sweep driver can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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
    # (client_weights, comm.codec): `keys_read`, results.csv's settings columns
    reads: tuple[str, ...] = ()
    paper: str = ""
    # figures: its colour family, a matplotlib sequential colormap name or a '#rrggbb' base colour
    # (a light-to-dark map through it, pfl_dist/sweep/style.py); the 12 are told apart by
    # tests/unit/test_plot.py (CIELAB distance >= 30 between their single-curve colours)
    colors: str = "Greys"
    marker: str = "o"  # figures: its marker
    # a config key added when pfl_dist changed what this method computes at the key's default:
    # always part of its runs' identity (pfl_dist/rundir.py `LATER_KEYS`), so a run made under the
    # earlier rules is another run, never "already complete"
    results_changed_with: str = ""
    # algorithm.params: the settings of a plug-in algorithm, (name, default) pairs; a value given in
    # algorithm.params must have its default's type (ints widen to float) (`check_params`)
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        assert self.message in MESSAGES, self.message

    def to_dict(self) -> dict[str, Any]:
        """As summary.json records it (JSON: `reads` as a list; `info_from_summary` reads it back)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("fedclup", "FedCLUP", message=STATE, uses_lam=True, reads=("algorithm.global_lr", *LAM_AUTO_KEYS),
               paper="Yu et al., ICML 2025", colors="Reds", marker="^"),
    MethodInfo("fedavg", "FedAvg", paper="McMahan et al., AISTATS 2017", colors="Blues", marker="o"),
    MethodInfo("fedprox", "FedProx", uses_lam=True, lam_symbol="μ", paper="Li et al., MLSys 2020",
               colors="#2ca02c", marker="D"),  # green
    MethodInfo("local", "LocalTrain", communicates=False, colors="Greys", marker="s"),
    # issue 21: the inner solve starts from w_g (was: the previous theta_i)
    MethodInfo("pfedme", "pFedMe", uses_lam=True, reads=("algorithm.personal_lr", "algorithm.inner_steps",
                                                         "algorithm.inner_warm_start", "algorithm.beta"),
               paper="Dinh et al., NeurIPS 2020", colors="#6a3d9a", marker="v",  # purple
               results_changed_with="algorithm.inner_warm_start"),
    # issue 21: personal_lr auto is 1/(L + lam) (was local_lr), added with client_weights
    MethodInfo("ditto", "Ditto", uses_lam=True, reads=("algorithm.personal_lr", "algorithm.personal_epochs"),
               paper="Li et al., ICML 2021", colors="#ff7f00", marker="P",  # orange
               results_changed_with="algorithm.client_weights"),
    MethodInfo("apfl", "APFL", reads=("algorithm.personal_lr", "algorithm.alpha"), paper="Deng et al., 2020",
               colors="#ad017e", marker="X"),  # magenta
    MethodInfo("perfedavg", "Per-FedAvg (FO)", reads=("algorithm.personal_lr",), paper="Fallah et al., NeurIPS 2020",
               colors="#a6761d", marker="*"),  # ochre
    MethodInfo("fedrep", "FedRep", parameter_groups=True, global_model=False,
               reads=("algorithm.personal_lr", "algorithm.personal_epochs"), paper="Collins et al., ICML 2021",
               colors="#17becf", marker="p"),  # cyan
    MethodInfo("fedper", "FedPer", parameter_groups=True, global_model=False, paper="Arivazhagan et al., 2019",
               colors="#1b9e77", marker="h"),  # teal
    MethodInfo("fedavg_ft", "FedAvg-FT", reads=("algorithm.personal_lr", "algorithm.personal_epochs"),
               colors="#e78ac3", marker="d"),  # pink
    # issue 21: the server's means are plain means (were n_i-weighted)
    MethodInfo("scaffold", "SCAFFOLD", reads=("algorithm.beta",), paper="Karimireddy et al., ICML 2020",
               colors="#bcbd22", marker="<", results_changed_with="algorithm.client_weights"),  # olive
)}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


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
    path = plugins.source_path(plugin.module)
    if path is None:
        raise ConfigError(f"{where}: cannot find module {plugin.module} (is its folder on PYTHONPATH?)")
    try:
        declared = plugins.class_declaration(path, "info")
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"{where}: cannot read {path}: {type(err).__name__}: {err}") from None
    if plugin.attr not in declared:
        raise ConfigError(f"{where}: {path} has no class {plugin.attr} declaring 'info = MethodInfo(...)' in its body")
    try:
        args, kwargs = plugins.literal_call(declared[plugin.attr], where=where)
        info = MethodInfo(*args, **kwargs)
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"{where}: its info = MethodInfo(...) is not valid: {err}") from None
    if not isinstance(info.params, tuple) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                     for p in info.params):
        raise ConfigError(f"{where}: its MethodInfo params must be a tuple of (name, default) pairs")
    return replace(info, name=str(plugin))


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
    algorithm.client_weights (the server's means) and comm.codec. sample_fraction, read by every
    method, is left out."""
    algorithm = config["algorithm"]
    schedule = GD_SCHEDULE if algorithm.get("batch_size") is None else MINIBATCH_SCHEDULE
    own = [key for key in info.reads if key not in LAM_AUTO_KEYS or algorithm.get("lam") == "auto"]
    return [*schedule, "algorithm.local_lr", *(["algorithm.lam"] if info.uses_lam else []), *own,
            *(["algorithm.params"] if info.params else []),
            *(["algorithm.client_weights", "comm.codec"] if info.communicates else [])]


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
