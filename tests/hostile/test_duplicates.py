"""Family 8, duplicates in input: a key given twice in a config or sweep file is an error naming
the key (YAML keeps the last one silently), and grid values that are equal once validated run
one point.

Before the fix `lam: 0.1` followed by `lam: 0.2` ran with 0.2 without a word, a sweep file with
two `grid:` sections dropped the first, and a grid of [1.0, 1] ran the same config twice under
two names (R=1.0 and R=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pfl_dist import launch, train
from pfl_dist.sweep import cli as sweep_cli
from tests.helpers import REPO, TINY, write_sweep
from tests.hostile.hostile import (
    SWEEP_ERROR,
    TINY_RUN,
    assert_one_line,
    assert_unchanged,
    run_main,
    snapshot,
)

CONFIGS = {
    "key_in_section": ("algorithm:\n  lam: 0.1\n  lam: 0.2\n", "has the key 'lam' twice (line 3)"),
    "section": ("train:\n  num_rounds: 2\ntrain:\n  eval_every: 1\n", "has the key 'train' twice (line 3)"),
    "flow_mapping": ("data: {R: 1.0, dim: 4, R: 2.0}\n", "has the key 'R' twice (line 1)"),
    "equal_numbers_as_keys": ("run:\n  seed: 1\n  seed: 1\n", "has the key 'seed' twice"),
}


@pytest.mark.parametrize(("text", "message"), CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("entry", ["train", "launch"])
def test_duplicate_keys_in_a_config_file_are_an_error(results: Path, tmp_path: Path, text: str, message: str,
                                                      entry: str) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text(text)
    before = snapshot(results)
    main = train.main if entry == "train" else launch.main
    outcome = run_main(main, ["--config", str(config), *TINY_RUN, f"run.out_dir={results / 'out'}"])
    assert_one_line(outcome, code=2, contains=[f"config file {config}", message])
    assert_unchanged(before, results)


SWEEPS = {
    "top_level": ("grid: {data.R: [0.1]}\ngrid: {data.R: [0.2]}\n", "has the key 'grid' twice"),
    "in_grid": ("grid:\n  data.R: [0.1]\n  data.R: [1.0]\n", "has the key 'data.R' twice"),
    "in_variant": ("variants:\n  a: {algorithm.lam: 0.1, algorithm.lam: 0.2}\n", "has the key 'algorithm.lam' twice"),
    "variant_name": ("variants:\n  a: {algorithm.lam: 0.1}\n  a: {algorithm.lam: 0.2}\n", "has the key 'a' twice"),
}


@pytest.mark.parametrize(("extra", "message"), SWEEPS.values(), ids=SWEEPS.keys())
def test_duplicate_keys_in_a_sweep_file_are_an_error(results: Path, tmp_path: Path, extra: str,
                                                     message: str) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "out"))
    sweep.write_text(sweep.read_text() + extra)
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains=[f"sweep file {sweep}", message])
    assert_unchanged(before, results)


GRIDS = {
    "int_and_float": ([1.0, 1], "R=1__seed=0 = R=1.0__seed=0"),
    "repeated": ([0.5, 0.5], "R=0.5__seed=0 = R=0.5__seed=0"),
    "string_and_float": (["1e-1", 0.1], "R=0.1__seed=0 = R=1e-1__seed=0"),
}


@pytest.mark.parametrize(("values", "merged"), GRIDS.values(), ids=GRIDS.keys())
def test_equal_grid_values_run_one_point(results: Path, tmp_path: Path, values: list[object], merged: str) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "sweep"), overrides=TINY,
                        grid={"data.R": [*values, 3.0]})
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=0, prefix="pfl_dist.sweep: warning: 1 point(s) have the same config",
                    contains=merged)
    planned = [line.split()[1] for line in outcome.stdout.splitlines() if line.startswith("pending")]
    assert len(planned) == 2 and planned[1] == "R=3.0__seed=0"
    assert "2 points valid, 2 to run" in outcome.stdout
    assert_unchanged(before, results)


def test_equal_values_in_different_variants_stay_apart(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", overrides=TINY, variants={
        "a": {"algorithm.lam": 0.5}, "b": {"algorithm.lam": 0.5}})
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert outcome.code == 0 and not outcome.stderr_lines, outcome.describe()
    assert "2 points valid" in outcome.stdout


def test_shipped_configs_and_sweeps_have_no_duplicates_or_aliases() -> None:
    from pfl_dist.config import read_yaml

    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) > 5
    for path in files:
        read_yaml(path)
