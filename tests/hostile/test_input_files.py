"""Edited input files (pfl_dist/inputs.py): a rerun after editing a client's CSV or the init model
is never "already complete" with the old numbers. With run.name=auto it trains into a new run dir
and leaves the old one as it was; a named run dir is refused in one line naming what changed; a
checkpoint of the old contents is not resumed. Unchanged files stay "already complete". All
in-process (`main(argv)`), on the FedCLUP authors' 3-client CSV sample."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from pfl_dist import train
from tests.helpers import REPO
from tests.hostile.hostile import assert_one_line, assert_unchanged, run_main, snapshot
from tests.unit.test_inputs import edit_csv

SAMPLE = REPO / "tests" / "data" / "fedclup_csv_sample"


def csv_run(data: Path, out: Path, *extra: str) -> list[str]:
    return ["data.kind=client_files", f"data.data_dir={data}", "data.num_clients=3", "data.dim=10",
            "data.num_classes=2", "train.num_rounds=3", "train.eval_every=1", "algorithm.num_local_steps=3",
            f"run.out_dir={out}", *extra]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def summary(run_dir: Path) -> dict:
    return dict(json.loads((run_dir / "summary.json").read_text()))


def test_an_edited_csv_trains_a_new_auto_run_dir_and_leaves_the_old_one(tmp_path: Path) -> None:
    data, out = shutil.copytree(SAMPLE, tmp_path / "data"), tmp_path / "out"
    first = run_main(train.main, csv_run(data, out))
    assert first.code == 0, first.describe()
    [old_dir] = run_dirs(out)
    before = snapshot(old_dir)
    again = run_main(train.main, csv_run(data, out))  # unchanged files: nothing is retrained
    assert again.code == 0 and "already complete" in again.stdout and "round " not in again.stdout
    # Execute
    edit_csv(data / "2_client_data.csv")
    edited = run_main(train.main, csv_run(data, out))
    # Assert: trained into another run dir; the old one is byte-identical
    assert edited.code == 0, edited.describe()
    assert "already complete" not in edited.stdout and "round    3/3" in edited.stdout
    assert_unchanged(before, old_dir)
    [new_dir] = [d for d in run_dirs(out) if d != old_dir]
    old, new = summary(old_dir), summary(new_dir)
    assert old["config"] == new["config"]  # the same config keys ...
    assert old["inputs"]["data.data_dir"] != new["inputs"]["data.data_dir"]  # ... other contents
    assert old["final"] != new["final"]  # and the new numbers
    recorded = json.loads((new_dir / "inputs.json").read_text())["data.data_dir"]
    assert recorded["files"]["2_client_data.csv"].split(" ")[1] == \
        hashlib.sha256((data / "2_client_data.csv").read_bytes()).hexdigest()
    rerun = run_main(train.main, csv_run(data, out))
    assert "already complete" in rerun.stdout and str(new_dir) in rerun.stdout


def test_an_edited_csv_in_a_named_run_dir_is_refused_naming_the_file(tmp_path: Path) -> None:
    data, out = shutil.copytree(SAMPLE, tmp_path / "data"), tmp_path / "out"
    assert run_main(train.main, csv_run(data, out, "run.name=run")).code == 0
    before, old = snapshot(out / "run"), summary(out / "run")
    edit_csv(data / "3_client_data.csv")
    outcome = run_main(train.main, csv_run(data, out, "run.name=run"))
    assert_one_line(outcome, code=2, contains=["holds a completed run of another config",
                                               "data.data_dir contents changed in 3_client_data.csv (sha256 ",
                                               "run.name=", "--overwrite"])
    assert_unchanged(before, out / "run")
    replaced = run_main(train.main, [*csv_run(data, out, "run.name=run"), "--overwrite"])
    assert replaced.code == 0, replaced.describe()
    new = summary(out / "run")
    assert new["final"] != old["final"] and new["inputs"] != old["inputs"]
    recorded = json.loads((out / "run" / "inputs.json").read_text())
    assert new["inputs"]["data.data_dir"] == recorded["data.data_dir"]["sha256"]


def test_an_edited_init_file(tmp_path: Path) -> None:
    data, out = shutil.copytree(SAMPLE, tmp_path / "data"), tmp_path / "out"
    init = tmp_path / "init.npy"
    np.save(init, np.full((10, 2), 0.1))
    old_sha = hashlib.sha256(init.read_bytes()).hexdigest()
    auto = csv_run(data, out, f"model.init_file={init}")
    named = csv_run(data, out, f"model.init_file={init}", "run.name=named")
    assert run_main(train.main, auto).code == 0 and run_main(train.main, named).code == 0
    before = snapshot(out)
    assert "already complete" in run_main(train.main, auto).stdout
    assert "already complete" in run_main(train.main, named).stdout
    assert_unchanged(before, out)
    # Execute: another initial model in the same file
    np.save(init, np.full((10, 2), -0.2))
    new_sha = hashlib.sha256(init.read_bytes()).hexdigest()
    refused = run_main(train.main, named)
    retrained = run_main(train.main, auto)
    # Assert
    assert_one_line(refused, code=2, contains=f"model.init_file contents changed (sha256 {old_sha[:12]}.. -> "
                                              f"{new_sha[:12]}..)")
    assert retrained.code == 0 and "already complete" not in retrained.stdout, retrained.describe()
    for name, entry in before.items():  # every old file is as it was
        assert snapshot(out).get(name) == entry, name
    new_dirs = [d for d in run_dirs(out) if str(d.relative_to(out)) not in before]
    assert [summary(d)["inputs"]["model.init_file"] for d in new_dirs] == [new_sha]


def test_a_checkpoint_of_other_contents_is_not_resumed(tmp_path: Path) -> None:
    data, out = shutil.copytree(SAMPLE, tmp_path / "data"), tmp_path / "out"
    args = csv_run(data, out, "run.name=run", "checkpoint.every=1")
    assert run_main(train.main, args).code == 0
    (out / "run" / "summary.json").unlink()  # as if stopped after its round-2 checkpoint
    resumed = run_main(train.main, args)  # unchanged files: resumes
    assert resumed.code == 0 and "resume: round 2/3" in resumed.stdout, resumed.describe()
    (out / "run" / "summary.json").unlink()
    edit_csv(data / "1_client_data.csv")
    outcome = run_main(train.main, args)
    assert_one_line(outcome, code=2, contains=["cannot resume", "written with another config",
                                               "data.data_dir contents changed (sha256 "])
    assert not (out / "run" / "summary.json").exists()
