"""`comm.codec` strings ("none", "fp16", "topk:0.01", "powersgd:2") parsed and validated.

No torch here: the config (and the sweep tooling, which never imports torch) validates codec
strings through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> (parameter meaning, parameter type, default) ; None: the codec takes no parameter.
_PARAMETERS: dict[str, tuple[str, type, float | int] | None] = {
    "none": None,
    "fp16": None,
    "bf16": None,
    "qsgd": ("levels s, an integer in 1..127", int, 4),
    "topk": ("fraction of coordinates sent, in (0, 1]", float, 0.01),
    "randk": ("fraction of coordinates sent, in (0, 1]", float, 0.01),
    "powersgd": ("rank r, an integer >= 1", int, 1),
}
CODEC_NAMES = tuple(_PARAMETERS)
# The training collectives a codec's round issues (pfl_dist/exchange/codecs.py): every codec
# all-reduces its float64 control lane; QSGD and top-k send their messages by all_gather. A
# collective type not listed never carries a byte of that codec's training traffic, so its
# counters are structurally zero (TensorBoard leaves them out: pfl_dist/tensorboard_views.py).
_COLLECTIVES: dict[str, tuple[str, ...]] = {
    "none": ("all_reduce",), "fp16": ("all_reduce",), "bf16": ("all_reduce",),
    "qsgd": ("all_reduce", "all_gather"), "topk": ("all_reduce", "all_gather"),
    "randk": ("all_reduce",), "powersgd": ("all_reduce",),
}


@dataclass(frozen=True)
class CodecSpec:
    name: str
    param: float | int | None  # levels, fraction or rank; None for codecs without one

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}:{self.param:g}"

    @property
    def collectives(self) -> tuple[str, ...]:
        """The collective types ('all_reduce', 'all_gather') this codec's training rounds use."""
        return _COLLECTIVES[self.name]


def _valid(name: str, value: float | int) -> bool:
    if name == "qsgd":
        return 1 <= value <= 127
    if name in ("topk", "randk"):
        return 0 < value <= 1
    return value >= 1


def parse_codec(text: str, *, key: str = "comm.codec") -> CodecSpec:
    """'topk:0.01' -> CodecSpec('topk', 0.01); ValueError naming `key` on anything else."""
    name, sep, raw = str(text).partition(":")
    if name not in _PARAMETERS:
        raise ValueError(f"{key} must be one of {', '.join(CODEC_NAMES)} (with ':parameter' where one is "
                         f"taken), got {text!r}")
    meaning = _PARAMETERS[name]
    if meaning is None:
        if sep:
            raise ValueError(f"{key}: codec '{name}' takes no parameter, got {text!r}")
        return CodecSpec(name, None)
    what, kind, default = meaning
    if not sep:
        return CodecSpec(name, default)
    try:
        value: float | int = kind(raw)
    except ValueError:
        raise ValueError(f"{key}: the parameter of '{name}' is the {what}, got {raw!r}") from None
    if not _valid(name, value):
        raise ValueError(f"{key}: the parameter of '{name}' is the {what}, got {raw!r}")
    return CodecSpec(name, value)
