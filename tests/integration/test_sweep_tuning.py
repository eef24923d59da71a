"""A tuned sweep end to end (one torchrun job): 2 methods x 2 grid values x 2 seeds on a small
learnable image set with validation rows; the picks in tuning.md/.csv and the family table,
checked against results.csv's rows computed here."""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import fmean

import pytest

import pfl_dist.sweep
from tests.helpers import REPO, run_main, write_learnable_mnist

pytestmark = [pytest.mark.integration, pytest.mark.distributed]


def test_a_tuned_sweep_picks_on_validation_rows_and_the_family_table_shows_the_picks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: 4 clients of 20 images (2 test, 4 validation, 14 training rows each), logreg, 3 rounds.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "mnist").mkdir()
    mnist_dir = write_learnable_mnist(tmp_path / "mnist", num_train=600, num_test=100)
    spec = {"base": str(REPO / "configs" / "default.yaml"), "out_dir": str(tmp_path / "out"),
            "overrides": {"data.kind": "mnist", "data.data_dir": str(mnist_dir), "data.num_partitions": 30,
                          "data.num_clients": 4, "data.val_fraction": 0.2, "algorithm.local_lr": 0.05,
                          "algorithm.personal_lr": 0.05, "algorithm.batch_size": 8, "algorithm.local_epochs": 1,
                          "train.num_rounds": 3, "train.eval_every": 1},
            "variants": {"ditto": {"algorithm.name": "ditto", "algorithm.lam": [0.01, 3.0]},
                         "apfl": {"algorithm.name": "apfl", "algorithm.alpha": [0.1, 0.9]}},
            "tune": {"metric": "val/acc_personal"}, "seeds": [0, 1],
            "launch": {"nproc_per_node": 1, "mode": "in_job"}}
    # Execute
    outcome = pfl_dist.sweep.run(spec)
    # Assert: 8 runs, each with validation and test metrics
    assert (outcome.status, outcome.failures, len(outcome.rows)) == ("ok", {}, 8)
    out = outcome.out_dir
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(row["val/acc_personal"] and row["eval/acc_personal"] for row in rows)
    printed = capsys.readouterr().out
    assert "tuning (picked on val/acc_personal, never on test metrics):" in printed
    # the picks, computed here from results.csv: the best mean val/acc_personal over both seeds
    expected = {}
    for variant, key in (("ditto", "algorithm.lam"), ("apfl", "algorithm.alpha")):
        means = {}
        for value in dict.fromkeys(row[key] for row in rows if row["variant"] == variant):
            members = [row for row in rows if row["variant"] == variant and row[key] == value]
            assert sorted(row["seed"] for row in members) == ["0", "1"]
            means[value] = fmean(float(row["val/acc_personal"]) for row in members)
        best = max(means.values())
        expected[variant] = next(v for v, m in means.items() if m == best)  # the first of equals
    with open(out / "tuning.csv", newline="") as f:
        tuning = list(csv.DictReader(f))
    assert len(tuning) == 4
    picked = {row["variant"]: row["values"] for row in tuning if row["picked"] == "true"}
    assert {v: float(x) for v, x in picked.items()} == {v: float(x) for v, x in expected.items()}
    assert "| Ditto | algorithm.lam | 0.01/3 |" in (out / "tuning.md").read_text()
    # the family table: one row per method, its pick named, its test accuracy the picked runs' mean
    result = run_main(str(out), module="pfl_dist.sweep.family")
    assert result.returncode == 0, result.stderr
    table = (out / "family_table.md").read_text()
    lam = float(expected["ditto"])
    alpha = float(expected["apfl"])
    assert f"| Ditto (λ={lam:g}, picked from 0.01/3) |" in table
    assert f"| APFL (α={alpha:g}, picked from 0.1/0.9) |" in table
    with open(out / "family_table.csv", newline="") as f:
        family = {row["method"]: row for row in csv.DictReader(f)}
    assert len(family) == 2 and "over n = 2 seeds" in table  # the picked runs only, not the grid
    ditto_runs = [row for row in rows if row["variant"] == "ditto" and float(row["algorithm.lam"]) == lam]
    ditto_row = family[f"Ditto (λ={lam:g}, picked from 0.01/3)"]
    assert float(ditto_row["acc_personal"]) == pytest.approx(fmean(float(r["eval/acc_personal"]) for r in ditto_runs))
