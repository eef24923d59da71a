"""A sweep's `tune` section (pfl_dist/sweep/tuning.py, spec.py): the grid and the pick.

Selection is checked on run dirs written here (summary.json and sweep_point.json as a sweep
writes them), whose test metrics are arranged to favour other grid values than the validation
metrics: the pick must follow the validation metric, and be the same when the test metrics are
gone. The real sweep end to end is tests/integration/test_sweep_tuning.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.spec import load_sweep
from pfl_dist.sweep.tuning import (
    TuneSpec,
    parse_tune,
    picked_label,
    picked_runs,
    select,
    tuned_runs,
    validation_final,
    write_tuning,
)
from tests.helpers import REPO, run_main, write_learnable_mnist

VAL = TuneSpec(metric="val/acc_personal", goal="max")


def fake_run(out: Path, method: str, variant: str, values: dict[str, Any], seed: int, *, val: float, test: float,
             **algorithm: Any) -> Run:
    """A finished run dir as a sweep leaves it: summary.json (final metrics by tag) and sweep_point.json."""
    name = "__".join([variant, *(f"{k.split('.')[1]}={v}" for k, v in values.items()), f"seed={seed}"])
    cfg = load_config(None, [f"algorithm.name={method}", f"run.seed={seed}",
                             *(f"{k}={v}" for k, v in {**algorithm, **values}.items())]).to_dict()
    run_dir = out / name
    run_dir.mkdir(parents=True)
    summary = {"config": cfg, "final": {"val/acc_personal": val, "val/loss_personal": 1 - val,
                                        "eval/acc_personal": test, "eval/loss_personal": 1 - test},
               "comm": {"uplink_bytes": 0, "downlink_bytes": 0}, "time": {"wall_s": 1.0, "round_s_median": 0.1}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "sweep_point.json").write_text(json.dumps({"name": name, "variant": variant, "values": values,
                                                          "seed": seed}))
    return Run(run_dir)


def grid_runs(out: Path) -> list[Run]:
    """Ditto at lam 0.1 / 0.5 / 2 and APFL at alpha 0.25 / 0.75 on seeds 0 and 1, FedAvg once per
    seed. Validation favours lam 0.5 and alpha 0.75; the test metrics favour lam 2 and alpha 0.25."""
    val = {0.1: 0.70, 0.5: 0.80, 2.0: 0.75, 0.25: 0.60, 0.75: 0.65}
    test = {0.1: 0.70, 0.5: 0.71, 2.0: 0.90, 0.25: 0.95, 0.75: 0.60}
    runs = []
    for seed in (0, 1):
        runs.append(fake_run(out, "fedavg", "fedavg", {}, seed, val=0.5, test=0.5))
        for lam in (0.1, 0.5, 2.0):
            runs.append(fake_run(out, "ditto", "ditto", {"algorithm.lam": lam}, seed, val=val[lam] + seed / 100,
                                 test=test[lam]))
        for alpha in (0.25, 0.75):
            runs.append(fake_run(out, "apfl", "apfl", {"algorithm.alpha": alpha}, seed, val=val[alpha],
                                 test=test[alpha]))
    return runs


def test_pick_is_the_best_mean_validation_metric_over_seeds(tmp_path: Path) -> None:
    picks = {p.variant: p for p in select(grid_runs(tmp_path), VAL)}
    ditto, apfl, fedavg = picks["ditto"], picks["apfl"], picks["fedavg"]
    assert ditto.keys == ("algorithm.lam",) and [c.values for c in ditto.candidates] == [(0.1,), (0.5,), (2.0,)]
    assert [c.score for c in ditto.candidates] == pytest.approx([0.705, 0.805, 0.755])  # means over seeds 0, 1
    assert ditto.chosen is not None and ditto.chosen.values == (0.5,)  # not 2.0, the best on test
    assert apfl.chosen is not None and apfl.chosen.values == (0.75,)  # not 0.25, the best on test
    assert fedavg.keys == () and fedavg.chosen is not None and len(fedavg.chosen.runs) == 2
    assert picked_label(ditto) == "Ditto (λ=0.5, picked from 0.1/0.5/2)"
    assert picked_label(apfl) == "APFL (α=0.75, picked from 0.25/0.75)"
    assert picked_label(fedavg) == "FedAvg"
    assert sorted(r.label for r in picked_runs(list(picks.values()))) == sorted(
        ["FedAvg"] * 2 + ["Ditto (λ=0.5, picked from 0.1/0.5/2)"] * 2 + ["APFL (α=0.75, picked from 0.25/0.75)"] * 2)


def test_selection_never_reads_test_metrics(tmp_path: Path) -> None:
    # Prepare: the grid's picks, then every eval/ metric removed from every summary.json.
    runs = grid_runs(tmp_path)
    before = [(p.variant, p.chosen.values if p.chosen else None, [c.score for c in p.candidates])
              for p in select(runs, VAL)]
    for run in runs:
        path = run.path / "summary.json"
        summary = json.loads(path.read_text())
        summary["final"] = {k: v for k, v in summary["final"].items() if not k.startswith("eval/")}
        path.write_text(json.dumps(summary))
    # Execute: fresh Run objects (nothing cached)
    after = [(p.variant, p.chosen.values if p.chosen else None, [c.score for c in p.candidates])
             for p in select([Run(r.path) for r in runs], VAL)]
    # Assert: the same picks and scores; a test metric cannot be asked for
    assert after == before
    with pytest.raises(ValueError, match="validation metrics only"):
        validation_final(runs[0], "eval/acc_personal")
    for metric in ("eval/acc_personal", "acc_personal", "train/acc_personal", "val/"):
        with pytest.raises(ConfigError, match="^tune.metric must be a metric of the validation rows"):
            parse_tune({"metric": metric})


def test_a_loss_is_minimized_ties_go_to_the_first_value_and_incomplete_values_are_not_compared(
        tmp_path: Path) -> None:
    runs = grid_runs(tmp_path)
    assert parse_tune({"metric": "val/loss_personal"}).goal == "min"
    loss = {p.variant: p for p in select(runs, parse_tune({"metric": "val/loss_personal"}))}
    assert loss["ditto"].chosen is not None and loss["ditto"].chosen.values == (0.5,)
    # a tie: both alpha values score the same -> the first of the grid
    tie = [fake_run(tmp_path / "tie", "apfl", "apfl", {"algorithm.alpha": a}, 0, val=0.5, test=0.5) for a in (0.3, 0.6)]
    assert select(tie, VAL)[0].chosen.values == (0.3,)  # type: ignore[union-attr]
    # lam 2 finished on seed 0 only, with the best score: not comparable, so not picked
    partial = [r for r in runs if not ("lam=2.0" in r.name and "seed=1" in r.name)]
    best_partial = fake_run(tmp_path / "partial", "ditto", "ditto", {"algorithm.lam": 4.0}, 0, val=0.99, test=0.1)
    ditto = next(p for p in select([*partial, best_partial], VAL) if p.variant == "ditto")
    assert ditto.chosen is not None and ditto.chosen.values == (0.5,)
    assert [c.score is None for c in ditto.candidates] == [False, False, True, True]


def test_tuning_files_state_the_grid_scores_and_pick(tmp_path: Path) -> None:
    picks = select(grid_runs(tmp_path), VAL)
    path = write_tuning(tmp_path, picks, VAL)
    text = path.read_text()
    # Ditto's seeds differ by 0.01: t_{0.975, 1} x 0.01 / sqrt(2) / sqrt(2) = 12.706 x 0.005 = 0.064
    assert "| Ditto | algorithm.lam | 0.1/0.5/2 | 0.7050 ± 0.064 / 0.8050 ± 0.064 / 0.7550 ± 0.064 | 2 | 0.5 |" in text
    assert "| APFL | algorithm.alpha | 0.25/0.75 | 0.6000 ± 0 / 0.6500 ± 0 | 2 | 0.75 |" in text
    assert "| FedAvg | (nothing: runs once) | - | 0.5000 ± 0 | 2 | - |" in text
    with open(tmp_path / "tuning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [(r["variant"], r["values"]) for r in rows if r["picked"] == "true"]
    assert picked == [("fedavg", ""), ("ditto", "0.5"), ("apfl", "0.75")]
    ditto_2 = next(r for r in rows if r["values"] == "2.0" or r["values"] == "2")
    assert float(ditto_2["mean val/acc_personal"]) == pytest.approx(0.755)
    assert float(ditto_2["ci95"]) == pytest.approx(12.7062 * 0.005, rel=1e-4)


def test_tuned_runs_reads_the_tune_section_the_sweep_kept(tmp_path: Path) -> None:
    runs = grid_runs(tmp_path)
    assert tuned_runs(tmp_path, runs) == runs  # no sweep.yaml: a folder of runs, unchanged
    (tmp_path / "sweep.yaml").write_text("tune: {metric: val/acc_personal}\nvariants: {a: {algorithm.name: fedavg}}\n")
    shown = tuned_runs(tmp_path, runs)
    assert len(shown) == 6 and {r.label for r in shown} == {
        "FedAvg", "Ditto (λ=0.5, picked from 0.1/0.5/2)", "APFL (α=0.75, picked from 0.25/0.75)"}


# --- the sweep file ------------------------------------------------------------------------


def sweep(tmp_path: Path, mnist_dir: Path, **fields: Any) -> dict[str, Any]:
    return {"base": str(REPO / "configs" / "default.yaml"), "out_dir": str(tmp_path / "out"),
            "overrides": {"data.kind": "mnist", "data.data_dir": str(mnist_dir), "data.num_partitions": 30,
                          "data.num_clients": 4, "algorithm.local_lr": 0.05, "data.val_fraction": 0.2},
            "variants": {"ditto": {"algorithm.name": "ditto", "algorithm.lam": [0.1, 1.0]},
                         "fedavg": {"algorithm.name": "fedavg"}},
            "tune": {"metric": "val/acc_personal"}, "seeds": [0, 1], "launch": {"nproc_per_node": 1}, **fields}


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"), num_train=600, num_test=100)


def test_a_tuned_sweep_file_is_parsed_and_checked(tmp_path: Path, mnist_dir: Path) -> None:
    loaded = load_sweep(sweep(tmp_path, mnist_dir))
    assert loaded.tune is not None and (loaded.tune.metric, loaded.tune.goal) == ("val/acc_personal", "max")
    assert loaded.tune.grids == {"ditto": (("algorithm.lam",), ((0.1,), (1.0,))), "fedavg": ((), ((),))}
    assert sorted(p.name for p in loaded.points) == sorted(
        f"{v}__seed={s}" for v in ("ditto__lam=0.1", "ditto__lam=1.0", "fedavg") for s in (0, 1))
    bad = {
        "eval": ({"tune": {"metric": "eval/acc_personal"}}, "^tune.metric must be a metric of the validation rows"),
        "goal": ({"tune": {"metric": "val/acc_personal", "goal": "up"}}, "^tune.goal must be 'max' or 'min'"),
        "key": ({"tune": {"metric": "val/acc_personal", "grids": {}}}, "^unknown sweep key 'tune.grids'"),
        "grid": ({"grid": {"algorithm.local_lr": [0.1, 0.2]}}, "^tune picks per variant: a tuned sweep has no "),
    }
    for fields, message in bad.values():
        with pytest.raises(ConfigError, match=message):
            load_sweep(sweep(tmp_path, mnist_dir, **fields))
    no_val = sweep(tmp_path, mnist_dir)
    no_val["overrides"] = {k: v for k, v in no_val["overrides"].items() if k != "data.val_fraction"}
    with pytest.raises(ConfigError, match=r"^tune.metric val/acc_personal is measured on validation rows: set "
                                          r"data.val_fraction > 0 for every point"):
        load_sweep(no_val)


def test_a_damaged_tune_section_in_the_kept_sweep_file_is_one_line(tmp_path: Path) -> None:
    grid_runs(tmp_path)
    (tmp_path / "sweep.yaml").write_text("tune: {metric: eval/acc_personal}\n")
    for module in ("pfl_dist.sweep.family", "pfl_dist.plot"):
        result = run_main(str(tmp_path), module=module)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{tmp_path / 'sweep.yaml'}: tune.metric must be a metric of the validation" \
            in lines[0], result.stderr


def test_the_stated_grid_is_reported_whole_and_a_value_not_run_is_never_picked(tmp_path: Path) -> None:
    # Prepare: the sweep file states lam 0.1 / 0.5 / 2 / 8, and 8 has no run
    spec = parse_tune({"metric": "val/acc_personal"},
                      {"ditto": {"algorithm.name": "ditto", "algorithm.lam": [0.1, 0.5, 2.0, 8.0]},
                       "apfl": {"algorithm.name": "apfl", "algorithm.alpha": [0.25, 0.75]},
                       "fedavg": {"algorithm.name": "fedavg"}})
    picks = {p.variant: p for p in select(grid_runs(tmp_path), spec)}
    ditto = picks["ditto"]
    assert [c.values for c in ditto.candidates] == [(0.1,), (0.5,), (2.0,), (8.0,)]
    assert ditto.candidates[-1].runs == () and ditto.candidates[-1].score is None
    assert ditto.chosen is not None and ditto.chosen.values == (0.5,)
    assert picked_label(ditto) == "Ditto (λ=0.5, picked from 0.1/0.5/2/8)"
    row = ("| Ditto | algorithm.lam | 0.1/0.5/2/8 | 0.7050 ± 0.064 / 0.8050 ± 0.064 / 0.7550 ± 0.064 / not run "
           "| 2 | 0.5 |")
    assert row in write_tuning(tmp_path, list(picks.values()), spec).read_text()
