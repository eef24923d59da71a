"""docs/EXTENDING.md, "## A dataset": every example in it runs. The dataset is examples/my_dataset.py's
code; the documented commands and the Python call train (shrunk to a few rounds); the documented
registry entry, added as a built-in, works with no other change and the generic test takes it up."""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import pfl_dist.tasks
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.tasks import DATASET_TASK, DATASET_UNUSED_KEYS, TASKS, TaskEntry, build_task
from tests.helpers import REPO, extending_blocks, read_summary, run_cli
from tests.unit.test_dataset_plugin import check_dataset_kind

SHRINK = ("train.num_rounds=3", "train.eval_every=3")


def test_the_documented_dataset_is_examples_my_dataset() -> None:
    (dataset_code, _api_code, _entry_code) = extending_blocks("A dataset", "python")
    assert dataset_code in (REPO / "examples" / "my_dataset.py").read_text()


@pytest.mark.parametrize("line", extending_blocks("A dataset", "sh")[0].strip().splitlines())
def test_the_documented_commands_train(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, python, dash_m, module, *args = shlex.split(line)
    assert (env, python, dash_m, module) == ("PYTHONPATH=examples", "python", "-m", "pfl_dist.train")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "examples"))
    result = run_cli(*args, *SHRINK, f"run.out_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    name = next(arg.split("=", 1)[1] for arg in args if arg.startswith("run.name="))
    summary = read_summary(tmp_path / name)
    assert summary["config"]["data"]["kind"] == "my_dataset:blobs" and summary["config"]["data"]["num_clients"] == 8
    assert summary["final"]["eval/acc_personal"] > 0.25  # 4 classes
    assert summary["comm"]["uplink_bytes"] > 0


def test_the_documented_python_call_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (_dataset_code, api_code, _entry_code) = extending_blocks("A dataset", "python")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(api_code, "EXTENDING.md", "exec"), {})  # noqa: S102 (the repo's own doc)
    finally:
        sys.modules.pop("my_dataset", None)
    summary = read_summary(tmp_path / "runs" / "blobs_api")
    assert summary["config"]["data"]["params"] == {"noise": 3.0}
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(summary["final"]["eval/acc_global"])


@pytest.fixture
def blobs_as_builtin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """examples/my_dataset.py as if it were pfl_dist/data/blobs.py, and the documented entry in TASKS."""
    module = types.ModuleType("pfl_dist.data.blobs")
    exec(compile((REPO / "examples" / "my_dataset.py").read_text(), "pfl_dist/data/blobs.py", "exec"),  # noqa: S102
         module.__dict__)
    monkeypatch.setitem(sys.modules, "pfl_dist.data.blobs", module)
    (_dataset_code, _api_code, entry_code) = extending_blocks("A dataset", "python")
    entries = eval("{" + entry_code + "}", {"TaskEntry": TaskEntry, "DATASET_TASK": DATASET_TASK,  # noqa: S307
                                            "DATASET_UNUSED_KEYS": DATASET_UNUSED_KEYS})
    monkeypatch.setitem(TASKS, "blobs", entries["blobs"])
    yield


def test_the_documented_builtin_entry_is_all_a_builtin_dataset_needs(blobs_as_builtin: None) -> None:
    # Execute: a config of the new kind, and the generic check every dataset entry gets
    cfg = load_config(None, ["data.kind=blobs", "data.num_clients=6", "data.params.num_clients=6"])
    check_dataset_kind("blobs")
    # Assert: its clients are the factory's, and it refuses what it does not read, as the plug-in does
    task = build_task(cfg, client_ids=range(2), device=torch.device("cpu"))
    assert task.train_counts == [60, 60] and task.num_params == 10 * 4 + 4
    assert pfl_dist.tasks.task_entry("blobs").target == pfl_dist.tasks.task_entry("my_dataset:blobs").target
    with pytest.raises(ConfigError, match=r"^data.kind 'blobs' does not use data.R=2.0: remove it from the config$"):
        load_config(None, ["data.kind=blobs", "data.R=2.0"])
    assert cfg.inputs == {}  # pfl_dist's own source: no inputs record


def differing_files(left: Path, right: Path) -> list[str]:
    """The files (relative to `right`) that are new or differ between two trees, __pycache__ left out."""
    def walk(cmp: filecmp.dircmp[str], prefix: str) -> list[str]:
        out = [f"{prefix}{name}" for name in (*cmp.right_only, *cmp.diff_files) if name != "__pycache__"]
        return out + [name for sub, child in cmp.subdirs.items() if sub != "__pycache__"
                      for name in walk(child, f"{prefix}{sub}/")]
    return sorted(walk(filecmp.dircmp(left, right, ignore=["__pycache__"]), ""))


def test_a_builtin_dataset_is_two_files_in_a_copy_of_the_package(tmp_path: Path) -> None:
    # Prepare: a copy of pfl_dist with the documented module and entry, and nothing else
    shutil.copytree(REPO / "pfl_dist", tmp_path / "pfl_dist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "examples" / "my_dataset.py", tmp_path / "pfl_dist" / "data" / "blobs.py")
    registry = tmp_path / "pfl_dist" / "tasks" / "__init__.py"
    (_dataset_code, _api_code, entry_code) = extending_blocks("A dataset", "python")
    opening = "TASKS: dict[str, TaskEntry] = {\n"
    assert registry.read_text().count(opening) == 1
    registry.write_text(registry.read_text().replace(opening, opening + textwrap.indent(entry_code, "    ")))
    # Execute: a run of the new kind in the copy (python -m puts the copy first on sys.path)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pfl_dist.train", "data.kind=blobs", "data.num_clients=4",
                           "data.params.num_clients=4", "train.num_rounds=2", "train.eval_every=2", "run.out_dir=runs",
                           "run.name=blobs"], cwd=tmp_path, env={**env, **TORCHRUN_ENV}, capture_output=True,
                          text=True, timeout=300)
    # Assert: it trained on the factory's data; the copy differs from pfl_dist in exactly 2 files
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "runs" / "blobs" / "summary.json").read_text())
    assert summary["config"]["data"]["kind"] == "blobs" and summary.get("inputs", {}) == {}  # pfl_dist's own code
    assert summary["final"]["eval/acc_personal"] > 0.25
    assert differing_files(REPO / "pfl_dist", tmp_path / "pfl_dist") == ["data/blobs.py", "tasks/__init__.py"]
