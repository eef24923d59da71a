"""The accuracy-communication trade-off: curves of a metric against cumulative training bytes,
their Pareto front, and "bytes to reach target X" per method; where the runs recorded their
training time (metrics.jsonl `time.train_s`, the rounds' wall clock), also "time to reach target X".

Bytes are the engine's cumulative training counters from metrics.jsonl, in two views:
- "fl" (the default axis): FL-equivalent bytes, uplink + downlink, what a client-server
  deployment would send; they do not depend on how the run was simulated (1 process or W);
- "wire": the modelled wire bytes of the ring collectives, which depend on the world size W (the
  number of processes: 2(W-1)/W x payload per rank; 0 on one process), so every label, table
  header and figure of them names W (`wire_name`), and comparing runs of different W says so in
  one warning line (`world_size_warning`).
`byte_series` is a run's x-axis series of either kind, `byte_axis` the axis and its label.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.stats import LEVEL, Estimate, paired_difference, t_interval

LOWER_IS_BETTER = {"ITR", "ATR", "IOR", "AOR", "loss_personal", "loss_global"}
FL, WIRE = "fl", "wire"
BYTE_KINDS = (FL, WIRE)
FL_LABEL = "cumulative FL-equivalent training bytes (uplink + downlink)"
FL_AXIS = (FL, FL_LABEL)  # the default axis


@dataclass(frozen=True)
class Curve:
    """One method/lambda in one facet, averaged over seeds at the rounds all seeds evaluated."""

    label: str
    facet: str
    rounds: list[int]
    num_bytes: list[float]
    values: list[float]
    communicates: bool
    seconds: list[float] | None = None  # cumulative training wall-clock seconds, when recorded
    kind: str = WIRE  # what num_bytes counts: "fl" or "wire" bytes
    totals: dict[str, float] = field(default_factory=dict)  # the final cumulative bytes of each kind
    world_sizes: tuple[int, ...] = ()  # the processes its runs ran on (the wire bytes depend on it)
    tag: str = ""  # the metric's tag, which names where it was measured ('eval/ITR'); '' = unknown
    method: str = ""  # the runs' algorithm.name ('fedavg'): which rows a table compares against
    finals: dict[int, float] = field(default_factory=dict)  # seed -> the metric at the last common round
    low: list[float] | None = None  # per round: the 95% t interval over seeds (None with one seed)
    high: list[float] | None = None
    per_seed: dict[int, list[float]] = field(default_factory=dict)  # seed -> the metric at each of `rounds`

    @property
    def final(self) -> Estimate | None:
        """The final value's mean over seeds and 95% t interval (pfl_dist/sweep/stats.py)."""
        return t_interval(list(self.finals.values())) if self.finals else None


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def personal_metric(runs: Sequence[Run]) -> str:
    """ITR (the paper's personal error) on synthetic data, personal accuracy otherwise."""
    return "ITR" if all("ITR" in r.summary["final"] for r in runs) else "acc_personal"


def global_metric(runs: Sequence[Run]) -> str:
    return "ATR" if all("ATR" in r.summary["final"] for r in runs) else "acc_global"


def world_sizes(runs: Iterable[Run]) -> tuple[int, ...]:
    """The distinct world sizes (summary.json `world_size`) the runs ran on, ascending."""
    return tuple(sorted({int(w) for w in (r.summary.get("world_size") for r in runs) if isinstance(w, int)}))


def wire_name(sizes: Sequence[int]) -> str:
    """'wire bytes (W=2)': wire bytes named with the world size they were modelled for."""
    if len(sizes) == 1:
        return f"wire bytes (W={sizes[0]})"
    return f"wire bytes (W={', '.join(map(str, sizes))}: differ by W)" if sizes else "wire bytes"


def world_size_warning(runs: Sequence[Run]) -> str | None:
    """One warning line when the runs ran on different numbers of processes, else None."""
    sizes = world_sizes(runs)
    if len(sizes) < 2:
        return None
    return (f"pfl_dist: warning: these runs ran on different numbers of processes (W = {', '.join(map(str, sizes))}): "
            "their wire bytes are not comparable (the FL bytes, the default axis, are)")


def byte_axis(runs: Sequence[Run], kind: str = FL) -> tuple[str, str]:
    """(kind, axis label). FL bytes by default: the same for any number of processes. Wire bytes
    name the world size; when no communicating run put anything on a wire (one process) they
    would collapse to 0, and the FL bytes are returned instead."""
    talking = [r for r in runs if r.communicates]
    if kind == FL or (talking and all(r.summary["comm"]["wire_bytes_model"] == 0 for r in talking)):
        return FL_AXIS
    return WIRE, f"cumulative training {wire_name(world_sizes(runs))} (modelled ring collectives)"


def record_bytes(record: dict[str, Any], kind: str) -> float:
    """A metrics.jsonl record's cumulative training bytes of `kind` ("fl" or "wire")."""
    comm = record["comm"]
    return float(comm["wire_bytes_model"] if kind == WIRE else comm["uplink_bytes"] + comm["downlink_bytes"])


def byte_series(run: Run, kind: str = FL) -> tuple[list[int], list[float]]:
    """A run's x-axis series: its evaluated rounds and the cumulative training bytes of `kind`
    ("fl": uplink + downlink; "wire": modelled wire bytes, which depend on its world size) at each."""
    return [r["round"] for r in run.records], [record_bytes(r, kind) for r in run.records]


SHORT_KEYS = {"algorithm.num_local_steps": "K", "algorithm.lam": "λ", "data.classes_per_client": "classes",
              "comm.codec": "codec", "comm.downlink_codec": "down"}


def setting_label(run: Run, label_keys: Sequence[str]) -> str:
    """The run's values of varied algorithm settings, e.g. 'K=25' or 'codec=topk:0.01'."""
    return ", ".join(f"{SHORT_KEYS.get(k, k.split('.')[-1])}={format_value(run.setting(k))}" for k in label_keys)


def run_label(run: Run, label_keys: Sequence[str] = ()) -> str:
    """The method label, plus varied algorithm settings that make a run a different curve
    (e.g. 'FedCLUP λ=0.5, K=25' in the local-steps ablation)."""
    return ", ".join([run.label, setting_label(run, label_keys)]) if label_keys else run.label


def build_curves(runs: Sequence[Run], *, metric: str, kind: str, facet_key: str | None = None,
                 label_keys: Sequence[str] = ()) -> list[Curve]:
    """Group runs by (facet value, label) and average their per-round records over seeds."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    facet_order: dict[str, Any] = {}
    for run in runs:
        facet = f"{facet_key.split('.')[-1]}={format_value(run.setting(facet_key))}" if facet_key else ""
        facet_order[facet] = run.setting(facet_key) if facet_key else 0
        groups[(facet, run_label(run, label_keys))].append(run)
    curves = []
    for (facet, label), members in groups.items():
        per_run = [{r["round"]: r for r in run.records if metric in r["metrics"]} for run in members]
        common = sorted(set.intersection(*(set(p) for p in per_run)))
        timed = all("time" in p[t] for p in per_run for t in common)
        by_kind = {k: [statistics.fmean(record_bytes(p[t], k) for p in per_run) for t in common] for k in BYTE_KINDS}
        bands = [t_interval([p[t]["metrics"][metric] for p in per_run]) for t in common]
        banded = len(members) > 1 and bool(common)
        curves.append(Curve(
            label=label, facet=facet, rounds=common, communicates=members[0].communicates, num_bytes=by_kind[kind],
            values=[statistics.fmean(p[t]["metrics"][metric] for p in per_run) for t in common],
            seconds=[statistics.fmean(p[t]["time"]["train_s"] for p in per_run) for t in common] if timed else None,
            kind=kind, totals={k: series[-1] for k, series in by_kind.items() if series},
            world_sizes=world_sizes(members), tag=members[0].tag(metric), method=members[0].method,
            finals={int(run.config["run"]["seed"]): p[common[-1]]["metrics"][metric]
                    for run, p in zip(members, per_run, strict=True)} if common else {},
            per_seed={int(run.config["run"]["seed"]): [p[t]["metrics"][metric] for t in common]
                      for run, p in zip(members, per_run, strict=True)},
            low=[b.low for b in bands] if banded else None, high=[b.high for b in bands] if banded else None))
    return sorted(curves, key=lambda c: facet_order[c.facet])  # numeric facet order; callers order labels


def better(a: float, b: float, *, metric: str) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def pareto_front(curves: Sequence[Curve], *, metric: str) -> list[tuple[float, float]]:
    """Points (bytes, value) no other point beats on both: fewer-or-equal bytes and a better metric.

    Sorted by bytes, this is the staircase of the best value reachable within a byte budget.
    """
    points = sorted(((b, v) for c in curves for b, v in zip(c.num_bytes, c.values, strict=True)),
                    key=lambda p: (p[0], p[1] if metric in LOWER_IS_BETTER else -p[1]))
    front: list[tuple[float, float]] = []
    for num_bytes, value in points:
        if not front or better(value, front[-1][1], metric=metric):
            front.append((num_bytes, value))
    return front


def bytes_to_reach(curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    """(bytes, round) of the first evaluation at or beyond target, None if never reached."""
    return _first_reaching(curve.num_bytes, curve, target, metric=metric)


def seconds_to_reach(curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    """(training seconds, round) of the first evaluation at or beyond target; None if never
    reached or the runs recorded no training time."""
    return None if curve.seconds is None else _first_reaching(curve.seconds, curve, target, metric=metric)


def _first_reaching(xs: Sequence[float], curve: Curve, target: float, *, metric: str) -> tuple[float, int] | None:
    for x, value, round_num in zip(xs, curve.values, curve.rounds, strict=True):
        if value == target or better(value, target, metric=metric):
            return x, round_num
    return None


def default_targets(curves: Sequence[Curve], *, metric: str) -> list[float]:
    """The worst final value (every curve gets there) and the median final value (half do)."""
    finals = [c.values[-1] for c in curves if c.values]
    if not finals:
        return []
    worst = max(finals) if metric in LOWER_IS_BETTER else min(finals)
    median = statistics.median(finals)
    return [worst] if abs(median - worst) <= 1e-12 * max(1.0, abs(worst)) else [worst, median]


# --- finals over seeds: mean ± 95% t interval, and paired comparisons with reference rows ----

# The rows every other row of a facet is compared with on the same seeds (a paired t interval of
# the per-seed differences, pfl_dist/sweep/stats.py): method name -> its mark's letter. A method
# is a reference in a facet only when it has exactly one curve there (one FedCLUP lambda, not a grid).
REFERENCES = {"fedavg": ("A", "FedAvg"), "local": ("L", "LocalTrain"), "fedclup": ("C", "FedCLUP")}
MINUS = "\u2212"  # the mark of a significantly worse row: 'A−'


@dataclass(frozen=True)
class Final:
    """A table cell over several seeds: the final value's mean ± its 95% t half-width, the
    references it was compared with (their letters) and the significant differences among them
    ('A+': better than FedAvg on the same seeds, 'L−': worse than LocalTrain)."""

    estimate: Estimate
    compared: tuple[tuple[str, str], ...] = ()  # (letter, name) of each reference row it was compared with
    marks: tuple[str, ...] = ()

    def text(self, spec: str = "") -> str:
        """'11.85 ± 3.4 A+' (mean to 4 significant digits, half-width to 2); `spec`: one format
        for both ('.3f': '0.745 ± 0.031')."""
        e = self.estimate
        mean, half = (spec or ".4g"), (spec or ".2g")
        value = f"{e.mean:{mean}}" if e.half_width is None else f"{e.mean:{mean}} ± {e.half_width:{half}}"
        return " ".join([value, *self.marks])


LAST_ROW = "Z"  # a facet of one method's curves over a varied setting (K) is compared with its last row


def references_in(curves: Sequence[Curve]) -> dict[str, tuple[str, Curve]]:
    """letter -> (name, curve): the facet's one curve of each reference method (none for a method
    with several); when the facet holds one method's curves only (a varied K), its last row
    (the largest K), which the local-steps figure's difference panels subtract too."""
    found: dict[str, tuple[str, Curve]] = {}
    for method, (letter, name) in REFERENCES.items():
        members = [c for c in curves if c.method == method]
        if len(members) == 1:
            found[letter] = (name, members[0])
    if not found and len(curves) > 1 and len({c.method for c in curves}) == 1:
        found[LAST_ROW] = (curves[-1].label, curves[-1])
    return found


def final_cell(curve: Curve, references: dict[str, tuple[str, Curve]], *, metric: str) -> float | Final | None:
    """The final value of one seed as a number (as tables always showed it); over several seeds a
    Final: mean ± 95% t interval, marked against each reference that is not the curve itself."""
    estimate = curve.final
    if estimate is None or estimate.n < 2:
        return curve.values[-1] if curve.values else None
    compared, marks = [], []
    for letter, (name, reference) in references.items():
        if reference.label == curve.label:
            continue
        diff = paired_difference(curve.finals, reference.finals)
        if diff is None:
            continue
        compared.append((letter, name))
        if diff.excludes_zero():
            marks.append(letter + ("+" if better(diff.mean, 0.0, metric=metric) else MINUS))
    return Final(estimate, tuple(compared), tuple(marks))


def paired_series(curve: Curve, reference: Curve) -> tuple[list[int], list[Estimate]]:
    """The rounds both curves evaluated and, at each, the paired t interval of curve - reference
    over the seeds both ran (pfl_dist/sweep/stats.py); empty when fewer than 2 seeds are shared."""
    index = {t: i for i, t in enumerate(reference.rounds)}
    rounds, diffs = [], []
    for i, t in enumerate(curve.rounds):
        if t in index:
            diff = paired_difference({s: v[i] for s, v in curve.per_seed.items()},
                                     {s: v[index[t]] for s, v in reference.per_seed.items()})
            if diff is not None:
                rounds.append(t)
                diffs.append(diff)
    return rounds, diffs


def interval_note(rows: Sequence[dict[str, Any]]) -> str:
    """The lines under a table with Final cells that say how they were computed and what the
    marks mean; '' for a table of single-seed values."""
    finals = [v for row in rows for v in row.values() if isinstance(v, Final)]
    if not finals:
        return ""
    sizes = sorted({f.estimate.n for f in finals})
    n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    note = (f"Finals: mean ± half-width of the {LEVEL:.0%} Student t interval over n = {n} seeds, "
            "t_{0.975, n-1} · s / √n (s: the seeds' sample standard deviation).")
    order = [letter for letter, _ in REFERENCES.values()] + [LAST_ROW]
    pairs = sorted(dict.fromkeys(pair for f in finals for pair in f.compared),
                   key=lambda pair: order.index(pair[0]) if pair[0] in order else len(order))  # others (D) last
    if pairs:
        names = ", ".join(f"{letter} = {name}" for letter, name in pairs)
        note += (f" Marks ({names}): the paired {LEVEL:.0%} t interval of the per-seed differences to that row, on the "
                 f"same seeds, excludes 0; + better, {MINUS} worse; no mark: the interval includes 0.")
    return note + " Bytes to a target: of the mean curve.\n"


def byte_names(curves: Sequence[Curve]) -> dict[str, str]:
    """How the table names each kind of bytes: 'FL bytes', 'wire bytes (W=2)'."""
    return {FL: "FL bytes", WIRE: wire_name(tuple(sorted({w for c in curves for w in c.world_sizes})))}


def _totals(curve: Curve) -> dict[str, float]:
    return curve.totals or ({curve.kind: curve.num_bytes[-1]} if curve.num_bytes else {})


def tradeoff_rows(curves: Sequence[Curve], *, metric: str, targets: Sequence[float] | None = None,
                  extra: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per curve: final value, total bytes (both views: FL bytes and the wire bytes with
    their world size W, and a W column when the rows' W differ), and the bytes of the curves' kind
    and rounds to reach each target.

    Targets are per facet: given ones apply everywhere, default ones come from that facet's curves.
    `extra` adds final values of other metrics keyed by (facet, label).
    """
    names = byte_names(curves)
    mixed = len({c.world_sizes for c in curves if c.world_sizes}) > 1
    rows = []
    for facet in dict.fromkeys(c.facet for c in curves):  # in the curves' (numeric) order
        members = [c for c in curves if c.facet == facet]
        facet_targets = list(targets) if targets else default_targets(members, metric=metric)
        references = references_in(members)
        for curve in members:
            named = curve.tag or metric  # 'final eval/ITR': where it was measured
            row: dict[str, Any] = {"facet": facet, "method": curve.label,
                                   f"final {named}": final_cell(curve, references, metric=metric)}
            row.update((extra or {}).get((facet, curve.label), {}))
            if mixed:
                row["W"] = ", ".join(map(str, curve.world_sizes))
            totals = _totals(curve)
            row.update({f"total {names[kind]}": totals[kind] for kind in (curve.kind, *BYTE_KINDS) if kind in totals})
            if curve.seconds is not None:
                row["train time"] = f"{curve.seconds[-1]:.1f} s" if curve.seconds else None
            row["rounds"] = curve.rounds[-1] if curve.rounds else None
            for i, target in enumerate(facet_targets):
                reached = bytes_to_reach(curve, target, metric=metric)
                text = f"{format_bytes(reached[0])} (round {reached[1]})" if reached else "not reached"
                goal = f"{named} {'<=' if metric in LOWER_IS_BETTER else '>='} {target:.4g}"
                timed = seconds_to_reach(curve, target, metric=metric) if curve.seconds is not None else None
                time_text = f"{timed[0]:.1f} s (round {timed[1]})" if timed else "not reached"
                if targets:  # the same targets everywhere: name them in the header
                    row[f"{names[curve.kind]} to {goal}"] = text
                    if curve.seconds is not None:
                        row[f"time to {goal}"] = time_text
                else:  # per-facet targets: a value column and a bytes column per target
                    tag = "AB"[i]
                    row[f"target {tag} ({('worst', 'median')[i]} final)"] = goal
                    row[f"{names[curve.kind]} to {tag}"] = text
                    if curve.seconds is not None:
                        row[f"time to {tag}"] = time_text
            rows.append(row)
    return rows


def _text(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, Final):
        return value.text()
    if key.startswith("total ") and "bytes" in key:
        return format_bytes(float(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table; the facet column is dropped when there is only one facet."""
    if not rows:
        return "(no finished runs)\n"
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "facet" or any(r.get("facet") for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_text(r.get(k), k) for k in keys) + " |" for r in rows]
    note = interval_note(rows)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def write_table(rows: Sequence[dict[str, Any]], *, stem: Path) -> tuple[Path, Path]:
    """stem.md (for humans and docs) and stem.csv (for tools)."""
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(markdown_table(rows))
    flat = [csv_row(r) for r in rows]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)
    return md, csv_path


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row for tools: a Final cell becomes three columns, the mean under its own name, 'KEY
    ci95' its 95% t half-width and 'KEY marks' its significant differences ('A+ L−')."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Final):
            flat.update({key: value.estimate.mean, f"{key} ci95": value.estimate.half_width,
                         f"{key} marks": " ".join(value.marks)})
        else:
            flat[key] = value
    return flat
