"""Time to accuracy over link rates: `python -m pfl_dist.netem.sweep --out DIR --nodes 4
--rates 1mbit 10mbit 100mbit --methods fedavg local fedclup:0.2 fedclup:0.5 ditto:0.5 scaffold
[--target 0.9] [--global-target 0.2] [--budget 20] [netem options] --config X.yaml [section.key=value ...]`.

--methods takes any built-in method (pfl_dist/methods.py) or plug-in algorithm
`package.module:Class` (its folder on PYTHONPATH) as NAME, or NAME:LAMBDA for the methods whose
updates use algorithm.lam (fedclup, fedprox, ditto, pfedme, and a plug-in declaring uses_lam;
NAME alone keeps the config's lambda). A method that does not use lambda runs with
algorithm.lam=0.0: its numbers do not depend on it, and the config's lam may be `auto`, which only
FedCLUP defines.

Runs every (rate, method) with `python -m pfl_dist.netem`, one after the other (each is a whole
emulated cluster), into DIR/<rate>/<method> (':' written as '_'); a point with a summary.json is
skipped, so an interrupted sweep resumes. Then writes DIR/time_to_accuracy.md/.csv (per rate and method: final
accuracies, training time, per-round compute/comm/wait, bytes, and the time to reach each target)
and DIR/time_to_accuracy.png (accuracy vs training wall-clock seconds, one panel per rate), and
prints, per rate, the method that reaches each target first and, with --budget, the accuracies
each method holds after that many seconds of training (its last evaluation within the budget).
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
from pfl_dist.config import did_you_mean, load_config
from pfl_dist.errors import ConfigError, OneLineParser, PflError
from pfl_dist.methods import METHOD_NAMES, METHODS, method_info
from pfl_dist.netem import cli as netem_cli
from pfl_dist.netem.shaping import format_rate, parse_rate
from pfl_dist.sweep.plot import METRIC_LABELS, styles
from pfl_dist.sweep.results import find_runs
from pfl_dist.sweep.style import Style, axes_look, coincidence_note, coincident, math_label, new_figure, save_figure
from pfl_dist.sweep.tradeoff import Curve, build_curves, markdown_table, seconds_to_reach, tradeoff_rows, write_table

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
    parser.add_argument("--target", type=float, help="personal accuracy target (default: per rate)")
    parser.add_argument("--global-target", type=float, help="global accuracy target")
    parser.add_argument("--budget", type=float, help="training-time budget in seconds: accuracies held at it")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and figure")
    return parser.parse_known_args(argv)


def run_dir_name(method: str) -> str:
    return method.replace(":", "_")


def run_dirs(args: argparse.Namespace) -> list[str]:
    return [run_dir_name(m) for m in args.methods]


def run_points(args: argparse.Namespace, netem_args: list[str]) -> None:
    for rate in args.rates:
        for method in args.methods:
            run_dir = args.out / rate / run_dir_name(method)
            if (run_dir / "summary.json").exists():
                continue
            print(f"sweep: {rate} {method}", flush=True)
            command = [sys.executable, "-m", "pfl_dist.netem", "--nodes", str(args.nodes), "--rate", rate,
                       *netem_args, *method_overrides(method), f"run.out_dir={run_dir.parent}",
                       f"run.name={run_dir.name}"]
            done = subprocess.run(command, stdout=subprocess.DEVNULL)
            if done.returncode != 0:
                raise SystemExit(f"pfl_dist: error: sweep point {rate} {method} failed ({done.returncode}); "
                                 f"logs in {run_dir / 'netem'}")


def rate_curves(args: argparse.Namespace, metric: str) -> list[Curve]:
    curves = []
    for rate in args.rates:
        runs = find_runs(args.out / rate, run_dirs(args))
        facet = f"rate={format_rate(parse_rate(rate))}"
        curves += [replace(c, facet=facet) for c in build_curves(runs, metric=metric, kind="wire")]
    return curves


def time_columns(args: argparse.Namespace) -> dict[tuple[str, str], dict[str, Any]]:
    extra: dict[tuple[str, str], dict[str, Any]] = {}
    for rate in args.rates:
        facet = f"rate={format_rate(parse_rate(rate))}"
        for run in find_runs(args.out / rate, run_dirs(args)):
            timing = run.summary["time"]
            extra[(facet, run.label)] = {"final acc_global": run.summary["final"]["acc_global"],
                                         "compute s/round": timing["compute_s_per_round"],
                                         "comm s/round": timing["comm_s_per_round"],
                                         "wait s/round": timing["wait_s_per_round"]}
    return extra


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
    """A row per metric, a column per rate; x = training wall-clock seconds. The shared look of every
    figure (pfl_dist/sweep/style.py): `palette` gives each method its colour and marker, one legend
    below the panels, 200 dpi, notes on curves that are exactly the same points."""
    facets = list(dict.fromkeys(c.facet for c in curves_by_metric[METRICS[0]]))
    fig, axes = new_figure(len(METRICS), len(facets), width=4.4, height=3.4)
    for row, metric in enumerate(METRICS):
        for col, facet in enumerate(facets):
            ax = axes[row][col]
            curves = [c for c in curves_by_metric[metric] if c.facet == facet and c.seconds is not None]
            curves.sort(key=lambda c: list(palette).index(c.label))  # legend order
            for curve in curves:
                ax.plot(curve.seconds, curve.values, ms=4, label=math_label(curve.label),
                        **palette[curve.label].line(len(curve.values)))
            ax.set_title(f"link {facet.split('=')[1]}", fontsize=10)
            ax.set_xlabel("training wall-clock time [s]")
            ax.set_ylabel(METRIC_LABELS[metric])
            axes_look(ax)
            coincidence_note(ax, coincident([(c.label, c.seconds or [], c.values) for c in curves]))
    fig.suptitle(f"accuracy vs training time on emulated links ({num_nodes} nodes, tc)", fontsize=11)
    return save_figure(fig, path)


def report(args: argparse.Namespace) -> None:
    curves = {metric: rate_curves(args, metric) for metric in METRICS}
    targets = [args.target] if args.target is not None else None
    rows = tradeoff_rows(curves["acc_personal"], metric="acc_personal", targets=targets, extra=time_columns(args))
    if args.global_target is not None:
        by_key = {(c.facet, c.label): c for c in curves["acc_global"]}
        for row in rows:
            reached = seconds_to_reach(by_key[(row["facet"], row["method"])], args.global_target, metric="acc_global")
            row[f"time to acc_global >= {args.global_target:g}"] = (
                f"{reached[0]:.1f} s (round {reached[1]})" if reached else "not reached")
    if args.budget is not None:
        for metric in METRICS:
            by_key = {(c.facet, c.label): c for c in curves[metric]}
            for row in rows:
                row[f"{metric} at {args.budget:g} s"] = value_at(by_key[(row["facet"], row["method"])], args.budget)
    md, csv_path = write_table(rows, stem=args.out / "time_to_accuracy")
    runs = [run for rate in args.rates for run in find_runs(args.out / rate, run_dirs(args))]
    figure = plot(curves, args.out / "time_to_accuracy.png", palette=styles(runs), num_nodes=args.nodes)
    print(markdown_table(rows), end="")
    for metric, target in (("acc_personal", args.target), ("acc_global", args.global_target)):
        if target is None:
            continue
        for facet, best in fastest(curves[metric], target, metric).items():
            text = f"{best[0]} ({best[1]:.1f} s)" if best else "no method"
            print(f"{facet}: first to {metric} >= {target:g}: {text}")
    if args.budget is not None:
        for facet in dict.fromkeys(row["facet"] for row in rows):
            members = [row for row in rows if row["facet"] == facet]
            for metric in METRICS:
                key = f"{metric} at {args.budget:g} s"
                top = max(row[key] for row in members)
                leaders = ", ".join(row["method"] for row in members if row[key] == top)
                print(f"{facet}: best {metric} after {args.budget:g} s of training: {top:.4g} ({leaders})")
    print(f"table: {md} and {csv_path}\nfigure: {figure}")


def main(argv: Sequence[str] | None = None) -> int:
    args, netem_args = parse_args(argv)
    netem = netem_cli.parse_args(netem_args)  # the options every point passes on (one line, exit 2 if bad)
    try:
        netem_cli.check_node_count(args.nodes)
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
