"""Tuning, stated: each method's hyperparameter picked on validation rows from a stated grid.

A sweep file with a `tune` section (pfl_dist/sweep/spec.py) says how its variants' grids are
picked from:

    tune: {metric: val/acc_personal}      # goal: max (min for a loss) by default
    overrides: {data.val_fraction: 0.1, ...}
    variants:
      ditto: {algorithm.name: ditto, algorithm.lam: [0.1, 0.5, 2.0]}   # the grid, 3 values
      fedavg: {algorithm.name: fedavg}                                  # nothing to tune: runs once

Each list in a variant is that method's grid (several lists: their product); every grid point
runs on every seed of the sweep, and the pick of a variant is the grid point with the best mean
over the seeds of the final `metric`. The metric must be one measured on the clients' validation
rows (`val/...`, data.val_fraction > 0): selection never reads a test (`eval/`) metric, so the
test metrics of the pick are an honest report. A grid point counts only when it finished on as
many seeds as the variant's most complete point (a partial --only run picks nothing it cannot
compare); ties go to the first value of the grid. The grid is the one the sweep file states (kept
as sweep.yaml in the out dir): a value with no finished run is listed as not run, never picked.

The picks are not rerun: the grid runs already hold them (same config, same seeds, so a rerun
would repeat them bit for bit), and the pick's test metrics are read from its grid runs. What is
written (`write_tuning`, by the sweep at its end and by `python -m pfl_dist.sweep.family`):
tuning.md and tuning.csv in the sweep's out dir (per method: the tuned key(s), the grid, the mean
validation metric of each grid point, the pick). The family table and figures of a tuned sweep's
out dir (`tuned_runs`) show only the picked runs, each named with its pick and grid:
`Ditto (λ=0.5, picked from 0.1/0.5/2)`.
"""

from __future__ import annotations

import csv
import io
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from pfl_dist.config import read_yaml
from pfl_dist.errors import ConfigError, PflError
from pfl_dist.outputs import VAL_PREFIX, write_bytes_atomic
from pfl_dist.sweep.results import Run, read_summary
from pfl_dist.sweep.stats import Estimate, t_interval

TUNE_KEYS = ("metric", "goal")
TUNING_FILES = ("tuning.md", "tuning.csv")
SWEEP_COPY = "sweep.yaml"  # the sweep file as run, kept in its out dir by the sweep (pfl_dist/sweep/cli.py)


@dataclass(frozen=True)
class TuneSpec:
    metric: str  # a validation metric's tag: val/acc_personal, val/loss_personal
    goal: str  # "max" or "min"
    # variant -> (tuned keys, grid values): the grids the sweep file states (`stated_grids`)
    grids: dict[str, tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]] = field(default_factory=dict)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.goal == "max" else a < b


def parse_tune(raw: Any, variants: Any = None) -> TuneSpec:
    """The `tune` section: its metric must be a validation metric (val/...), never a test metric;
    `variants` (the sweep file's) state the grids."""
    if not isinstance(raw, dict):
        raise ConfigError(f"tune must be a mapping such as {{metric: val/acc_personal}}, got {raw!r}")
    unknown = [key for key in raw if key not in TUNE_KEYS]
    if unknown:
        raise ConfigError(f"unknown sweep key 'tune.{unknown[0]}' (tune takes {', '.join(TUNE_KEYS)})")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.startswith(VAL_PREFIX) or metric == VAL_PREFIX:
        raise ConfigError(f"tune.metric must be a metric of the validation rows such as val/acc_personal "
                          f"(data.val_fraction > 0; never a test metric, eval/...), got {metric!r}")
    goal = raw.get("goal", "min" if "loss" in metric else "max")
    if goal not in ("max", "min"):
        raise ConfigError(f"tune.goal must be 'max' or 'min', got {goal!r}")
    return TuneSpec(metric=metric, goal=goal, grids=stated_grids(variants))


def tune_of(results_dir: Path) -> TuneSpec | None:
    """The `tune` section of the sweep file a sweep kept in its out dir; None for an untuned one
    (or a folder of runs no sweep wrote). ConfigError when the copy cannot be read or its section is bad."""
    copy = results_dir / SWEEP_COPY
    if not copy.is_file():
        return None
    try:
        raw = read_yaml(copy, what="sweep file")
        return parse_tune(raw["tune"], raw.get("variants")) if "tune" in raw else None
    except PflError as err:  # a hand-edited copy: the table would show every grid run as a method's
        raise ConfigError(f"{copy}: {err}") from None


@dataclass(frozen=True)
class Candidate:
    """One grid point of a variant: its values (by tuned key), its runs (one per seed) and the mean
    final validation metric over them (None while it cannot be compared), with its 95% t interval
    over the seeds (`spread`; no half-width with one seed): the tables state how far apart the
    grid values are, the pick is by the mean alone."""

    values: tuple[Any, ...]
    runs: tuple[Run, ...]
    score: float | None
    spread: Estimate | None = None

    def text(self) -> str:
        """'0.8185 ± 0.041' (or 'not run', 'incomplete'), as the tuning table prints it."""
        if not self.runs:
            return "not run"
        if self.score is None:
            return "incomplete"
        half = None if self.spread is None else self.spread.half_width
        return f"{self.score:.4f}" if half is None else f"{self.score:.4f} ± {half:.2g}"


@dataclass(frozen=True)
class Pick:
    variant: str
    method: str  # the method's label without settings ('Ditto')
    keys: tuple[str, ...]  # the tuned keys (dotted); () for a variant without a grid
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None  # None: no grid point finished on every seed


def validation_final(run: Run, metric: str) -> float | None:
    """The run's final `metric` (a val/ tag), read from summary.json's `final` by that tag alone."""
    if not metric.startswith(VAL_PREFIX):  # a guard for callers: selection never reads test metrics
        raise ValueError(f"selection reads validation metrics only, not {metric!r}")
    summary = read_summary(run.path) or {}
    value = (summary.get("final") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def select(runs: Sequence[Run], spec: TuneSpec) -> list[Pick]:
    """Per variant (in the stated order, then the runs'), the grid point with the best mean
    validation metric over its seeds. The runs are a sweep's (their sweep_point.json names variant
    and varied values); a stated grid value without a finished run is listed, never picked."""
    groups: dict[str, dict[tuple[Any, ...], list[Run]]] = {}
    keys_of: dict[str, tuple[str, ...]] = {}
    for name, (stated_keys, stated) in spec.grids.items():
        keys_of[name] = stated_keys
        groups[name] = {values: [] for values in stated}
    for run in runs:
        recorded = run.point.get("variant")
        variant = str(recorded) if recorded is not None else run.method
        point_values = run.point.get("values") or {}
        keys = keys_of.setdefault(variant, tuple(point_values))
        groups.setdefault(variant, {}).setdefault(tuple(point_values.get(k) for k in keys), []).append(run)
    picks = []
    for variant, grid in groups.items():
        if not any(grid.values()):
            continue  # no run of this method yet: nothing to report
        seeds = max(len({r.config["run"]["seed"] for r in members}) for members in grid.values())
        candidates = []
        for values, members in grid.items():
            scores = [validation_final(run, spec.metric) for run in members]
            complete = bool(members) and len({r.config["run"]["seed"] for r in members}) == seeds and None not in scores
            finals = [s for s in scores if s is not None]
            candidates.append(Candidate(values=values, runs=tuple(members),
                                        score=fmean(finals) if complete else None,
                                        spread=t_interval(finals) if complete else None))
        chosen: Candidate | None = None
        best = 0.0
        for candidate in candidates:  # the first of equal scores wins
            if candidate.score is not None and (chosen is None or spec.better(candidate.score, best)):
                chosen, best = candidate, candidate.score
        first = next(c.runs[0] for c in candidates if c.runs)
        picks.append(Pick(variant=variant, method=first.info.label, keys=keys_of[variant],
                          candidates=tuple(candidates), chosen=chosen))
    return picks


def stated_grids(variants: Any) -> dict[str, tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]]:
    """variant -> (its tuned keys, its grid values in the sweep's order): the lists of each variant
    of a sweep file (their product, as the sweep expands them); () and one empty point without."""
    grids = {}
    for name, axes in (variants if isinstance(variants, dict) else {}).items():
        if isinstance(axes, dict):
            keys = tuple(str(k) for k, v in axes.items() if isinstance(v, list))
            grids[str(name)] = (keys, tuple(itertools.product(*(axes[k] for k in keys))))
    return grids


# --- names ---------------------------------------------------------------------------------


def symbol(key: str, method: str, lam_symbol: str = "λ") -> str:
    """How a tuned key is named in a label: λ (μ for FedProx), α (APFL's mixing weight, Per-FedAvg's
    step), η_g (SCAFFOLD's global step), lr_p (a personal step), else the key's name."""
    name = key.split(".")[-1]
    if key == "algorithm.lam":
        return lam_symbol
    if key == "algorithm.alpha" or (key == "algorithm.personal_lr" and method == "perfedavg"):
        return "α"
    if key == "algorithm.beta":
        return "η_g" if method == "scaffold" else "β"
    return {"algorithm.personal_lr": "lr_p", "algorithm.local_lr": "η", "algorithm.global_lr": "γ"}.get(key, name)


def value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_text(pick: Pick) -> str:
    """'0.1/0.5/2' for one key, '(0.1, 0.05)/(0.5, 0.05)' for several."""
    if len(pick.keys) == 1:
        return "/".join(value_text(c.values[0]) for c in pick.candidates)
    return "/".join("(" + ", ".join(map(value_text, c.values)) + ")" for c in pick.candidates)


def picked_label(pick: Pick) -> str:
    """'Ditto (λ=0.5, picked from 0.1/0.5/2)'; the run's own label ('FedCLUP λ=0.2') when nothing
    was tuned, and as the base when lambda is not among the tuned keys."""
    if pick.chosen is None:
        return pick.method
    run = pick.chosen.runs[0]
    if not pick.keys:
        return run.label
    base = pick.method if "algorithm.lam" in pick.keys else run.label
    setting = ", ".join(f"{symbol(k, run.method, run.info.lam_symbol)}={value_text(v)}"
                        for k, v in zip(pick.keys, pick.chosen.values, strict=True))
    return f"{base} ({setting}, picked from {grid_text(pick)})"


@dataclass(frozen=True)
class PickedRun(Run):
    """A picked run, named with its pick (the family table's and figures' method label)."""

    shown: str = ""

    @property
    def label(self) -> str:
        return self.shown


def picked_runs(picks: Sequence[Pick]) -> list[Run]:
    """The runs of each variant's pick (every seed), named with the pick; a variant without a
    comparable grid point is left out."""
    return [PickedRun(run.path, shown=picked_label(pick)) for pick in picks if pick.chosen is not None
            for run in pick.chosen.runs]


def tuned_runs(results_dir: Path, runs: Sequence[Run]) -> list[Run]:
    """`runs` as the family table and figures show them: for a tuned sweep's out dir only the
    picks (one warning line names a variant that has none yet), else unchanged."""
    spec = tune_of(results_dir)
    if spec is None:
        return list(runs)
    picks = select(runs, spec)
    missing = [p.variant for p in picks if p.chosen is None]
    if missing:
        print(f"pfl_dist: warning: no grid point of {', '.join(missing)} finished on every seed; "
              "left out of the tuned table", file=sys.stderr, flush=True)
    return picked_runs(picks)


# --- tuning.md / tuning.csv ----------------------------------------------------------------


def tuning_markdown(picks: Sequence[Pick], spec: TuneSpec) -> str:
    head = ["method", "tuned", "grid", f"mean final {spec.metric} ± 95% t per grid value ({spec.goal})", "seeds",
            "pick"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pick in picks:
        scores = " / ".join(c.text() for c in pick.candidates)
        seeds = max(len(c.runs) for c in pick.candidates)
        chosen = ("-" if not pick.keys else "none (no grid value finished on every seed)" if pick.chosen is None
                  else ", ".join(map(value_text, pick.chosen.values)))
        lines.append("| " + " | ".join([pick.method, ", ".join(pick.keys) or "(nothing: runs once)",
                                        grid_text(pick) if pick.keys else "-", scores, str(seeds), chosen]) + " |")
    note = (f"\nPicked per method on the clients' validation rows (data.val_fraction): the grid value with the "
            f"best mean final {spec.metric} over the seeds (± the 95% Student t half-width over them; the pick "
            "is by the mean); test (eval/) metrics are never read to pick. The family table reports the picks' "
            "test metrics from these same runs.\n")
    return "\n".join(lines) + "\n" + note


def write_tuning(out: Path, picks: Sequence[Pick], spec: TuneSpec) -> Path:
    """tuning.md and tuning.csv (a row per grid value of each method) in `out`; the .md's path."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["variant", "method", "keys", "values", "seeds", f"mean {spec.metric}", "ci95", "picked"])
    for pick in picks:
        for candidate in pick.candidates:
            writer.writerow([pick.variant, pick.method, " ".join(pick.keys),
                             " ".join(map(value_text, candidate.values)), len(candidate.runs),
                             "" if candidate.score is None else repr(candidate.score),
                             "" if candidate.spread is None or candidate.spread.half_width is None
                             else repr(candidate.spread.half_width),
                             str(candidate is pick.chosen).lower()])
    write_bytes_atomic(out / "tuning.csv", text.getvalue().encode())
    path = out / "tuning.md"
    write_bytes_atomic(path, tuning_markdown(picks, spec).encode())
    return path
