"""Family 2, resource limits: YAML that expands without bound, numbers that overflow downstream,
non-finite values in results, and sizes that cannot fit in memory.

Before the fix a 441-byte alias bomb hung the config reader (and exhausted memory), run.seed=1e23
ended in a traceback from torch.Generator, train.num_rounds=1e20 in one from the resume vote,
data.dim=1e9 in one from torch.empty (1.6 TB), comm.timeout_s=1e-9 started a run whose every
collective would time out, and data.R=1e300 wrote `Infinity` into summary.json.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from pfl_dist import launch, train
from pfl_dist.config import load_config
from pfl_dist.data.synthetic import generate_clients
from pfl_dist.outputs import write_json_atomic
from pfl_dist.resources import available_bytes
from pfl_dist.sweep import cli as sweep_cli
from pfl_dist.tasks.synthetic import SyntheticTask
from tests.helpers import write_sweep
from tests.hostile.hostile import (
    ERROR,
    SWEEP_ERROR,
    TINY_RUN,
    assert_one_line,
    assert_unchanged,
    run_main,
    run_module,
    snapshot,
)

# Nine nested anchors, 9**9 = 387 million strings once expanded, as the value of a real key.
ALIAS_BOMB = "algorithm:\n  lam:\n" + "".join(
    f"    - &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


YAML_FILES = {
    "alias_bomb": (ALIAS_BOMB, "uses the YAML alias *a"),
    "merge_alias": ("base: &b {lam: 0.5}\nalgorithm:\n  <<: *b\n", "uses the YAML alias *b"),
    "scalar_alias": ("run:\n  name: &n x\n  out_dir: *n\n", "uses the YAML alias *n"),
    "deep_nesting": ("run: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    "huge": ("#" + "x" * 1_000_001 + "\n", "bytes; at most 1000000 are read"),
}


@pytest.mark.parametrize(("text", "message"), YAML_FILES.values(), ids=YAML_FILES.keys())
def test_config_files_that_expand_without_bound_are_refused(results: Path, tmp_path: Path, text: str,
                                                            message: str) -> None:
    config = tmp_path / "hostile.yaml"
    config.write_text(text)
    before = snapshot(results)
    outcome = run_main(train.main, ["--config", str(config), f"run.out_dir={results / 'out'}"])
    assert_one_line(outcome, code=2, contains=[str(config), message])
    assert_unchanged(before, results)


@pytest.mark.parametrize("where", ["sweep_file", "base_file"])
def test_sweep_and_base_files_with_aliases_are_refused(results: Path, tmp_path: Path, where: str) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "out"), grid={"data.R": [0.1, 1.0]})
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    if where == "sweep_file":
        sweep.write_text(sweep.read_text() + ALIAS_BOMB)
        named = f"sweep file {sweep}"
    else:
        sweep.write_text(sweep.read_text().replace(str(Path(__file__).parents[2] / "configs" / "default.yaml"),
                                                   str(bomb)))
        named = f"config file {bomb}"
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains=[named, "uses the YAML alias"])
    assert_unchanged(before, results)


def test_an_alias_in_an_override_value_is_only_a_string(results: Path) -> None:
    before = snapshot(results)
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={results / 'out'}", "data.R=[&a [1, 1], *a, *a]"])
    assert_one_line(outcome, code=2, contains="data.R must be float")
    assert_unchanged(before, results)


OUT_OF_RANGE = {
    "seed_1e23": ("run.seed=100000000000000000000000", "run.seed must be in [0, 2**63 - 1]"),
    "seed_2_63": (f"run.seed={2**63}", "run.seed must be in [0, 2**63 - 1]"),
    "rounds_1e20": ("train.num_rounds=100000000000000000000", "train.num_rounds must be at most 1000000"),
    "eval_every_1e7": ("train.eval_every=10000000", "train.eval_every must be at most 1000000"),
    "checkpoint_every_1e7": ("checkpoint.every=10000000", "checkpoint.every must be at most 1000000"),
    "dim_1e10": ("data.dim=10000000000", "data.dim must be at most 1000000000"),
    "classes_1e7": ("data.num_classes=10000000", "data.num_classes must be in [2, 1000000]"),
    "local_steps_1e10": ("algorithm.num_local_steps=10000000000", "algorithm.num_local_steps must be at most"),
    "timeout_1e15": ("comm.timeout_s=1e15", "comm.timeout_s must be in [1, 604800], got 1e+15"),
    "timeout_1e-9": ("comm.timeout_s=1e-9", "comm.timeout_s must be in [1, 604800], got 1e-09"),
    "R_1e300": ("data.R=1e300", "data.R must be in [0, 1e+06], got 1e+300"),
    "center_scale_1e300": ("data.center_scale=1e300", "data.center_scale must be in [0, 1e+06]"),
}


@pytest.mark.parametrize(("override", "message"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_numbers_that_overflow_downstream_name_the_key_and_range(results: Path, override: str,
                                                                 message: str) -> None:
    before = snapshot(results)
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={results / 'out'}", "run.name=new", override])
    assert_one_line(outcome, code=2, contains=message)
    assert_unchanged(before, results)


def test_the_largest_seed_runs(tmp_path: Path) -> None:
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={tmp_path}", f"run.seed={2**63 - 1}"])
    assert outcome.code == 0, outcome.describe()


TOO_BIG = {
    "dim_1e9": ["data.dim=1000000000"],  # 1.6 TB of features for 2 clients of 200 samples
    "clients_1e9": ["data.num_clients=1000000000"],
    "samples_1e9": ["data.samples_per_client=1000000000"],
}


@pytest.mark.parametrize("overrides", TOO_BIG.values(), ids=TOO_BIG.keys())
@pytest.mark.parametrize("entry", ["train", "launch"])
def test_sizes_that_cannot_fit_are_refused_before_allocation(results: Path, overrides: list[str],
                                                             entry: str) -> None:
    before = snapshot(results)
    main, torchrun = (train.main, []) if entry == "train" else (launch.main, ["--nproc-per-node=2"])
    outcome = run_main(main, [*torchrun, *TINY_RUN, f"run.out_dir={results / 'out'}", "run.name=new", *overrides])
    line = assert_one_line(outcome, code=2, contains=["of memory per rank", "is available"])
    assert re.search(r"needs at least [\d.]+ [GTP]B of memory per rank \(data [\d.]+ [KMGTP]?B", line), line
    assert_unchanged(before, results)


def test_a_size_beyond_the_address_space_of_ulimit_v_is_one_line(results: Path) -> None:
    """2.4 GB of synthetic data fits in the machine's free memory but not under `ulimit -v 2000000`
    (torch alone maps about 0.65 GB): it was a traceback from torch.empty ("can't allocate
    memory"), since only MemAvailable and the cgroup limit were compared."""
    if (available_bytes() or 0) < 4 << 30:
        pytest.skip("needs 4 GB of free memory, so that only the address space refuses it")
    before = snapshot(results)
    outcome = run_module("pfl_dist.train", *TINY_RUN, "data.num_clients=4", "data.samples_per_client=1000",
                         "data.dim=150000", f"run.out_dir={results / 'out'}", "run.name=new", ulimit_v_kib=2_000_000,
                         timeout=300)
    assert_one_line(outcome, code=2, contains=["needs at least 2.41 GB of memory per rank (data 2.4 GB",
                                               "of address space is left to this process (ulimit -v)"])
    assert_unchanged(before, results)


def test_one_sample_per_client_trains_with_unscaled_features(results: Path) -> None:
    """data.samples_per_client=1 was a LinAlgError traceback from eigvalsh: every feature of a
    one-sample client has std 0, so scaling divided 0 by 0. A constant feature keeps scale 1 (what
    StandardScaler does, and what client files get), so L = max ||x||^2 / 4 and the run is finite."""
    before = snapshot(results)
    outcome = run_main(train.main, [*TINY_RUN, "data.samples_per_client=1", f"run.out_dir={results / 'out'}",
                                    "run.name=one"])
    assert outcome.code == 0 and outcome.stderr == "", outcome.describe()
    summary = json.loads((results / "out" / "one" / "summary.json").read_text())
    assert all(math.isfinite(value) for value in summary["final"].values()), summary["final"]
    block = generate_clients(range(2), seed=0, num_clients=2, num_samples=1, dim=4, num_classes=2, R=1.0)
    assert (block.scale == 1).all()
    task = SyntheticTask(load_config(None, [*TINY_RUN, "data.samples_per_client=1"]), client_ids=range(2),
                         device=torch.device("cpu"), dtype=torch.float64)
    assert task.local_smoothness() == pytest.approx(float((block.features ** 2).sum(axis=(1, 2)).max()) / 4)
    after = snapshot(results)
    assert {key: after[key] for key in before} == before  # the finished run next to it is untouched


def test_a_sweep_with_one_point_too_big_is_refused_before_any_run(results: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "out"), grid={"data.dim": [10, 1000000000]})
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep)])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains=["dim=1000000000", "of memory per rank"])
    assert_unchanged(before, results)


def test_a_non_finite_metric_stops_the_run_with_exit_3(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = SyntheticTask.finalize_metrics
    calls = []

    def finalize(self: SyntheticTask, sums: dict, global_model: object) -> dict[str, float]:
        calls.append(1)
        metrics = original(self, sums, global_model)  # type: ignore[arg-type]
        return {**metrics, "ITR": math.inf} if len(calls) == 2 else metrics  # round 1's evaluation

    monkeypatch.setattr(SyntheticTask, "finalize_metrics", finalize)
    before = snapshot(results / "out" / "prev")
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={results / 'out'}", "run.name=new"])
    assert_one_line(outcome, code=3, prefix=ERROR, contains="round 1: metric ITR is inf (non-finite)")
    assert_unchanged(before, results / "out" / "prev")
    records = [json.loads(line) for line in (results / "out" / "new" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0]  # round 1 was never written
    assert not (results / "out" / "new" / "summary.json").exists()


def test_results_are_json_without_nan_or_infinity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json_atomic(tmp_path / "summary.json", {"final": {"ITR": math.inf}})
    assert not (tmp_path / "summary.json").exists()


SWEEP_SIZES = {
    "repetitions_1e8": ({"repetitions": 100_000_000}, "repetitions must be at most 100000"),
    "grid_product": ({"grid": {f"data.{k}": list(range(1, 101)) for k in ("num_clients", "dim", "samples_per_client")}},
                     "sweep: 1000000 points (variants x grid x seeds); at most 100000"),
    "seed_2_63": ({"seeds": [2**63]}, "seeds must be a non-empty list of integers in [0, 2**63 - 1]"),
}


@pytest.mark.parametrize(("fields", "message"), SWEEP_SIZES.values(), ids=SWEEP_SIZES.keys())
def test_sweeps_that_expand_beyond_bounds_are_refused_before_expansion(results: Path, tmp_path: Path,
                                                                       fields: dict, message: str) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "out"), **fields)
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains=message)
    assert_unchanged(before, results)
