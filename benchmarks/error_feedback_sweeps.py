"""The codec sweep's FedCLUP runs before and after a change, over seeds: old -> new per codec.

    python benchmarks/error_feedback_sweeps.py OLD_DIR NEW_DIR [--codecs topk:0.01 randk:0.1 powersgd:2]

OLD_DIR and NEW_DIR are out dirs of configs/sweeps/codecs.yaml run at two commits on the same seeds
(`--only 'fedclup__codec=(none|topk|randk|powersgd)'`). Per data set and codec, each seed's FedCLUP
run is compared with the same seed's dense (`codec=none`) run of the same commit: its final personal
and global accuracy, the distance of its final global model to the dense run's, max |w_g -
w_g(dense)| over every parameter (final/global.pt), and the wire bytes to that seed's own target
(its dense run's final personal accuracy minus 1 point) at the first evaluation at or above it.
The markdown table gives, per quantity, old and new as the mean ± the half-width of the 95%
Student t interval over the seeds (pfl_dist/sweep/stats.py; "exact on every seed" where every
seed gave the same value) and the paired interval of new - old on the same seeds ("new = old on
every seed" where no seed changed; "(excludes 0)" where the change is significant); the wire bytes
to target are listed per seed (they are counted: they move only with the round reached).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from pfl_dist.outputs import format_bytes
from pfl_dist.sweep.codecs import codec_of
from pfl_dist.sweep.results import Run, find_runs
from pfl_dist.sweep.stats import paired_difference, t_interval

TARGET_DROP = 0.01
METHOD = "fedclup"


def global_model(run: Run) -> torch.Tensor:
    state = torch.load(run.path / "final" / "global.pt", weights_only=True, map_location="cpu")
    return torch.cat([t.flatten().double() for t in state.values()])


def per_seed(results_dir: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(data set, codec, seed) -> the FedCLUP run's final accuracies, distance to the same seed's
    dense run and wire bytes to that seed's target."""
    runs = [r for r in find_runs(results_dir) if r.method == METHOD]
    by_key = {(str(r.setting("data.kind")), codec_of(r), int(r.config["run"]["seed"])): r for r in runs}
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    for (data, codec, seed), run in by_key.items():
        dense = by_key.get((data, "none", seed))
        if dense is None:
            raise SystemExit(f"error_feedback_sweeps: {results_dir} has no dense run for {data} seed {seed}")
        target = dense.summary["final"]["acc_personal"] - TARGET_DROP
        hit = next((r for r in run.records if r["metrics"].get("acc_personal", -1.0) >= target), None)
        found[(data, codec, seed)] = {
            "acc_personal": run.summary["final"]["acc_personal"], "acc_global": run.summary["final"]["acc_global"],
            "distance": float((global_model(run) - global_model(dense)).abs().max()),
            "to_target": (f"{format_bytes(hit['comm']['wire_bytes_model'])} (round {hit['round']})"
                          if hit else "not reached")}
    return found


def over_seeds(values: list[float], spec: str) -> str:
    if len(values) > 1 and all(v == values[0] for v in values):
        return f"{values[0]:{spec}} (exact on every seed)"
    e = t_interval(values)
    return f"{e.mean:{spec}}" + ("" if e.half_width is None else f" ± {e.half_width:.2g}")


def cell(old: dict[int, float], new: dict[int, float], spec: str) -> str:
    """'old -> new; new - old paired' over the seeds both have."""
    diff = paired_difference(new, old)
    if all(new[s] == old[s] for s in new if s in old):
        paired = "; new = old on every seed"
    elif diff is None:
        paired = ""
    else:
        paired = (f"; new − old {diff.mean:+{spec}} ± {diff.half_width:.2g}"
                  + (" (excludes 0)" if diff.excludes_zero() else ""))
    return f"{over_seeds(list(old.values()), spec)} -> {over_seeds(list(new.values()), spec)}{paired}"


def table(old: dict[tuple[str, str, int], dict[str, Any]], new: dict[tuple[str, str, int], dict[str, Any]],
          codecs: list[str]) -> str:
    header = ["data", "codec", "seeds", "acc_personal old -> new", "acc_global old -> new",
              "distance to dense old -> new", "wire bytes to target old -> new, per seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for data in sorted({k[0] for k in new}):
        for codec in codecs:
            seeds = sorted(s for d, c, s in new if (d, c) == (data, codec) and (d, c, s) in old)
            if not seeds:
                continue

            def values(side: dict[tuple[str, str, int], dict[str, Any]], q: str,
                       d: str = data, c: str = codec, ss: list[int] = seeds) -> dict[int, float]:
                return {s: side[(d, c, s)][q] for s in ss}

            bytes_text = "; ".join(
                f"seed {s}: " + (old[(data, codec, s)]["to_target"] + " unchanged"
                                 if old[(data, codec, s)]["to_target"] == new[(data, codec, s)]["to_target"]
                                 else f"{old[(data, codec, s)]['to_target']} -> {new[(data, codec, s)]['to_target']}")
                for s in seeds)
            lines.append("| " + " | ".join([
                data, codec, ", ".join(map(str, seeds)),
                cell(values(old, "acc_personal"), values(new, "acc_personal"), ".4f"),
                cell(values(old, "acc_global"), values(new, "acc_global"), ".4f"),
                cell(values(old, "distance"), values(new, "distance"), ".3g"), bytes_text]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--codecs", nargs="+", default=["topk:0.01", "randk:0.1", "powersgd:2"])
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    print(table(per_seed(args.old), per_seed(args.new), args.codecs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
