"""The sweep refuses an interpreter that cannot run its jobs; printed commands name real programs."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pfl_dist import interpreter
from pfl_dist.sweep import cli
from tests.helpers import REPO, write_sweep


def test_python_without_site_packages_gets_one_line(tmp_path: Path) -> None:
    """`python -S` sees none of the venv's packages (not even PyYAML, which the driver imports):
    the module entry point must say which interpreter to use before importing anything else."""
    sweep = write_sweep(tmp_path / "s.yaml", base=str(REPO / "configs" / "default.yaml"))
    result = subprocess.run([sys.executable, "-S", "-m", "pfl_dist.sweep", str(sweep)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pfl_dist.sweep: error: ") and "no module torch" in lines[0]
    assert ".venv/bin/python" in lines[0] or "make install" in lines[0]
    assert not (tmp_path / "out").exists()


def test_main_checks_before_loading_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(interpreter.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    sweep = write_sweep(tmp_path / "s.yaml")
    assert cli.main([str(sweep), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "(no module torch)" in captured.err


def test_tool_command_names_the_script_beside_the_interpreter(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").touch()
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert interpreter.tool_command("tensorboard", module="tensorboard.main") == "env/bin/python -m tensorboard.main"
    (bin_dir / "tensorboard").touch()
    assert interpreter.tool_command("tensorboard", module="tensorboard.main") == "env/bin/tensorboard"
    monkeypatch.chdir(REPO)  # outside the working directory: absolute
    assert interpreter.tool_command("tensorboard", module="tensorboard.main") == str(bin_dir / "tensorboard")


def test_printed_tensorboard_command_runs_in_a_fresh_shell() -> None:
    """What print_final and the sweep print: its program exists (no activated venv needed)."""
    program = shlex.split(interpreter.tool_command("tensorboard", module="tensorboard.main"))[0]
    assert Path(program).is_file() and os.access(program, os.X_OK)
    assert Path(os.path.abspath(program)).parent == Path(os.path.abspath(sys.executable)).parent


def test_the_launcher_checks_its_interpreter_before_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from pfl_dist import launch

    real = importlib.util.find_spec
    monkeypatch.setattr(interpreter.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setattr(launch, "run_torchrun", lambda command, env, **_: pytest.fail("torchrun started"))
    assert launch.main(["--nproc-per-node=2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "(no module torch)" in err and "pfl_dist.launch" in err
