"""Which error feedback a message of kept state needs: the candidate rules, measured.

    python benchmarks/error_feedback_rules.py [--rounds 40] [--settings c2,c5,sampled] [--seeds 0 1 2]
        [--out DIR] [--json | --markdown]

FedCLUP sends w_i - w_g and keeps w_i (pfl_dist/methods.py STATE). Issue 21's run (synthetic, 4
clients, float64, lam 0.1, global_lr 1/lam, K = 5 steps of lr 0.1, 40 rounds) is trained dense and
through each error-feedback codec under three rules for what a client sends:
- residual: Stich et al. 2018, C(Delta_i + e_i), e_i <- what C left out. pfl_dist's rule for fresh
  increments (FedAvg, SCAFFOLD), and what it did for kept state too before issue 21;
- none: C(w_i - w_g), no per-client memory: w_i is its own memory (the rule pfl_dist uses);
- mirror: EF21 (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021): client i keeps h_i, the server's
  copy of w_i (h_i = w_0 at the start), sends c_i = C(w_i - h_i) and sets h_i <- h_i + c_i; the
  server keeps H = sum_i n_i h_i / N and uses it as the mean of the local models. The server needs
  every client's h_i, and H is the mean of the sampled clients' mirrors only when every client is
  sampled: it is measured with full participation only.
Settings: c2 (the run as filed, 2 classes: every update of the linear model is a rank-1 matrix,
which PowerSGD at rank 1 sends exactly), c5 (5 classes), sampled (8 clients, half sampled per
round: residual and none only). Per run: max|w_g - w_g(dense)|, that over ||w_g(dense)||, the final
global and personal training accuracy. One process hosts every client; the codec is the
production one, only what it is handed changes. With several --seeds (run.seed: the data, the
initial model, the sampled clients and the codecs' randomness), each (setting, codec, rule) is run
on every seed against that seed's dense run, and the table gives each quantity as the mean ± the
half-width of the 95% Student t interval over the seeds (pfl_dist/sweep/stats.py); a quantity that
is the same on every seed is printed once, "(exact on every seed)". The last column compares each
rule's distance with rule none's on the same seeds (paired t interval; '<' nearer to dense, '>'
farther, where it excludes 0); --markdown then lists the final accuracies that differ from the
same seed's dense run (paired t interval excluding 0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_line, print_table

from pfl_dist.config import Config, load_config
from pfl_dist.exchange.base import ErrorFeedback
from pfl_dist.exchange.exchange import Exchange
from pfl_dist.methods import INCREMENT
from pfl_dist.runtime import init_runtime
from pfl_dist.sweep.stats import paired_difference, t_interval
from pfl_dist.train import Trainer

ISSUE_21 = ("algorithm.name=fedclup", "algorithm.lam=0.1", "algorithm.global_lr=1/lam", "algorithm.num_local_steps=5",
            "algorithm.local_lr=0.1", "train.dtype=float64")
SETTINGS = {"c2": (), "c5": ("data.num_classes=5",),
            "sampled": ("data.num_clients=8", "algorithm.sample_fraction=0.5")}
CODECS = ("randk:0.25", "topk:0.25", "topk:0.05", "powersgd:1")
RULES = ("residual", "none", "mirror")


class MirrorExchange(Exchange):
    """EF21 on top of a production codec built with a residual memory: the residual is cleared
    before every round, so after it e_i = u_i - C(u_i) gives each client's own C(u_i)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mirrors: torch.Tensor | None = None  # h_i, one row per client
        self.mean = torch.zeros(0)  # H

    def run_round(self, round_idx: int, *, global_model: torch.Tensor, sent: torch.Tensor, rows: torch.Tensor,
                  counts: torch.Tensor, sampled: np.ndarray, stop: bool,
                  received: torch.Tensor | None = None) -> torch.Tensor | None:
        assert len(sampled) == self.num_clients, "EF21's H is the mean of the sampled mirrors only with everyone"
        assert received is None or torch.equal(received, global_model), "measured with a dense downlink only"
        assert self.codec is not None and isinstance(self.codec.memory, ErrorFeedback)
        if self.mirrors is None:
            self.mirrors, self.mean = global_model.repeat(len(self.client_ids), 1), global_model.clone()
        memory = self.codec.memory
        every = torch.arange(len(self.client_ids))
        memory.keep(every, torch.zeros(len(every), memory.store.rows("codec")[memory.row_name].shape[1],
                                       dtype=global_model.dtype, device=global_model.device))
        shifted = sent - self.mirrors[rows] + self.mean  # the codec codes shifted - H = w_i - h_i
        average = super().run_round(round_idx, global_model=self.mean, sent=shifted, rows=rows, counts=counts,
                                    sampled=sampled, stop=stop)
        if average is not None:
            self.mirrors[rows] += (shifted - self.mean) - memory.store.read("codec", rows)[memory.row_name]
            self.mean = average  # H + sum_i n_i c_i / N
        return average


def train(cfg: Config, rule: str) -> Trainer:
    trainer = Trainer(cfg, init_runtime(cfg))
    if rule in ("residual", "mirror"):
        cls = MirrorExchange if rule == "mirror" else Exchange
        trainer.exchange = cls(cfg.comm.codec, comm=trainer.comm,
                               shapes=trainer.algorithm.wire_shapes(trainer.parameter_shapes()),
                               client_ids=trainer.task.client_ids, num_clients=cfg.data.num_clients,
                               dtype=trainer.global_model.dtype, device=trainer.global_model.device,
                               seed=cfg.run.seed, message=INCREMENT)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the per-round progress lines
            trainer.train()
    finally:
        trainer.close()
    return trainer


def measure(out: Path, setting: str, *, rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    def run(codec: str, rule: str) -> Trainer:
        cfg = load_config(None, [*ISSUE_21, *SETTINGS[setting], f"comm.codec={codec}", f"train.num_rounds={rounds}",
                                 f"train.eval_every={rounds}", f"run.seed={seed}", f"run.out_dir={out / setting}",
                                 f"run.name={rule}_{codec.replace(':', '-')}_seed{seed}"])
        return train(cfg, rule)

    dense = run("none", "none")
    norm = float(torch.linalg.vector_norm(dense.global_model))
    results = [{"setting": setting, "seed": seed, "codec": "none", "rule": "dense", "distance": 0.0, "relative": 0.0,
                **dense.summary["final"]}]
    for codec in CODECS:
        for rule in RULES:
            if rule == "mirror" and setting == "sampled":
                continue
            trainer = run(codec, rule)
            distance = float((trainer.global_model - dense.global_model).abs().max())
            results.append({"setting": setting, "seed": seed, "codec": codec, "rule": rule, "distance": distance,
                            "relative": distance / norm, **trainer.summary["final"]})
    return results


QUANTITIES = ("distance", "relative", "train/acc_global", "train/acc_personal")  # per run, in table order
HEADERS = ("setting", "codec", "rule", "max abs w_g - dense", "/ norm of dense w_g", "acc_global", "acc_personal",
           "distance - rule none's (paired)")


def over_seeds(values: list[float]) -> str:
    """One quantity over the seeds: '0.135 ± 0.041' (mean to 3 significant digits, the 95% t
    half-width to 2), the value and '(exact on every seed)' when every seed gave it, the value
    alone for one seed."""
    if len(values) > 1 and all(v == values[0] for v in values):
        return f"{values[0]:.3g} (exact on every seed)"
    estimate = t_interval(values)
    return f"{estimate.mean:.3g}" + ("" if estimate.half_width is None else f" ± {estimate.half_width:.2g}")


def paired_to_none(results: list[dict[str, Any]], key: tuple[str, str, str]) -> str:
    """The rule's distance minus rule `none`'s for the same setting, codec and seed: the paired 95%
    t interval over the seeds, with '<' / '>' when it excludes 0 (nearer to / farther from dense
    than `none`); '' for `none` and the dense run, or with one seed."""
    setting, codec, rule = key
    if rule in ("none", "dense"):
        return ""
    def distances(rule: str) -> dict[int, float]:
        return {r["seed"]: r["distance"] for r in results
                if (r["setting"], r["codec"], r["rule"]) == (setting, codec, rule)}

    diff = paired_difference(distances(rule), distances("none"))
    if diff is None:
        return ""
    mark = (" <" if diff.high < 0 else " >") if diff.excludes_zero() else ""
    return f"{diff.mean:+.3g} ± {diff.half_width:.2g}{mark}"


def accuracy_differences(results: list[dict[str, Any]]) -> list[str]:
    """Each run's final accuracies minus the same seed's dense run's, where the paired 95% t interval
    over the seeds excludes 0: 'c2 randk:0.25 residual: train/acc_personal -0.153 ± 0.13'."""
    found = []
    for key in dict.fromkeys((r["setting"], r["codec"], r["rule"]) for r in results):
        if key[2] == "dense":
            continue
        for metric in ("train/acc_personal", "train/acc_global"):
            def values(k: tuple[str, str, str], m: str = metric) -> dict[int, float]:
                return {r["seed"]: r[m] for r in results if (r["setting"], r["codec"], r["rule"]) == k}

            diff = paired_difference(values(key), values((key[0], "none", "dense")))
            if diff is not None and diff.excludes_zero():
                found.append(f"{' '.join(key)}: {metric} {diff.mean:+.3f} ± {diff.half_width:.3f}")
    return found


def aggregate(results: list[dict[str, Any]]) -> list[list[str]]:
    """A row per (setting, codec, rule), in the order measured, of each quantity over the seeds,
    and its distance's paired difference to rule `none`'s."""
    keys = list(dict.fromkeys((r["setting"], r["codec"], r["rule"]) for r in results))
    return [[*key, *(over_seeds([r[q] for r in results if (r["setting"], r["codec"], r["rule"]) == key])
                     for q in QUANTITIES), paired_to_none(results, key)] for key in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run.seed of each repetition (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temporary dir)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="every run's numbers")
    output.add_argument("--markdown", action="store_true", help="the table over seeds as GitHub markdown")
    args = parser.parse_args()
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--settings must be among {', '.join(SETTINGS)}, got {unknown[0]}" if unknown
                     else "--seeds must be distinct integers >= 0")
    with tempfile.TemporaryDirectory(prefix="pfl_ef_rules_") as scratch:
        out = args.out or Path(scratch)
        results = [row for seed in args.seeds for setting in args.settings.split(",")
                   for row in measure(out, setting, rounds=args.rounds, seed=seed)]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    # summary.json's final metrics are keyed by tag: the synthetic task measures on its training rows
    rows = aggregate(results)
    seeds = ", ".join(map(str, args.seeds))
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |\n|" + "---|" * len(HEADERS))
        print("\n".join("| " + " | ".join(row) + " |" for row in rows))
        differences = accuracy_differences(results)
        if differences:
            print("\nFinal accuracies that differ from the same seed's dense run (paired 95% t interval excludes 0):")
            print("\n".join(f"- {line}" for line in differences))
        print(f"\nseeds {seeds}; {machine_line()}")
        return
    print(f"{machine_line()}; seeds {seeds}")
    print_table(list(HEADERS), rows)


if __name__ == "__main__":
    main()
