"""Sweep files: a base config, overrides, variants, a grid and seeds, expanded into points.

A sweep YAML (configs/sweeps/*.yaml):

    base: ../default.yaml            # engine config, relative to this sweep file
    out_dir: runs/sweeps/quick       # one run dir per point below it (default: runs/sweeps/<stem>)
    overrides: {data.num_clients: 10, train.num_rounds: 30}
    variants:                        # named override sets; a list value is a grid inside the variant
      fedavg: {algorithm.name: fedavg, algorithm.local_lr: 0.01}
      fedclup: {algorithm.name: fedclup, algorithm.lam: [0.02, 0.1, 0.5]}
    grid: {data.R: [0.1, 1.0, 3.0]}  # crossed with every variant
    seeds: [0]                       # or `repetitions: 3` for seeds 0, 1, 2
    tune: {metric: val/acc_personal} # optional: each variant's lists are its tuning grid (tuning.py)
    launch: {nproc_per_node: 2, torchrun_args: [], mode: per_point, jobs: 1}

Variants exist because a pure cartesian product cannot say "FedAvg once, FedCLUP at three
lambdas": lambda means nothing to FedAvg, and crossing it would repeat identical FedAvg runs.
Precedence is base < overrides < variant < grid < seed; a key set by both a variant and the grid
is an error rather than a silent winner, and so is a key written twice in the file.

Overrides given when the sweep is started (`python -m pfl_dist.sweep FILE train.num_rounds=5`,
`pfl_dist.sweep.run(FILE, {"train.num_rounds": 5})`) apply to every point, over the file's
`overrides` and the variants' fixed values, so a sweep shrinks without a copy of its YAML. A key
the sweep varies (a list in the grid or in a variant) is refused in one line: overriding it would
collapse that axis while the point names still name its values. Every point's
config is built and validated here, so a bad value costs one line before any process starts.
Points of one variant whose configs are equal once validated (a grid of [1.0, 1]) run once.

`tune` (pfl_dist/sweep/tuning.py) makes each variant's lists a grid to pick from on the validation
rows: every point of it must then measure them (data.val_fraction > 0), and the sweep has no
top-level `grid` (a pick is per variant).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pfl_dist.config import (
    MAX_OUT_DIR_BYTES,
    MAX_SEED,
    SECTIONS,
    Config,
    apply_overrides,
    check_path_text,
    did_you_mean,
    parse_override,
    read_yaml,
)
from pfl_dist.errors import ConfigError, PflError
from pfl_dist.sweep.tuning import TuneSpec, parse_tune

Mode = Literal["per_point", "in_job"]
_TOP_KEYS = ("description", "base", "out_dir", "overrides", "variants", "grid", "seeds", "repetitions", "launch",
             "tune")
_LAUNCH_KEYS = ("nproc_per_node", "torchrun_args", "mode", "jobs")
_SWEEP_OWNED = ("run.name", "run.out_dir", "run.seed")  # set per point by the sweep itself
MAX_POINTS = 100_000  # a sweep file's points; at ~1 s each that is already more than a day
_NPROC_FLAGS = ("--nproc-per-node", "--nproc_per_node")
_FIXED_RDZV_FLAGS = ("--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr", "--master-port",
                     "--master_port")


@dataclass(frozen=True)
class LaunchSpec:
    nproc_per_node: int = 1  # ranks per torchrun job
    torchrun_args: tuple[str, ...] = ()  # extra torchrun options, e.g. --nnodes, --max-restarts
    mode: Mode = "per_point"  # per_point: one torchrun per point; in_job: many points per torchrun
    jobs: int = 1  # torchrun jobs running at the same time

    def __post_init__(self) -> None:
        _require(self.nproc_per_node >= 1, f"launch.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        _require(self.jobs >= 1, f"launch.jobs must be >= 1, got {self.jobs}")
        _require(self.mode in ("per_point", "in_job"),
                 f"launch.mode must be 'per_point' or 'in_job', got {self.mode!r}")
        flags = [arg.split("=")[0] for arg in self.torchrun_args]
        _require(not set(flags) & set(_NPROC_FLAGS),
                 "launch.torchrun_args must not set --nproc-per-node; use launch.nproc_per_node")
        _require(self.jobs == 1 or not set(flags) & set(_FIXED_RDZV_FLAGS),
                 "launch.jobs > 1 needs a free port per job: drop the fixed rendezvous options from torchrun_args")

    @property
    def world_size(self) -> int:
        from pfl_dist.launch import planned_world_size

        return planned_world_size([f"--nproc-per-node={self.nproc_per_node}", *self.torchrun_args])


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its run-dir name, what distinguishes it, and its validated config."""

    name: str
    variant: str | None
    values: dict[str, Any]  # dotted key -> value for every key the variant grid and grid vary
    seed: int
    overrides: tuple[str, ...]  # `section.key=value` on top of the base file, incl. run.*
    cfg: Config


@dataclass(frozen=True)
class Sweep:
    path: Path
    base: Path | None
    out_dir: Path
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]
    launch: LaunchSpec
    points: tuple[Point, ...] = field(default=())
    base_config: dict[str, Any] = field(default_factory=dict)  # the base file, parsed once
    given: dict[str, Any] = field(default_factory=dict)  # the overrides given at the start, for every point
    text: bytes = b""  # the sweep file's bytes (a mapping's YAML), kept as out_dir/sweep.yaml
    tune: TuneSpec | None = None  # each variant's lists are a grid picked from on validation rows


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def yaml_value(value: Any) -> str:
    """The override text that yaml.safe_load turns back into `value` (types survive)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _check_dotted(key: Any, where: str) -> str:
    _require(isinstance(key, str) and key.count(".") == 1 and all(key.split(".")),
             f"{where}: key {key!r} must look like section.key")
    section = key.split(".")[0]
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown config section in '{key}'{did_you_mean(section, list(SECTIONS))}")
    _require(key not in _SWEEP_OWNED, f"{where}: {key} is set by the sweep (use seeds/repetitions, out_dir)")
    return key


def _mapping(raw: Any, where: str) -> dict[Any, Any]:
    _require(isinstance(raw, dict), f"{where} must be a mapping, got {raw!r}")
    return dict(raw)


def _check_keys(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown sweep key '{where}{key}'{did_you_mean(str(key), known, prefix=where)}")


def _parse_axes(raw: Any, where: str, *, lists_only: bool) -> dict[str, Any]:
    """Dotted key -> value; a list is an axis to expand (and must be a non-empty list of scalars)."""
    axes: dict[str, Any] = {}
    for key, value in _mapping(raw, where).items():
        key = _check_dotted(key, where)
        if lists_only:
            _require(isinstance(value, list), f"{where}.{key} must be a list of values, got {value!r}")
        if isinstance(value, list):
            _require(len(value) > 0, f"{where}.{key} must not be empty")
            _require(all(not isinstance(v, (list, dict)) for v in value), f"{where}.{key} must hold scalars")
        else:
            _require(not isinstance(value, dict), f"{where}.{key} must be a scalar or a list, got a mapping")
        axes[key] = value
    return axes


def _parse_seeds(raw: dict[str, Any]) -> tuple[int, ...]:
    _require(not ("seeds" in raw and "repetitions" in raw), "sweep: give either seeds or repetitions, not both")
    if "repetitions" in raw:
        reps = raw["repetitions"]
        _require(type(reps) is int and reps >= 1, f"repetitions must be an integer >= 1, got {reps!r}")
        _require(reps <= MAX_POINTS, f"repetitions must be at most {MAX_POINTS}, got {reps}")
        return tuple(range(reps))
    seeds = raw.get("seeds", [0])
    _require(isinstance(seeds, list) and len(seeds) > 0
             and all(type(s) is int and 0 <= s <= MAX_SEED for s in seeds),
             f"seeds must be a non-empty list of integers in [0, 2**63 - 1], got {seeds!r}")
    _require(len(set(seeds)) == len(seeds), "seeds has a repeated value")
    return tuple(seeds)


def _parse_launch(raw: Any) -> LaunchSpec:
    values = _mapping(raw, "launch")
    _check_keys(values, _LAUNCH_KEYS, "launch.")
    types = {"nproc_per_node": int, "jobs": int, "mode": str}
    for key, kind in types.items():
        if key in values:
            _require(type(values[key]) is kind, f"launch.{key} must be {kind.__name__}, got {values[key]!r}")
    args = values.get("torchrun_args", [])
    _require(isinstance(args, list) and all(isinstance(a, str) for a in args),
             f"launch.torchrun_args must be a list of strings, got {args!r}")
    values["torchrun_args"] = tuple(args)
    return LaunchSpec(**values)


def _parse_variants(raw: Any, grid: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    variants: dict[str, dict[str, Any]] = {}
    for name, values in _mapping(raw, "variants").items():
        _require(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9._+-]+", name) is not None,
                 f"variants: name {name!r} must be a short word (letters, digits, . _ + -)")
        axes = _parse_axes(values, f"variants.{name}", lists_only=False)
        for key in axes:
            _require(key not in grid, f"variants.{name} sets {key}, which the grid also varies; keep one")
        variants[name] = axes
    _require(len(variants) > 0, "variants must not be empty (leave the key out instead)")
    return variants


def parse_given(overrides: Sequence[str] | Mapping[str, Any], grid: dict[str, Any],
                variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The overrides given at the start (`section.key=value` texts or a mapping), checked: dotted,
    of a known section, not a key the sweep itself sets or varies."""
    pairs = (list(overrides.items()) if isinstance(overrides, Mapping)
             else [(".".join(key), value) for key, value in map(parse_override, overrides)])
    varied = {k for axes in (grid, *variants.values()) for k, v in axes.items() if isinstance(v, list)}
    given: dict[str, Any] = {}
    for key, value in pairs:
        key = _check_dotted(key, "override")
        _require(key not in varied, f"override {key}: the sweep varies it (grid or variant list); edit the sweep "
                 "file's list instead, or --only to run some of its values")
        given[key] = value
    return given


def parse_sweep(raw: dict[str, Any], *, path: Path, out_dir: str | None = None,
                launch_overrides: dict[str, Any] | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> Sweep:
    """Validate the sweep file's structure; `expand_points` then validates every point's config."""
    _check_keys(raw, _TOP_KEYS, "")
    base = raw.get("base")
    _require(base is None or isinstance(base, str), f"base must be a config file path, got {base!r}")
    base_path = (path.parent / base) if base else None
    base_config = read_yaml(base_path) if base_path is not None else {}  # a broken base is named now
    grid = _parse_axes(raw.get("grid", {}), "grid", lists_only=True)
    variants = _parse_variants(raw["variants"], grid) if "variants" in raw else {}
    tune = parse_tune(raw["tune"], raw.get("variants")) if "tune" in raw else None
    _require(tune is None or not grid, "tune picks per variant: a tuned sweep has no top-level grid (put each "
             "method's grid in its variant)")
    _require(tune is None or bool(variants), "tune picks per variant: give the methods as variants, each with its grid")
    launch_raw = {**_mapping(raw.get("launch", {}), "launch"), **(launch_overrides or {})}
    out = out_dir or raw.get("out_dir") or f"runs/sweeps/{path.stem}"
    _require(isinstance(out, str), f"out_dir must be a path, got {out!r}")
    check_path_text(out, "--out-dir" if out_dir else "out_dir", max_bytes=MAX_OUT_DIR_BYTES)  # every run.out_dir
    return Sweep(path=path, base=base_path, out_dir=Path(out),
                 overrides=_parse_axes(raw.get("overrides", {}), "overrides", lists_only=False),
                 variants=variants, grid=grid, seeds=_parse_seeds(raw), launch=_parse_launch(launch_raw),
                 base_config=base_config, given=parse_given(overrides, grid, variants), tune=tune)


def _short_names(keys: list[str]) -> dict[str, str]:
    """`data.R` -> `R` unless two varied keys share the last part; then keep the dotted key."""
    last = [k.split(".")[1] for k in keys]
    return {k: (k.split(".")[1] if last.count(k.split(".")[1]) == 1 else k) for k in keys}


def _name_part(short: str, value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", f"{short}={yaml_value(value)}")


def _variant_items(sweep: Sweep) -> list[tuple[str | None, dict[str, Any]]]:
    return list(sweep.variants.items()) if sweep.variants else [(None, {})]


def _combos(axes: dict[str, Any]) -> list[dict[str, Any]]:
    varied = {k: v for k, v in axes.items() if isinstance(v, list)}
    return [dict(zip(varied, combo, strict=True)) for combo in itertools.product(*varied.values())]


def num_points(sweep: Sweep) -> int:
    """Variants x their grids x the grid x seeds, counted before anything is expanded."""
    def product(axes: dict[str, Any]) -> int:
        return math.prod(len(v) for v in axes.values() if isinstance(v, list))

    return sum(product(axes) for _, axes in _variant_items(sweep)) * product(sweep.grid) * len(sweep.seeds)


def point_specs(sweep: Sweep) -> list[tuple[str, str | None, dict[str, Any], int, tuple[str, ...]]]:
    """(name, variant, varied values, seed, overrides without run.*) in a deterministic order."""
    count = num_points(sweep)
    _require(count <= MAX_POINTS, f"sweep: {count} points (variants x grid x seeds); at most {MAX_POINTS} "
             "per sweep file: split it")
    varied_keys = list(sweep.grid) + [k for _, a in _variant_items(sweep) for k, v in a.items() if isinstance(v, list)]
    short = _short_names(sorted(set(varied_keys)))
    specs = []
    for variant, axes in _variant_items(sweep):
        fixed = {k: v for k, v in axes.items() if not isinstance(v, list)}
        for inner in _combos(axes):
            for outer in _combos(sweep.grid):
                for seed in sweep.seeds:
                    values = {**inner, **outer}
                    parts = ([variant] if variant else []) + [_name_part(short[k], v) for k, v in values.items()]
                    name = "__".join([*parts, f"seed={seed}"])
                    settings = {**sweep.overrides, **fixed, **sweep.given, **values}
                    overrides = tuple(f"{k}={yaml_value(v)}" for k, v in settings.items()) + (f"run.seed={seed}",)
                    specs.append((name, variant, values, seed, overrides))
    return specs


def build_point(sweep: Sweep, spec: tuple[str, str | None, dict[str, Any], int, tuple[str, ...]], *,
                available: int | None = None) -> Point:
    """One validated point; `available`: the memory its ranks may use (None: read it now)."""
    from pfl_dist.resources import check_memory

    name, variant, values, seed, overrides = spec
    full = (*overrides, f"run.out_dir={yaml_value(str(sweep.out_dir))}", f"run.name={yaml_value(name)}")
    try:
        cfg = apply_overrides(sweep.base_config, full)
        cfg.set_world_size(sweep.launch.world_size)
        check_memory(cfg, world_size=sweep.launch.world_size, ranks_here=sweep.launch.nproc_per_node,
                     available=available)
    except PflError as err:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ConfigError(f"sweep point {shown}: {err}") from None
    return Point(name=name, variant=variant, values=values, seed=seed, overrides=full, cfg=cfg)


def _without_equal_configs(points: tuple[Point, ...]) -> tuple[Point, ...]:
    """Points of one variant whose configs are equal once validated (a grid of [1.0, 1], [1, 1],
    or '1e-1' and 0.1) run once, as the first of them; one warning line lists what was merged."""
    kept: dict[str, Point] = {}
    merged: list[str] = []
    for point in points:
        config = point.cfg.to_dict()
        key = repr((point.variant, {**config, "run": {**config["run"], "name": None}}))
        if key in kept:
            merged.append(f"{point.name} = {kept[key].name}")
        else:
            kept[key] = point
    if merged:
        shown = "; ".join(merged[:3]) + (f"; and {len(merged) - 3} more" if len(merged) > 3 else "")
        print(f"pfl_dist.sweep: warning: {len(merged)} point(s) have the same config as another and run once: "
              f"{shown}", file=sys.stderr, flush=True)
    return tuple(kept.values())


def expand_points(sweep: Sweep) -> tuple[Point, ...]:
    """Every point, validated; names are unique and derived only from the varied values."""
    from pfl_dist.resources import available_bytes

    available = available_bytes()  # read once for all points
    points = _without_equal_configs(tuple(build_point(sweep, spec, available=available)
                                          for spec in point_specs(sweep)))
    names = [p.name for p in points]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    _require(duplicate is None, f"sweep: two points share the name {duplicate}; make variant names distinct")
    without = next((p for p in points if p.cfg.data.val_fraction == 0), None)
    _require(sweep.tune is None or without is None, f"tune.metric {sweep.tune.metric if sweep.tune else ''} is "
             f"measured on validation rows: set data.val_fraction > 0 for every point (in overrides; "
             f"{without.name if without else ''} has none)")
    if sweep.launch.mode == "in_job":
        shared = {(p.cfg.run.device, p.cfg.comm.backend, p.cfg.comm.timeout_s) for p in points}
        _require(len(shared) <= 1, "launch.mode in_job needs the same run.device, comm.backend and "
                 "comm.timeout_s for every point (they share one process group)")
    return points


def load_sweep(source: str | Path | Mapping[str, Any], *, out_dir: str | None = None,
               launch_overrides: dict[str, Any] | None = None,
               overrides: Sequence[str] | Mapping[str, Any] = ()) -> Sweep:
    """Read, validate and expand a sweep file, or a mapping in a sweep file's shape (its `base`
    relative to the working directory, its default out_dir runs/sweeps/sweep), with `overrides` for
    every point (data files included). Raises ConfigError with one line on any problem."""
    from pfl_dist.launch import preflight

    if isinstance(source, Mapping):
        path, raw = Path("sweep.yaml"), dict(source)
        text = yaml.safe_dump(raw, sort_keys=False).encode()
    else:
        path = Path(source)
        raw = read_yaml(path, what="sweep file")
        text = path.read_bytes()
    sweep = parse_sweep(raw, path=path, out_dir=out_dir, launch_overrides=launch_overrides, overrides=overrides)
    sweep = dataclasses.replace(sweep, text=text)
    points = expand_points(sweep)
    for cfg in {(p.cfg.data.kind, p.cfg.data.data_dir): p.cfg for p in points}.values():
        preflight(cfg, world_size=sweep.launch.world_size)
    return dataclasses.replace(sweep, points=points)
