"""The data-kind registry (pfl_dist/tasks/__init__.py `TASKS`) carries each kind's behaviour: the
Task that serves it, the keys it does not read, its memory estimate and the files of the user's
that enter the run identity. Every name an entry gives resolves to what it says, built-ins and the
plug-in entry alike (what each estimate and file list computes is checked against the real tasks
in tests/hostile/test_resources.py and tests/unit/test_inputs.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from pfl_dist import inputs
from pfl_dist.config import load_config
from pfl_dist.resources import estimate_rank_bytes
from pfl_dist.tasks import TASKS, entry_function, task_entry
from pfl_dist.tasks.base import Task

KINDS = [*sorted(TASKS), "my_dataset:blobs"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_entry_names_a_task_an_estimate_and_its_files_that_exist(kind: str) -> None:
    entry = task_entry(kind)
    task_class = entry_function(entry.target)
    assert list(inspect.signature(task_class).parameters) == list(inspect.signature(Task).parameters)
    methods = [name for name, value in vars(Task).items() if inspect.isfunction(value) and not name.startswith("_")]
    assert methods and all(callable(getattr(task_class, name, None)) for name in methods)
    if entry.memory is not None:
        assert list(inspect.signature(entry_function(entry.memory)).parameters) == ["cfg", "blocks", "value"]
    if entry.input_files is not None:
        assert list(inspect.signature(entry_function(entry.input_files)).parameters) == ["root", "num_clients"]
        assert "data.data_dir" not in entry.unused_keys  # a kind whose files count reads the folder
    assert (entry.memory is None) == (entry.factory is not None)  # only a user's dataset has no estimate


def test_data_dir_enters_the_identity_exactly_for_the_kinds_whose_entry_lists_files(tmp_path: Path) -> None:
    for kind in TASKS:
        config = {"data": {"kind": kind, "data_dir": str(tmp_path), "num_clients": 2}}
        assert ("data.data_dir" in inputs.input_keys(config)) == (TASKS[kind].input_files is not None)


def test_a_user_dataset_has_no_estimate_and_is_never_refused() -> None:
    cfg = load_config(None, ["data.kind=my_dataset:blobs", "data.num_clients=4"])
    assert estimate_rank_bytes(cfg, world_size=2) == (0, 0)
