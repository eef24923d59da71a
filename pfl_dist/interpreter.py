"""Which Python runs pfl_dist's jobs, and commands a user can paste into a fresh shell.

Torch-free (the sweep driver imports this before anything else). The sweep starts its jobs with
the interpreter it runs under, so that interpreter must have torch and pfl_dist's other
dependencies: checked up front with `importlib.util.find_spec`, which imports nothing.
Printed follow-up commands name the interpreter's own console scripts by path, because a fresh
shell has no virtualenv activated.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

# What a training job imports (the sweep's jobs run `python -m torch.distributed.run -m ...`).
JOB_MODULES = ("torch", "numpy", "yaml", "tensorboard", "pfl_dist")
REPO_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when below it (`.venv/bin/python`), else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolve(): a venv's python is a symlink to the base one
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def python_command() -> str:
    """This interpreter, as a user would type it."""
    return shlex.quote(shown_path(Path(sys.executable)))


def tool_command(script: str, *, module: str) -> str:
    """A console script of this interpreter's environment (e.g. `.venv/bin/tensorboard`), or
    `<python> -m module` when the environment has no such script."""
    beside = Path(sys.executable).with_name(script)
    if beside.is_file():
        return shlex.quote(shown_path(beside))
    return f"{python_command()} -m {module}"


def missing_modules(modules: tuple[str, ...] = JOB_MODULES) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def interpreter_problem(prog: str) -> str | None:
    """One line saying which interpreter to use when this one cannot run pfl_dist's jobs."""
    missing = missing_modules()
    if not missing:
        return None
    if REPO_VENV_PYTHON.is_file() and Path(os.path.abspath(sys.executable)) != REPO_VENV_PYTHON:
        venv_python = shlex.quote(shown_path(REPO_VENV_PYTHON))
        hint = f"run it with {venv_python} -m {prog} (or `source .venv/bin/activate` first)"
    else:
        hint = "run `make install` and then use .venv/bin/python (or `source .venv/bin/activate` first)"
    return (f"{prog}: error: {shown_path(Path(sys.executable))} cannot run pfl_dist's jobs (no module "
            f"{', '.join(missing)}); {hint}")
