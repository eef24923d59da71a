"""A run on another number of processes is another run (pfl_dist/rundir.py): its own run dir, a
completed one of another world size is never reported as this one, a sweep reruns such a point,
and a checkpoint still resumes on another world size (re-sharding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pfl_dist.config import Config, load_config
from pfl_dist.rundir import (
    RunDirError,
    changed_keys,
    check_run_dir,
    config_hash,
    holds_completed_run,
    result_config,
    resume_identity,
    run_config,
)
from pfl_dist.sweep import cli as sweep
from pfl_dist.sweep.spec import load_sweep
from tests.helpers import REPO, TINY, write_sweep
from tests.unit.test_sweep import fake_run

DEFAULT = str(REPO / "configs" / "default.yaml")


def config_on(world_size: int, *overrides: str) -> Config:
    cfg = load_config(DEFAULT, list(overrides))
    cfg.set_world_size(world_size)
    return cfg


def test_the_same_config_on_one_and_two_processes_has_two_run_dirs(tmp_path: Path) -> None:
    # Prepare
    one, two = (config_on(w, f"run.out_dir={tmp_path}") for w in (1, 2))
    # Execute / Assert: two identities, two auto run dirs, the difference named in words
    assert one.to_dict() == two.to_dict()
    assert config_hash(one.identity()) != config_hash(two.identity())
    assert one.run_dir != two.run_dir and one.run_dir.parent == two.run_dir.parent
    assert changed_keys(result_config(one.identity()), result_config(two.identity())) == [
        "world size was 1, now 2"]
    # ... while a checkpoint of one resumes the other (re-sharded): it is checked without it
    assert resume_identity(one.identity()) == resume_identity(two.identity())


def test_a_completed_run_on_one_process_is_not_this_run_on_two(tmp_path: Path) -> None:
    # Prepare: a finished 1-process run in a named run dir (what pfl_dist.train wrote)
    from pfl_dist.train import run

    one = config_on(1, f"run.out_dir={tmp_path}", "run.name=fixed", *(f"{k}={v}" for k, v in TINY.items()))
    run(one)
    two = config_on(2, f"run.out_dir={tmp_path}", "run.name=fixed", *(f"{k}={v}" for k, v in TINY.items()))
    # Execute / Assert: complete for one process, refused naming the world size for two
    assert holds_completed_run(one.run_dir, one.identity())
    assert not holds_completed_run(two.run_dir, two.identity())
    with pytest.raises(RunDirError, match=r"holds a completed run of another config \(world size was 1, now 2\)"):
        check_run_dir(two)


def test_a_sweep_reruns_a_point_of_another_world_size_and_names_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a point finished on 2 ranks per job; the sweep now runs 1 rank per job
    path = write_sweep(tmp_path / "sweep.yaml", overrides=TINY, grid={"algorithm.lam": [0.1, 0.5]},
                       launch={"nproc_per_node": 1})
    points = load_sweep(path).points
    fake_run(points[0].cfg.run_dir, config=points[0].cfg.to_dict())  # its summary says world_size 2
    # Execute
    changes = sweep.point_changes(points[0])
    rows = sweep.collect(load_sweep(path))
    # Assert: changed (rerun, kept under replaced/ with this reason), and no row of the 2-rank run
    assert changes == ["world size was 2, now 1"]
    assert rows == []
    sweep.set_aside(load_sweep(path), points[0], f"config changed ({sweep.describe_changes(changes)})")
    assert "config changed (world size was 2, now 1); rerunning it, the old run is kept in" in capsys.readouterr().out


def test_an_unfinished_run_has_the_world_size_of_its_newest_checkpoint(tmp_path: Path) -> None:
    # Prepare: a run that started (config.yaml) on 2 ranks and checkpointed rounds 2 and 4
    cfg = config_on(1, f"run.out_dir={tmp_path}", "run.name=x")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert changed_keys(result_config(run_config(cfg.run_dir) or {}), result_config(cfg.identity())) == []
    for round_num, world_size in ((2, 4), (4, 2)):
        folder = cfg.run_dir / "ckpt" / f"round_{round_num:06d}"
        folder.mkdir(parents=True)
        for rank in range(world_size):
            (folder / f"shard_{rank:05d}_of_{world_size:05d}.json").write_text("{}")
    # Execute
    saved = run_config(cfg.run_dir)
    # Assert: no checkpoint, no world size to differ by; with checkpoints, the newest one's
    assert saved is not None and saved["launch"] == {"world_size": 2}
    assert changed_keys(result_config(saved), result_config(cfg.identity())) == ["world size was 2, now 1"]
