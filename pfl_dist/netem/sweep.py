"""Time to accuracy over link rates: `python -m pfl_dist.netem.sweep --out DIR --nodes 4
--rates 1mbit 10mbit 100mbit --methods fedavg local fedclup:0.2 fedclup:0.5 ditto:0.5 scaffold
[--seeds 0 1 2] [--target 0.9] [--global-target 0.2] [--budget 20] [netem options] --config X.yaml
[section.key=value ...]`.

--methods takes any built-in method (pfl_dist/methods.py) or plug-in algorithm
`package.module:Class` (its folder on PYTHONPATH) as NAME, or NAME:LAMBDA for the methods whose
updates use algorithm.lam (fedclup, fedprox, ditto, pfedme, and a plug-in declaring uses_lam;
NAME alone keeps the config's lambda). A method that does not use lambda runs with
algorithm.lam=0.0: its numbers do not depend on it, and the config's lam may be `auto`, which only
FedCLUP defines.

Runs every (seed, rate, method) with `python -m pfl_dist.netem`, one after the other (each is a
whole emulated cluster), seed by seed (so an interrupted sweep leaves whole seeds), into
DIR/<rate>/<method>__seed=<SEED> (':' written as '_'; run.seed=SEED, which draws the data
partition, the initial model and the client sampling); a point with a summary.json is skipped, so
an interrupted sweep resumes. The default seeds are 0 1 2. Then writes DIR/time_to_accuracy.md/.csv
(per rate and method: final accuracies, training time, per-round compute/comm/wait, bytes, and
the time to reach each target) and DIR/time_to_accuracy.png (accuracy vs training wall-clock
seconds, one panel per rate), and prints, per rate, the method that reaches each target first
and, with --budget, the accuracies each method holds after that many seconds of training (its
last evaluation within the budget).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pfl_dist import plugins
from pfl_dist.config import MAX_SEED, did_you_mean, load_config
from pfl_dist.errors import ConfigError, OneLineParser, PflError
from pfl_dist.methods import METHOD_NAMES, METHODS, method_info
from pfl_dist.netem import cli as netem_cli
from pfl_dist.netem.shaping import format_rate, parse_rate
from pfl_dist.sweep.plot import METRIC_LABELS, styles
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.stats import t_interval
from pfl_dist.sweep.style import (
    Style,
    axes_look,
    coincidence_note,
    coincident,
    interval_band,
    math_label,
    new_figure,
    save_figure,
    seeds_note,
)
from pfl_dist.sweep.tradeoff import (
    Curve,
    Final,
    build_curves,
    final_cell,
    markdown_table,
    references_in,
    seconds_to_reach,
    wire_name,
    write_table,
)

METRICS = ("acc_personal", "acc_global")


def split_method(method: str) -> tuple[str, str | None]:
    """'ditto:0.5' -> ('ditto', '0.5'); 'fedavg' -> ('fedavg', None); a plug-in 'pkg.mod:Class'
    -> ('pkg.mod:Class', None) and 'pkg.mod:Class:0.5' -> ('pkg.mod:Class', '0.5'). A built-in's
    name before the first ':' wins ('fedclup:auto' is FedCLUP with lam auto); ConfigError naming
    the method when it is neither."""
    name, colon, lam = method.partition(":")
    if name in METHODS:
        return name, lam if colon else None
    if plugins.is_plugin_name(method):
        return method, None
    head, colon, lam = method.rpartition(":")
    if colon and plugins.is_plugin_name(head):
        return head, lam
    raise ConfigError(f"--methods: unknown method '{name}'{did_you_mean(name, METHOD_NAMES)}; "
                      f"valid: {', '.join(METHOD_NAMES)} or a plug-in 'package.module:Class' (NAME, or NAME:LAMBDA "
                      f"for {', '.join(n for n in METHOD_NAMES if METHODS[n].uses_lam)} and a plug-in whose "
                      "updates use it)")


def method_overrides(method: str) -> list[str]:
    """'fedavg' | 'ditto' | 'fedclup:0.5' | 'pkg.mod:Class[:LAMBDA]' -> config overrides;
    ConfigError naming the method when it is unknown or takes no lambda."""
    name, lam = split_method(method)
    try:
        info = method_info(name)  # a plug-in's is read from its source (no import)
    except ConfigError as err:
        raise ConfigError(f"--methods: '{method}': {err}") from None
    if not info.uses_lam:
        if lam is not None:
            raise ConfigError(f"--methods: '{method}': {name} does not use algorithm.lam; write '{name}'")
        return [f"algorithm.name={name}", "algorithm.lam=0.0"]
    if lam == "":
        raise ConfigError(f"--methods: '{method}': the lambda after ':' is missing (e.g. {name}:0.5)")
    return [f"algorithm.name={name}", *([f"algorithm.lam={lam}"] if lam is not None else [])]


def check_methods(methods: Sequence[str], *, config: str | None = None, overrides: Sequence[str] = (),
                  runs: bool = True) -> None:
    """Every --methods entry parses; with `runs`, each point's whole config (`config` and
    `overrides` as the netem options give them, then the method's) validates, so a bad lambda or
    a method the task cannot run stops the sweep before its first point."""
    repeated = [m for m in dict.fromkeys(methods) if methods.count(m) > 1]
    if repeated:
        raise ConfigError(f"--methods: '{repeated[0]}' is given twice")
    for method in methods:
        point = method_overrides(method)
        if not runs:
            continue
        try:
            load_config(config, [*overrides, *point])
        except ConfigError as err:
            raise ConfigError(f"--methods: '{method}': {err}") from None


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = OneLineParser(prog="python -m pfl_dist.netem.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="sweep folder")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rates", nargs="+", required=True, help="link rates, e.g. 1mbit 10mbit 100mbit")
    parser.add_argument("--methods", nargs="+", required=True,
                        help=f"NAME or NAME:LAMBDA; NAME one of {', '.join(METHOD_NAMES)}, or a plug-in "
                             "package.module:Class (its folder on PYTHONPATH)")
    parser.add_argument("--seeds", nargs="+", type=seed_value, default=list(DEFAULT_SEEDS), metavar="SEED",
                        help="run.seed of each repetition, e.g. 0 1 2 (default: 0 1 2); the report gives the mean "
                             "± 95%% t interval over them")
    parser.add_argument("--target", type=float, help="personal accuracy target (default: per rate)")
    parser.add_argument("--global-target", type=float, help="global accuracy target")
    parser.add_argument("--budget", type=float, help="training-time budget in seconds: accuracies held at it")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and figure")
    return parser.parse_known_args(argv)


DEFAULT_SEEDS = (0, 1, 2)


def seed_value(text: str) -> int:
    """An argparse type: a run.seed in [0, 2**63 - 1]."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got '{text}'") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1], got {seed}")
    return seed


def check_seeds(seeds: Sequence[int], overrides: Sequence[str]) -> None:
    """--seeds has no repeated value, and run.seed is not also given as an override."""
    repeated = [s for s in dict.fromkeys(seeds) if seeds.count(s) > 1]
    if repeated:
        raise ConfigError(f"--seeds: {repeated[0]} is given twice")
    if any(o.split("=", 1)[0].strip() == "run.seed" for o in overrides):
        raise ConfigError("run.seed is set by the sweep: give the seeds with --seeds")


def run_dir_name(method: str, seed: int) -> str:
    return f"{method.replace(':', '_')}__seed={seed}"


def run_dirs(args: argparse.Namespace) -> list[str]:
    return [run_dir_name(m, s) for m in args.methods for s in args.seeds]


def point_command(args: argparse.Namespace, netem_args: list[str], *, seed: int, rate: str, method: str) -> list[str]:
    """The `python -m pfl_dist.netem` command of one point (its run dir: DIR/<rate>/<method>__seed=<seed>)."""
    run_dir = args.out / rate / run_dir_name(method, seed)
    return [sys.executable, "-m", "pfl_dist.netem", "--nodes", str(args.nodes), "--rate", rate,
            *netem_args, *method_overrides(method), f"run.seed={seed}", f"run.out_dir={run_dir.parent}",
            f"run.name={run_dir.name}"]


def run_points(args: argparse.Namespace, netem_args: list[str]) -> None:
    for seed in args.seeds:
        for rate in args.rates:
            for method in args.methods:
                run_dir = args.out / rate / run_dir_name(method, seed)
                if (run_dir / "summary.json").exists():
                    continue
                print(f"sweep: seed {seed} {rate} {method}", flush=True)
                command = point_command(args, netem_args, seed=seed, rate=rate, method=method)
                done = subprocess.run(command, stdout=subprocess.DEVNULL)
                if done.returncode != 0:
                    raise SystemExit(f"pfl_dist: error: sweep point seed {seed} {rate} {method} failed "
                                     f"({done.returncode}); logs in {run_dir / 'netem'}")


def facet_of(rate: str) -> str:
    return f"rate={format_rate(parse_rate(rate))}"


def rate_runs(args: argparse.Namespace) -> dict[str, list[Run]]:
    """facet -> the finished runs of that rate (every method and seed that has a summary.json)."""
    return {facet_of(rate): find_runs(args.out / rate, run_dirs(args)) for rate in args.rates}


def rate_curves(args: argparse.Namespace, metric: str) -> list[Curve]:
    """Per rate and method: the mean curve over the seeds that finished (with its t band)."""
    return [replace(c, facet=facet) for facet, runs in rate_runs(args).items()
            for c in build_curves(runs, metric=metric, kind="wire")]


def seed_curves(args: argparse.Namespace, metric: str) -> dict[tuple[str, str], dict[int, Curve]]:
    """(facet, method label) -> seed -> that seed's own curve (its own evaluations and times)."""
    found: dict[tuple[str, str], dict[int, Curve]] = {}
    for facet, runs in rate_runs(args).items():
        for run in runs:
            (curve,) = build_curves([run], metric=metric, kind="wire")
            found.setdefault((facet, curve.label), {})[int(run.config["run"]["seed"])] = curve
    return found


def over_seeds(values: Sequence[float]) -> Final | float | str:
    """A cell of a quantity measured once per seed: mean ± 95% t half-width (a Final, which the
    tables print as '0.975 ± 0.012'), or, when every seed gave the same value, that value and
    'on every seed' instead of a zero-width interval; one seed's value as it is."""
    if len(values) == 1:
        return values[0]
    if all(v == values[0] for v in values):
        return f"{values[0]:.4g} (on every seed)"
    return Final(t_interval(list(values)))


def time_to_target(per_seed: dict[int, Curve], target: float, metric: str) -> str:
    """The training time to a target over seeds: 'mean ± half-width s (round R)' when every seed
    reached it (the rounds listed when they differ), else which seeds did and when."""
    reached = {seed: seconds_to_reach(curve, target, metric=metric) for seed, curve in sorted(per_seed.items())}
    hits = {seed: r for seed, r in reached.items() if r is not None}
    if not hits:
        return "not reached"
    rounds = sorted({r for _, r in hits.values()})
    if len(hits) == len(reached):
        where = f"round {rounds[0]}" if len(rounds) == 1 else "rounds " + ", ".join(str(hits[s][1]) for s in hits)
        times = [t for t, _ in hits.values()]
        if len(set(times)) == 1 and len(times) > 1:
            return f"{times[0]:.1f} s on every seed ({where})"
        return f"{Final(t_interval(times)).text('.1f')} s ({where})"
    missed = ", ".join(str(s) for s in reached if s not in hits)
    return ("; ".join(f"seed {s}: {t:.1f} s (round {r})" for s, (t, r) in hits.items())
            + f"; seed {missed}: not reached")


def seed_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (rate, method) over the seeds that finished: the final accuracies (mean ± 95% t
    interval; the personal one marked against FedAvg and LocalTrain on the same seeds), the
    compute / comm / wait seconds per round and the training time (mean ± t interval of the
    per-seed values), the wire bytes, and the time each seed's own curve took to reach the targets
    and the accuracies it held after --budget seconds."""
    mean_curves = {metric: rate_curves(args, metric) for metric in METRICS}
    per_seed = {metric: seed_curves(args, metric) for metric in METRICS}
    runs = {(facet, run.label, int(run.config["run"]["seed"])): run
            for facet, members in rate_runs(args).items() for run in members}
    rows = []
    for facet in dict.fromkeys(c.facet for c in mean_curves["acc_personal"]):
        by_metric = {metric: [c for c in mean_curves[metric] if c.facet == facet] for metric in METRICS}
        references = {metric: references_in(by_metric[metric]) for metric in METRICS}
        for curve in by_metric["acc_personal"]:
            key = (facet, curve.label)
            seeds = sorted(per_seed["acc_personal"][key])
            timing = [runs[(facet, curve.label, seed)].summary["time"] for seed in seeds]
            row: dict[str, Any] = {"facet": facet, "method": curve.label, "seeds": len(seeds)}
            for name, field in (("compute", "compute_s_per_round"), ("comm", "comm_s_per_round"),
                                ("wait", "wait_s_per_round")):
                row[f"{name} s/round"] = over_seeds([t[field] for t in timing])
            for metric in METRICS:
                mean = next(c for c in by_metric[metric] if c.label == curve.label)
                cell = final_cell(mean, references[metric], metric=metric)
                same = over_seeds(list(mean.finals.values()))  # a string when every seed ended alike
                row[f"final {metric}"] = same if isinstance(same, str) and not getattr(cell, "marks", ()) else cell
            row["rounds"] = curve.rounds[-1] if curve.rounds else None
            row["train time s"] = over_seeds([c.seconds[-1] for c in per_seed["acc_personal"][key].values()
                                              if c.seconds])
            row[f"total {wire_name(curve.world_sizes)}"] = curve.totals.get("wire")  # the mean over seeds
            for metric, target in (("acc_personal", args.target), ("acc_global", args.global_target)):
                if target is not None:
                    row[f"time to {metric} >= {target:g}"] = time_to_target(per_seed[metric][key], target, metric)
            if args.budget is not None:
                for metric in METRICS:
                    held = [value_at(c, args.budget) for c in per_seed[metric][key].values()]
                    row[f"{metric} at {args.budget:g} s"] = (over_seeds([v for v in held if v is not None])
                                                             if all(v is not None for v in held) else None)
            rows.append(row)
    return rows


def fastest(curves: Sequence[Curve], target: float, metric: str) -> dict[str, tuple[str, float] | None]:
    """Per rate: the method that reaches the target in the least training time."""
    best: dict[str, tuple[str, float] | None] = {}
    for curve in curves:
        reached = seconds_to_reach(curve, target, metric=metric)
        current = best.get(curve.facet)
        if reached is not None and (current is None or reached[0] < current[1]):
            best[curve.facet] = (curve.label, reached[0])
        else:
            best.setdefault(curve.facet, None)
    return best


def value_at(curve: Curve, seconds: float) -> float | None:
    """The metric at the last evaluation within `seconds` of training (round 0 counts as 0 s)."""
    assert curve.seconds is not None
    held = [v for s, v in zip(curve.seconds, curve.values, strict=True) if s <= seconds]
    return held[-1] if held else None


def plot(curves_by_metric: dict[str, list[Curve]], path: Path, *, palette: dict[str, Style], num_nodes: int) -> Path:
    """A row per metric, a column per rate; x = training wall-clock seconds (the mean over seeds at
    each round), y = the mean accuracy over seeds with its 95% t band shaded. The shared look of
    every figure (pfl_dist/sweep/style.py): `palette` gives each method its colour and marker, one
    legend below the panels, 200 dpi, notes on curves that are exactly the same points."""
    facets = list(dict.fromkeys(c.facet for c in curves_by_metric[METRICS[0]]))
    fig, axes = new_figure(len(METRICS), len(facets), width=4.4, height=3.4)
    for row, metric in enumerate(METRICS):
        for col, facet in enumerate(facets):
            ax = axes[row][col]
            curves = [c for c in curves_by_metric[metric] if c.facet == facet and c.seconds is not None]
            curves.sort(key=lambda c: list(palette).index(c.label))  # legend order
            for curve in curves:
                assert curve.seconds is not None
                interval_band(ax, curve.seconds, curve.low, curve.high, palette[curve.label].color, crowd=len(curves))
                ax.plot(curve.seconds, curve.values, ms=4, label=math_label(curve.label),
                        **palette[curve.label].line(len(curve.values)))
            ax.set_title(f"link {facet.split('=')[1]}", fontsize=10)
            ax.set_xlabel("training wall-clock time [s]")
            ax.set_ylabel(METRIC_LABELS[metric])
            axes_look(ax)
            coincidence_note(ax, coincident([(c.label, c.seconds or [], c.values) for c in curves]))
    counts = [len(c.finals) for c in curves_by_metric[METRICS[0]]]
    fig.suptitle(f"accuracy vs training time on emulated links ({num_nodes} nodes, tc){seeds_note(counts)}",
                 fontsize=11)
    return save_figure(fig, path)


def _mean(cell: Any) -> float:
    return cell.estimate.mean if isinstance(cell, Final) else float(str(cell).split()[0])  # '0.975 (on every seed)'


TRADEOFF_NOTE = " Bytes to a target: of the mean curve."  # the shared note's last line; here there are none
TIME_NOTE = " Times to a target: each seed's own curve."


def report(args: argparse.Namespace) -> None:
    curves = {metric: rate_curves(args, metric) for metric in METRICS}
    rows = seed_rows(args)
    md, csv_path = write_table(rows, stem=args.out / "time_to_accuracy")
    text = markdown_table(rows).replace(TRADEOFF_NOTE, TIME_NOTE)
    md.write_text(text)
    runs = [run for members in rate_runs(args).values() for run in members]
    figure = plot(curves, args.out / "time_to_accuracy.png", palette=styles(runs), num_nodes=args.nodes)
    print(text, end="")
    seeds = sorted({int(run.config["run"]["seed"]) for run in runs})
    print(f"seeds: {', '.join(map(str, seeds))}; times to a target are each seed's own curve; "
          "'first to' below compares the mean over seeds of the methods that reached it on every seed")
    for metric, target in (("acc_personal", args.target), ("acc_global", args.global_target)):
        if target is None:
            continue
        for facet in dict.fromkeys(row["facet"] for row in rows):
            texts = {row["method"]: row[f"time to {metric} >= {target:g}"] for row in rows if row["facet"] == facet}
            every = {m: float(t.split()[0]) for m, t in texts.items() if t[0].isdigit()}
            best = min(every, key=every.__getitem__) if every else None
            print(f"{facet}: first to {metric} >= {target:g}: " + (f"{best} ({texts[best]})" if best else "no method"))
    if args.budget is not None:
        for facet in dict.fromkeys(row["facet"] for row in rows):
            members = [row for row in rows if row["facet"] == facet]
            for metric in METRICS:
                key = f"{metric} at {args.budget:g} s"
                held = [row for row in members if row[key] is not None]
                if not held:
                    print(f"{facet}: no {metric} on every seed after {args.budget:g} s of training")
                    continue
                top = max(_mean(row[key]) for row in held)
                leaders = ", ".join(row["method"] for row in held if _mean(row[key]) == top)
                print(f"{facet}: best mean {metric} after {args.budget:g} s of training: {top:.4g} ({leaders})")
    print(f"table: {md} and {csv_path}\nfigure: {figure}")


def main(argv: Sequence[str] | None = None) -> int:
    args, netem_args = parse_args(argv)
    netem = netem_cli.parse_args(netem_args)  # the options every point passes on (one line, exit 2 if bad)
    try:
        netem_cli.check_node_count(args.nodes)
        check_seeds(args.seeds, netem.overrides)
        check_methods(args.methods, config=netem.config, overrides=netem.overrides, runs=not args.report_only)
    except PflError as err:
        print(f"pfl_dist: error: {err}", file=sys.stderr)
        return err.exit_code
    if not args.report_only:
        run_points(args, netem_args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
