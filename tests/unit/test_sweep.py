"""Sweep files without any process: grid expansion, naming, validation errors, resume selection,
results.csv collection and job batching."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pfl_dist.config import apply_overrides
from pfl_dist.errors import ConfigError
from pfl_dist.sweep import cli as sweep
from pfl_dist.sweep.jobs import Estimator, ProgressTail, batches, failure_reason, point_command, point_cost
from pfl_dist.sweep.results import find_runs, write_results_csv
from pfl_dist.sweep.spec import Point, load_sweep, yaml_value
from tests.helpers import REPO, write_sweep


def fake_run(run_dir: Path, *, lam: float = 0.5, final_itr: float = 1.0, config: dict[str, Any] | None = None) -> None:
    """A finished run dir with the engine's summary/metrics shape (no training); `config` is the
    summary's config (a point's cfg.to_dict() makes it that point's run)."""
    run_dir.mkdir(parents=True)
    comm = {"payload_bytes": 100, "wire_bytes_model": 50, "uplink_bytes": 80, "downlink_bytes": 80,
            "num_collectives": 2, "wire_bytes_measured": None}
    config = config or {"run": {"seed": 0},
                        "data": {"kind": "synthetic", "R": 1.0, "num_clients": 4, "classes_per_client": 2},
                        "algorithm": {"name": "fedclup", "lam": lam, "sample_fraction": 1.0, "num_local_steps": 5},
                        "train": {"num_rounds": 2}}
    summary = {"config": config, "world_size": 2, "algorithm": {"lam": lam}, "final": {"ITR": final_itr},
               "comm": comm, "comm_telemetry": comm, "time": {"wall_s": 1.0, "round_s_median": 0.1}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


# --- expansion -------------------------------------------------------------------------------


def test_variants_cross_grid_and_seeds_with_deterministic_names(tmp_path: Path) -> None:
    # Prepare
    path = write_sweep(tmp_path / "sweep.yaml", overrides={"data.num_clients": 6, "train.num_rounds": 3},
                       variants={"fedavg": {"algorithm.name": "fedavg"},
                                 "clup": {"algorithm.name": "fedclup", "algorithm.lam": [0.1, 2]}},
                       grid={"data.R": [0.5, 3.0]}, repetitions=2)
    # Execute
    points = load_sweep(path).points
    # Assert
    assert len(points) == (1 + 2) * 2 * 2
    assert [p.name for p in points[:4]] == ["fedavg__R=0.5__seed=0", "fedavg__R=0.5__seed=1",
                                            "fedavg__R=3.0__seed=0", "fedavg__R=3.0__seed=1"]
    clup = next(p for p in points if p.name == "clup__lam=2__R=3.0__seed=1")
    assert (clup.cfg.algorithm.lam, clup.cfg.data.R, clup.cfg.run.seed) == (2.0, 3.0, 1)
    assert clup.cfg.data.num_clients == 6 and clup.cfg.train.num_rounds == 3  # overrides apply
    assert clup.cfg.run.name == clup.name and clup.cfg.run.out_dir == str(tmp_path / "out")
    assert clup.values == {"algorithm.lam": 2, "data.R": 3.0}
    assert [p.name for p in load_sweep(path).points] == [p.name for p in points]  # deterministic


def test_grid_alone_is_a_cartesian_product(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml",
                       grid={"algorithm.lam": [0.1, 0.5, 1.0], "algorithm.num_local_steps": [5, 10]})
    points = load_sweep(path).points
    assert len(points) == 6
    assert {(p.cfg.algorithm.lam, p.cfg.algorithm.num_local_steps) for p in points} == {
        (lam, k) for lam in (0.1, 0.5, 1.0) for k in (5, 10)}
    assert points[0].name == "lam=0.1__num_local_steps=5__seed=0"


def test_keys_sharing_a_last_part_keep_their_section(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"run.device": ["cpu"], "comm.backend": ["gloo"], "data.R": [1.0]})
    names = {p.name for p in load_sweep(path).points}
    assert names == {"device=cpu__backend=gloo__R=1.0__seed=0"}


@pytest.mark.parametrize("value", [0.1, 1e-05, 3, "auto", "0.5", True, None, "runs/x y"])
def test_override_text_round_trips_through_yaml(value: Any) -> None:
    assert yaml.safe_load(yaml_value(value)) == value


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"gird": {}}, "unknown sweep key 'gird' (did you mean 'grid'?)"),
    ({"grid": {"data.R": 1.0}}, "grid.data.R must be a list of values"),
    ({"grid": {"data.R": []}}, "grid.data.R must not be empty"),
    ({"grid": {"dat.R": [1]}}, "unknown config section in 'dat.R' (did you mean 'data'?)"),
    ({"grid": {"run.name": ["a"]}}, "run.name is set by the sweep"),
    ({"grid": {"R": [1]}}, "key 'R' must look like section.key"),
    ({"variants": {"a": {"data.R": 1}}, "grid": {"data.R": [1, 2]}}, "variants.a sets data.R, which the grid"),
    ({"variants": {"a b": {}}}, "must be a short word"),
    ({"seeds": [0], "repetitions": 2}, "either seeds or repetitions"),
    ({"seeds": [-1]}, "seeds must be a non-empty list of integers in [0, 2**63 - 1]"),
    ({"launch": {"nproc_per_node": 0}}, "launch.nproc_per_node must be >= 1"),
    ({"launch": {"mode": "threads"}}, "launch.mode must be 'per_point' or 'in_job'"),
    ({"launch": {"jobs": "2"}}, "launch.jobs must be int"),
    ({"launch": {"torchrun_args": ["--nproc-per-node=4"]}}, "must not set --nproc-per-node"),
    ({"launch": {"jobs": 2, "torchrun_args": ["--rdzv-endpoint=h:1"]}}, "needs a free port per job"),
    ({"launch": {"nproc_per_nod": 2}}, "'launch.nproc_per_nod' (did you mean 'launch.nproc_per_node'?)"),
    ({"base": "missing.yaml"}, "config file not found"),
])
def test_structural_errors_are_one_line(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", **fields)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_point_config_is_validated_and_named(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.5, -1.0]})
    with pytest.raises(ConfigError, match=r"^sweep point lam=-1.0__seed=0: algorithm.lam must be >= 0"):
        load_sweep(path)
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lamda": [0.5]})
    with pytest.raises(ConfigError, match="unknown config key 'algorithm.lamda'"):
        load_sweep(path)
    path = write_sweep(tmp_path / "sweep.yaml", overrides={"data.num_clients": 1}, grid={"data.R": [1.0]})
    with pytest.raises(ConfigError, match="data.num_clients.*must be >= the world size"):
        load_sweep(path)  # 1 client cannot fill 2 ranks


def test_cli_reports_errors_with_exit_code_2_and_launches_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.5, -1.0]})
    assert sweep.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pfl_dist.sweep: error: sweep point lam=-1.0__seed=0:") and "\n" not in err
    assert not (tmp_path / "out").exists()


# --- resume selection, results, batching ------------------------------------------------------


def test_dry_run_skips_complete_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1, 0.5, 1.0]})
    point = next(p for p in load_sweep(path).points if p.name == "lam=0.5__seed=0")
    fake_run(tmp_path / "out" / "lam=0.5__seed=0", config=point.cfg.to_dict())
    (tmp_path / "out" / "lam=1.0__seed=0").mkdir()  # started but never finished: still pending
    assert sweep.main([str(path), "--dry-run", "--mode", "per_point"]) == 0
    out = capsys.readouterr().out
    assert "done    lam=0.5__seed=0" in out and "pending lam=0.1__seed=0" in out and "pending lam=1.0__seed=0" in out
    assert out.count("$ ") == 2 and "3 points valid, 2 to run, 1 complete" in out


def test_a_point_whose_config_changed_is_pending_and_names_the_keys(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1, 0.5]},
                       overrides={"train.num_rounds": 7})
    for point in load_sweep(path).points:
        fake_run(point.cfg.run_dir, config=point.cfg.to_dict())
    write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1, 0.5]}, overrides={"train.num_rounds": 9})
    assert sweep.main([str(path), "--dry-run", "--mode", "per_point"]) == 0
    out = capsys.readouterr().out
    assert "pending lam=0.1__seed=0  (config changed: train.num_rounds was 7, now 9)" in out
    assert "2 points valid, 2 to run, 0 complete" in out
    # results.csv keeps no row of the old config, and --force reruns unchanged points too
    assert sweep.collect(load_sweep(path)) == []
    write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1, 0.5]}, overrides={"train.num_rounds": 7})
    assert [row["name"] for row in sweep.collect(load_sweep(path))] == ["lam=0.1__seed=0", "lam=0.5__seed=0"]
    assert sweep.main([str(path), "--dry-run", "--force", "--only", "lam=0.1"]) == 0
    assert "1 to run, 1 complete" in capsys.readouterr().out


def test_results_csv_has_one_row_per_finished_point(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for lam in (0.1, 0.5):
        fake_run(out / f"lam={lam}__seed=0", lam=lam)
    fake_run(out / "stray_from_an_old_sweep")
    names = ["lam=0.1__seed=0", "lam=0.5__seed=0", "lam=1.0__seed=0"]
    for _ in range(2):  # rebuilding (as after a resume) must not duplicate rows
        write_results_csv(out / "results.csv", find_runs(out, names), varied=["algorithm.lam"])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names[:2]
    assert [r["algorithm.lam"] for r in rows] == ["0.1", "0.5"]
    assert rows[0]["label"] == "FedCLUP λ=0.1" and rows[0]["fl_bytes"] == "160" and rows[0]["eval/ITR"] == "1.0"
    assert [r.name for r in find_runs(out)] == names[:2]  # results.csv selects the sweep's runs


def test_in_job_batches_balance_cost_and_keep_order(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"train.num_rounds": [40, 10, 11, 12, 13]})
    points = list(load_sweep(path).points)
    two = batches(points, jobs=2, mode="in_job")
    assert [[p.cfg.train.num_rounds for p in b] for b in two] == [[40], [10, 11, 12, 13]]
    assert batches(points, jobs=8, mode="in_job")[0] == [points[0]]
    assert all(len(b) == 1 for b in batches(points, jobs=1, mode="per_point"))
    command = point_command(load_sweep(path), points[0])
    assert command[3:6] == ["--standalone", "--nproc-per-node=2", "-m"] and f"run.name={points[0].name}" in command


def test_failure_reason_names_the_worker_error(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    stderr.write_text("noise\npfl_dist: error: round 2: client 1 diverged (non-finite local model)\n"
                      "Traceback ...\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
                      "  exitcode  : 3 (pid: 12)\n=====\n")
    reason = failure_reason(1, stderr)
    assert reason == "exit 1 (worker exit 3): pfl_dist: error: round 2: client 1 diverged (non-finite local model)"


def test_failure_reason_prefers_the_worker_exception_over_torchrun_summary(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    stderr.write_text("[rank0]: Traceback (most recent call last):\n[rank0]: ImportError: cannot import name 'x'\n"
                      "Traceback (most recent call last):\n"
                      "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n  exitcode  : 1 (pid: 9)\n")
    assert failure_reason(1, stderr) == "exit 1 (worker exit 1): ImportError: cannot import name 'x'"


# --- overrides given at the start -------------------------------------------------------------


def test_given_overrides_apply_to_every_point_over_variant_values(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", overrides={"train.num_rounds": 30},
                       variants={"fedavg": {"algorithm.name": "fedavg", "train.num_rounds": 40},
                                 "clup": {"algorithm.name": "fedclup", "algorithm.lam": [0.1, 2]}},
                       grid={"data.R": [0.5, 3.0]})
    plain = load_sweep(path).points
    points = load_sweep(path, overrides=["train.num_rounds=2", "data.samples_per_client=20"]).points
    assert [p.name for p in points] == [p.name for p in plain]  # the names stay those of the varied values
    assert {(p.cfg.train.num_rounds, p.cfg.data.samples_per_client) for p in points} == {(2, 20)}
    assert {p.cfg.train.num_rounds for p in plain} == {30, 40}
    mapped = load_sweep(path, overrides={"train.num_rounds": 2, "data.samples_per_client": 20}).points
    assert [p.cfg for p in mapped] == [p.cfg for p in points]  # a mapping is the same as the texts


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.R=1.0"], "override data.R: the sweep varies it (grid or variant list); edit the sweep file's list "
                     "instead, or --only to run some of its values"),
    (["algorithm.lam=1.0"], "override algorithm.lam: the sweep varies it"),
    (["run.seed=3"], "override: run.seed is set by the sweep (use seeds/repetitions, out_dir)"),
    (["run.name=x"], "override: run.name is set by the sweep"),
    (["train.num_rounds"], "override 'train.num_rounds' must look like section.key=value"),
    (["trian.num_rounds=2"], "override: unknown config section in 'trian.num_rounds' (did you mean 'train'?)"),
    (["train.num_round=2"], "unknown config key 'train.num_round' (did you mean 'train.num_rounds'?)"),
    (["train.num_rounds=many"], "train.num_rounds must be int, got 'many'"),
])
def test_given_overrides_are_checked_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 overrides: list[str], message: str) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", variants={"clup": {"algorithm.name": "fedclup",
                                                                   "algorithm.lam": [0.1, 2]}},
                       grid={"data.R": [0.5, 3.0]})
    assert sweep.main([str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pfl_dist.sweep: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_dry_run_with_overrides_shows_them_in_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", grid={"algorithm.lam": [0.1, 0.5]},
                       launch={"nproc_per_node": 2, "mode": "per_point"})
    assert sweep.main([str(path), "train.num_rounds=3", "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and all("train.num_rounds=3" in line for line in commands)


def test_python_sweep_run_takes_a_mapping_and_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pfl_dist.sweep

    spec = {"base": str(REPO / "configs" / "default.yaml"), "out_dir": str(tmp_path / "out"),
            "grid": {"algorithm.lam": [0.1, 0.5]}}
    outcome = pfl_dist.sweep.run(spec, {"train.num_rounds": 3}, dry_run=True, nproc_per_node=2)
    assert (outcome.status, outcome.exit_code, outcome.out_dir) == ("planned", 0, tmp_path / "out")
    assert "2 points valid, 2 to run, 0 complete" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="^override algorithm.lam: the sweep varies it"):
        pfl_dist.sweep.run(spec, {"algorithm.lam": 1.0}, dry_run=True)
    with pytest.raises(ConfigError, match="^--only is not a valid regular expression"):
        pfl_dist.sweep.run(spec, only="(", dry_run=True)


# --- the ETA ---------------------------------------------------------------------------------


def eta_point(name: str, *overrides: str) -> Point:
    cfg = apply_overrides({}, overrides)
    cfg.set_world_size(2)
    return Point(name=name, variant=None, values={}, seed=0, overrides=(), cfg=cfg)


def test_eta_times_each_kind_of_point_on_its_own() -> None:
    """configs/sweeps/codecs.yaml's mix: CNN points of few cost units that take a minute, synthetic
    points of 1500x the units that take seconds. One rate for all said 30,267 minutes."""
    cnn = ("data.kind=mnist", "model.kind=cnn", "data.num_clients=10", "algorithm.batch_size=16",
           "algorithm.local_epochs=1", "train.num_rounds=6")
    synthetic = ("data.num_clients=1000", "algorithm.num_local_steps=150", "algorithm.sample_fraction=0.1",
                 "train.num_rounds=60")
    cnns = [eta_point(f"cnn{i}", *cnn) for i in range(3)]
    synthetics = [eta_point(f"syn{i}", *synthetic) for i in range(4)]
    assert point_cost(synthetics[0]) / point_cost(cnns[0]) == 1500  # the units are not comparable across kinds
    estimator = Estimator([*cnns, *synthetics], overhead=0.0, jobs=1)
    assert estimator.text() == "ETA 0s + 7 point(s) of kinds not yet timed"
    estimator.done(cnns[0], 60.0)
    # the old estimate: 60 s / the CNN's units x everything left = 60 x (2 + 4 x 1500) s, 100 hours
    assert estimator.eta() == (120.0, 4) and estimator.text() == "ETA 2m00s + 4 point(s) of kinds not yet timed"
    estimator.done(synthetics[0], 5.0)
    assert estimator.eta() == (120.0 + 15.0, 0) and estimator.text() == "ETA 2m15s"
    estimator.forget(cnns[1])  # failed: no longer waited for
    estimator.done(synthetics[1], 7.0)  # the synthetic rate is now 12 s / 2 points
    assert estimator.eta() == (60.0 + 2 * 6.0, 0)


def test_eta_shares_the_remaining_time_among_concurrent_jobs() -> None:
    points = [eta_point(f"p{i}", "train.num_rounds=10") for i in range(5)]
    estimator = Estimator(points, overhead=point_cost(points[0]), jobs=2)  # a start-up as costly as a point
    estimator.done(points[0], 8.0)
    assert estimator.eta() == (4 * 8.0 / 2, 0)
    for point in points[1:4]:
        estimator.done(point, 8.0)
    assert estimator.eta() == (8.0, 0)  # one point left: one job runs it


# --- progress inside a running point ---------------------------------------------------------


def test_progress_tail_shows_the_newest_round_line_at_most_every_interval(tmp_path: Path) -> None:
    log = tmp_path / "job-0.out"
    tail = ProgressTail(log, now=0.0, every_s=10.0)
    assert tail.poll(1.0) is None  # no log yet
    log.write_text("prepared run dir\nround    0/60 | eval/ITR 0.5 | train wire 0 B | 0.0 ms/round\n")
    assert tail.poll(5.0) is None  # the point started 5 s ago: short points print nothing extra
    with open(log, "a") as f:
        f.write("[rank0]: round    5/60 | eval/ITR 0.25 | train wire 1 KB | 3.0 ms/round\nround   10/6")
    assert tail.poll(10.0) == "round    5/60 | eval/ITR 0.25 | train wire 1 KB | 3.0 ms/round"
    with open(log, "a") as f:
        f.write("0 | eval/ITR 0.125 | train wire 2 KB | 3.0 ms/round\n")  # the half-written line, finished
    assert tail.poll(15.0) is None  # shown 5 s ago
    assert tail.poll(20.0) == "round   10/60 | eval/ITR 0.125 | train wire 2 KB | 3.0 ms/round"
    assert tail.poll(40.0) is None  # nothing new
    with open(log, "a") as f:
        f.write("round   60/60 | eval/ITR 0.1 | train wire 9 KB | 3.0 ms/round\nsweep point done: a\n")
    tail.restart(41.0)  # the next point of the batch: the last one's lines are not shown as its
    assert tail.poll(60.0) is None
