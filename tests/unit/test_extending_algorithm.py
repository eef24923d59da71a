"""docs/EXTENDING.md, "## An algorithm": every example in it runs. The plug-in code is
examples/custom_algorithm.py's; the documented plug-in commands train (shrunk to 2 rounds of 2
clients) with exact bytes; the documented built-in (the example copied into pfl_dist/algorithms/)
trains in a copy of the package with no other file changed, and the generic tests every built-in
gets hold for it."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pfl_dist.algorithms import ALGORITHMS, Algorithm
from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.methods import METHODS, MethodInfo, read_builtins
from tests.helpers import REPO, extending_blocks
from tests.unit import test_methods as method_tests
from tests.unit import test_style as style_tests

SHRINK = ("data.num_clients=2", "train.num_rounds=2", "train.eval_every=2")


def without_docstrings(source: str) -> str:
    """The module's AST without its docstrings (and comments): the code itself."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body and isinstance(
                node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) and isinstance(
                node.body[0].value.value, str):
            node.body = node.body[1:]
    return ast.dump(tree)


def run(args: list[str], *, cwd: Path, pythonpath: str | None) -> subprocess.CompletedProcess[str]:
    """`args` in `cwd` with exactly `pythonpath` as PYTHONPATH (none: unset)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(TORCHRUN_ENV, **({"PYTHONPATH": pythonpath} if pythonpath is not None else {}))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def python_command(line: str) -> tuple[str | None, list[str]]:
    """'[PYTHONPATH=dir] python -m pfl_dist.train ARGS' -> (dir or None, ARGS)."""
    words = shlex.split(line)
    pythonpath = words.pop(0).split("=", 1)[1] if words[0].startswith("PYTHONPATH=") else None
    assert words[:3] == ["python", "-m", "pfl_dist.train"], line
    return pythonpath, words[3:]


def train_documented_plugin(line: str, shrink: tuple[str, ...], out_dir: Path) -> tuple[list[str], Path]:
    """A documented 'PYTHONPATH=examples python -m pfl_dist.train ARGS' line run from the repo,
    shrunk by `shrink` and written under `out_dir`: (ARGS, the one run dir it made)."""
    pythonpath, args = python_command(line)
    assert pythonpath == "examples"
    done = run([sys.executable, "-m", "pfl_dist.train", *args, *shrink, f"run.out_dir={out_dir}"], cwd=REPO,
               pythonpath=str(REPO / "examples"))
    assert done.returncode == 0, done.stderr
    (run_dir,) = out_dir.iterdir()
    return args, run_dir


# --- as a plug-in ----------------------------------------------------------------------------------


def test_the_documented_plugin_is_examples_custom_algorithm() -> None:
    (code,) = extending_blocks("An algorithm", "python", "As a plug-in")
    assert without_docstrings(code) == without_docstrings((REPO / "examples" / "custom_algorithm.py").read_text())


@pytest.mark.parametrize("line", extending_blocks("An algorithm", "sh", "As a plug-in")[0].strip().splitlines())
def test_the_documented_plugin_commands_train_with_exact_bytes(line: str, tmp_path: Path) -> None:
    # Execute: the command as documented, from the repo, shrunk and written under tmp_path
    args, run_dir = train_documented_plugin(line, SHRINK, tmp_path)
    # Assert: the run dir as documented; the plug-in's name and params; with the dense codec
    # uplink = messages x the model's parameter bytes
    assert re.fullmatch(r"custom_algorithm\.FedAvgM-[0-9a-f]{8}", run_dir.name)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"]["name"] == "custom_algorithm:FedAvgM"
    given = dict(arg.split("=", 1) for arg in args)
    assert summary["algorithm"]["momentum"] == float(given["algorithm.params.momentum"])
    assert summary["algorithm"]["server_lr"] == float(given.get("algorithm.params.server_lr", 1.0))
    if "comm.codec" not in given:
        final = torch.load(run_dir / "final" / "global.pt", weights_only=True)
        param_bytes = 4 * sum(t.numel() for t in final.values())
        messages = summary["participation"]["num_local_updates"]
        assert messages == 4 and summary["comm"]["uplink_bytes"] == messages * param_bytes


# --- as a built-in ---------------------------------------------------------------------------------


def test_the_documented_builtin_trains_in_a_copy_of_the_package_with_no_other_change(tmp_path: Path) -> None:
    # Prepare: a copy of pfl_dist, and the documented cp into it
    copy_line, train_line = extending_blocks("An algorithm", "sh", "As a built-in")[0].strip().splitlines()
    cp, source, target = shlex.split(copy_line)
    assert cp == "cp" and target.startswith("pfl_dist/algorithms/")
    shutil.copytree(REPO / "pfl_dist", tmp_path / "pfl_dist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / source, tmp_path / target)
    pythonpath, args = python_command(train_line)
    # Execute: the documented command, in the copy (python -m puts the copy first on sys.path)
    done = run([sys.executable, "-m", "pfl_dist.train", *args, *SHRINK, "run.out_dir=runs"], cwd=tmp_path,
               pythonpath=pythonpath)
    # Assert: a built-in named by its info (the repo's package has no fedavgm), its run dir
    # <name>-<hash8>; the copy's registry is the repo's and the new class
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"fedavgm-[0-9a-f]{8}", run_dir.name)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["method"]["name"], summary["method"]["label"]) == ("fedavgm", "FedAvgM")
    assert summary["algorithm"]["momentum"] == 0.9
    methods, where = read_builtins(tmp_path / "pfl_dist" / "algorithms")
    assert {name: info for name, info in methods.items() if name != "fedavgm"} == METHODS
    assert str(where["fedavgm"]) == "pfl_dist.algorithms.momentum:FedAvgM"


@pytest.fixture
def fedavgm_as_builtin(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Algorithm]]:
    """examples/custom_algorithm.py as if it were pfl_dist/algorithms/momentum.py, in the registry
    on both sides as read_builtins and ALGORITHMS would put it."""
    module = types.ModuleType("pfl_dist.algorithms.momentum")
    exec(compile((REPO / "examples" / "custom_algorithm.py").read_text(), "pfl_dist/algorithms/momentum.py",  # noqa: S102
                 "exec"), module.__dict__)
    cls = module.FedAvgM
    assert isinstance(cls.info, MethodInfo) and cls.name == "fedavgm"
    monkeypatch.setitem(METHODS, "fedavgm", cls.info)
    monkeypatch.setitem(ALGORITHMS, "fedavgm", cls)
    yield cls


def test_the_generic_tests_of_a_builtin_hold_for_the_documented_one(fedavgm_as_builtin: type[Algorithm]) -> None:
    # Assert: what tests/unit/test_methods.py and test_style.py check of every built-in, for it
    method_tests.test_a_method_reads_exactly_the_keys_its_table_entry_names("fedavgm", ())
    style_tests.test_the_built_in_methods_are_told_apart_by_colour_and_marker()
    style_tests.test_several_curves_of_a_method_are_shades_of_its_family("fedavgm")
    style_tests.test_any_number_of_curves_of_one_method_are_told_apart("fedavgm")
