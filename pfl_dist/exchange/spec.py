"""The codec registry and `comm.codec` strings ("none", "fp16", "topk:0.01", "powersgd:2").

One registry (`CODECS`): each entry says what its codec is, not only what its string looks like:
the parameters its string takes (`Parameter`: meaning, type, default, range), the compressor class
that encodes and decodes (`compressor`, a `module:Class` name, imported only by the Exchange: the
same path a plug-in takes, pfl_dist/plugins.py), the transport that carries its messages
(`transport`), and whether it compresses with error feedback (`error_feedback`). The parser, the
TensorBoard counters (`CodecSpec.collectives`), the error-feedback rule (pfl_dist/exchange/base.py
`feedback_rule`) and the Exchange all read these entries; tests/unit/test_exchange.py checks each
entry against what its compressor does on a round.

A plug-in codec is `comm.codec: "package.module:Class"`, a Compressor subclass whose class body
declares `codec = CodecInfo(transport=..., error_feedback=...)` with literal values: read from its
source by AST (pfl_dist/plugins.py, no import, no torch), it becomes a `CodecEntry` named by the
plug-in name, and from there everything (its transport, its error feedback, the loading of its
class, the run identity) goes through the same path as a built-in's (docs/EXTENDING.md "A codec").

No torch here: the config (and the sweep tooling, which never imports torch) validates codec
strings through this module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pfl_dist import plugins
from pfl_dist.errors import ConfigError
from pfl_dist.methods import INCREMENT

# Transports (pfl_dist/exchange/base.py). ALL_REDUCE: the messages sum (the compressor is linear
# in the update: the sum of the clients' messages is the message of their sum), so each rank
# sends one message of its clients' weighted sum and the ring adds them. ALL_GATHER: every
# client's message travels as encoded (per-client scales or indices do not add up) and every
# rank decodes them all in client-id order.
ALL_REDUCE, ALL_GATHER = "all_reduce", "all_gather"
TRANSPORTS = (ALL_REDUCE, ALL_GATHER)


@dataclass(frozen=True)
class Parameter:
    """One ':value' of a codec string, in order."""

    meaning: str  # how the one-line error names it: "levels s, an integer in 1..127"
    kind: type  # int or float
    default: float | int
    low: float  # the smallest value allowed (excluded when `low_open`)
    high: float = math.inf
    low_open: bool = False

    def valid(self, value: float | int) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


@dataclass(frozen=True)
class CodecEntry:
    name: str
    transport: str  # ALL_REDUCE or ALL_GATHER (above)
    compressor: str = ""  # 'module:Class' of its Compressor (pfl_dist/exchange/base.py); "" for `none`
    parameters: tuple[Parameter, ...] = ()
    error_feedback: bool = False  # a biased compressor that feeds back what it leaves out
    # A run's config records this codec with every parameter written out (`qsgd:4` as `qsgd:4:512`,
    # `CommConfig`): set for a codec whose short string gave other results in an earlier pfl_dist
    # (QSGD before bucketed norms: one norm per update), so a run made then (its config holds the
    # short string) is never taken for one made now (pfl_dist/rundir.py: another config, another
    # run dir, not resumed). Other codecs keep the string as given, so their runs keep their hash.
    spelled_out: bool = False

    def __post_init__(self) -> None:
        assert self.transport in TRANSPORTS, self.transport

    @property
    def collectives(self) -> tuple[str, ...]:
        """The collective types its training rounds use: every codec all-reduces its float64
        control lane (`none` its one buffer); a gathering one adds its all_gather. A type not
        listed never carries a byte of its traffic, so its counters are structurally zero
        (TensorBoard leaves them out: pfl_dist/tensorboard_views.py)."""
        return (ALL_REDUCE,) if self.transport == ALL_REDUCE else (ALL_REDUCE, ALL_GATHER)


@dataclass(frozen=True)
class CodecInfo:
    """What a plug-in compressor class declares in its body, `codec = CodecInfo(...)` (literals)."""

    transport: str  # "all_reduce" (SummingCompressor) or "all_gather" (GatherCompressor)
    error_feedback: bool = False

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be True or False, got {self.error_feedback!r}")


@functools.cache
def plugin_entry(name: str, *, key: str = "comm.codec") -> CodecEntry:
    """A plug-in `module:Class`'s entry, from its declared `codec = CodecInfo(...)` read by AST;
    ConfigError (one line) when the module, the class or a valid declaration is missing."""
    plugin = plugins.parse(name, key=key)
    where = f"{key}={plugin}"
    declaration = plugins.plugin_declaration(plugin, "codec", "CodecInfo", where=where)
    try:
        args, kwargs = plugins.literal_call(declaration, where=where)
        info = CodecInfo(*args, **kwargs)
    except (ValueError, TypeError) as err:
        message = str(err) if str(err).startswith(where) else f"{where}: its codec = CodecInfo(...) is not valid: {err}"
        raise ConfigError(message) from None
    return CodecEntry(str(plugin), info.transport, str(plugin), error_feedback=info.error_feedback)


def codec_entry(name: str) -> CodecEntry:
    """A built-in's entry from `CODECS`, a plug-in's from its declaration (`plugin_entry`)."""
    return CODECS[name] if name in CODECS else plugin_entry(name)


def is_plugin_codec(text: str) -> bool:
    """`module:Class` that is not a built-in with its parameter ('qsgd:x' is a bad built-in)."""
    return plugins.is_plugin_name(str(text)) and str(text).partition(":")[0] not in CODECS


_FRACTION = Parameter("fraction of coordinates sent, in (0, 1]", float, 0.01, 0, 1, low_open=True)
CODECS: dict[str, CodecEntry] = {entry.name: entry for entry in (
    CodecEntry("none", ALL_REDUCE),
    CodecEntry("fp16", ALL_REDUCE, "pfl_dist.exchange.codecs:HalfPrecision"),
    CodecEntry("bf16", ALL_REDUCE, "pfl_dist.exchange.codecs:BFloat16"),
    # qsgd:LEVELS:BUCKET; the bucket's default, 512, is the QSGD paper's experiments' bucket size
    CodecEntry("qsgd", ALL_GATHER, "pfl_dist.exchange.codecs:QSGD",
               (Parameter("levels s, an integer in 1..127", int, 4, 1, 127),
                Parameter("bucket size d, an integer >= 1", int, 512, 1)), spelled_out=True),
    CodecEntry("topk", ALL_GATHER, "pfl_dist.exchange.codecs:TopK", (_FRACTION,), error_feedback=True),
    CodecEntry("randk", ALL_REDUCE, "pfl_dist.exchange.codecs:RandK", (_FRACTION,), error_feedback=True),
    CodecEntry("powersgd", ALL_REDUCE, "pfl_dist.exchange.powersgd:PowerSGD",
               (Parameter("rank r, an integer >= 1", int, 1, 1),), error_feedback=True),
)}
CODEC_NAMES = tuple(CODECS)


@dataclass(frozen=True)
class CodecSpec:
    name: str
    params: tuple[float | int, ...] = ()  # the entry's parameters, in order, defaults filled in

    def __str__(self) -> str:  # a plug-in's name has its own colon and no parameters
        return ":".join([self.name, *(f"{value:g}" for value in self.params)])

    @property
    def entry(self) -> CodecEntry:
        return codec_entry(self.name)

    @property
    def param(self) -> float | int | None:
        """The first parameter (levels, fraction or rank); None for codecs without one."""
        return self.params[0] if self.params else None

    @property
    def collectives(self) -> tuple[str, ...]:
        """The collective types ('all_reduce', 'all_gather') this codec's training rounds use."""
        return self.entry.collectives


def feedback_rule(*, error_feedback: bool, message: str) -> bool:
    """Whether a client keeps an error-feedback residual: only when its codec compresses with error
    feedback and its message is a fresh increment (pfl_dist/methods.py INCREMENT: FedAvg's reset
    update, SCAFFOLD's y_i - x and c_i+ - c_i). For kept state (STATE: FedCLUP's w_i - w_g) the part
    C leaves out is still in w_i - w_g next round; with a residual as well it would be sent twice
    (with rand-k:0.25 the issue-21 run's w_g ended 220 from the dense run's, ||w_g|| = 3.2)."""
    return error_feedback and message == INCREMENT


def recorded_codec(text: str, *, key: str = "comm.codec") -> str:
    """The `comm.codec` (or `comm.downlink_codec`, `key`) a run records: `text` as given, or with
    every parameter written out for a `spelled_out` entry ("qsgd:4" -> "qsgd:4:512")."""
    spec = parse_codec(text, key=key)
    return str(spec) if spec.entry.spelled_out else str(text)


def codec_label(text: str) -> str:
    """How tables name a run's codec, from the `comm.codec` it recorded: with its default
    parameters filled in ("topk" -> "topk:0.01"); a spelled-out codec as recorded, so a run from
    before it was spelled out ("qsgd:4": one norm per update) is not shown as "qsgd:4:512"."""
    spec = parse_codec(text)
    return str(text) if spec.entry.spelled_out else str(spec)


def parse_codec(text: str, *, key: str = "comm.codec") -> CodecSpec:
    """'topk:0.01' -> CodecSpec('topk', (0.01,)), 'package.module:Class' -> a plug-in's
    CodecSpec('package.module:Class'); ValueError (ConfigError for a plug-in) naming `key` on
    anything else."""
    if is_plugin_codec(text):
        plugin_entry(str(text), key=key)  # its declaration, or one line
        return CodecSpec(str(text))
    name, sep, raw = str(text).partition(":")
    if name not in CODECS:
        raise ValueError(f"{key} must be one of {', '.join(CODEC_NAMES)} (with ':parameter' where one is "
                         f"taken) or a plug-in 'package.module:Class', got {text!r}")
    parameters = CODECS[name].parameters
    if not parameters:
        if sep:
            raise ValueError(f"{key}: codec '{name}' takes no parameter, got {text!r}")
        return CodecSpec(name)
    given = raw.split(":") if sep else []
    if len(given) > len(parameters):
        raise ValueError(f"{key}: codec '{name}' takes at most {len(parameters)} parameter(s), got {text!r}")
    values: list[float | int] = []
    for parameter, value_text in zip(parameters, given + [None] * (len(parameters) - len(given)), strict=True):
        if value_text is None:
            values.append(parameter.default)
            continue
        try:
            value: float | int = parameter.kind(value_text)
        except ValueError:
            value = math.nan
        if not parameter.valid(value):
            raise ValueError(f"{key}: the parameter of '{name}' is the {parameter.meaning}, got {value_text!r}")
        values.append(value)
    return CodecSpec(name, tuple(values))
