"""Shared helpers for hostile-input and fault tests (tests/hostile/).

A hostile case runs a CLI the way a careless or hostile user would and checks what docs/RELIABILITY.md
promises: the documented exit code, exactly ONE line on stderr (`pfl_dist: error: ...`, or the
documented stop/warning line), no traceback anywhere, and results that existed before are
byte-identical afterwards.

    before = snapshot(tmp_path)
    outcome = run_main(train.main, ["run.name=..", f"run.out_dir={tmp_path / 'out'}"])
    assert_one_line(outcome, code=2, contains="run.name")
    assert_unchanged(before, tmp_path)

`run_main` calls a CLI's `main(argv)` in this process (fast; stdout and stderr captured, a
`SystemExit` from argparse or a CLI becomes the exit code). `run_module` starts
`python -m MODULE` as a subprocess, for cases where the process itself matters (signals, hangs,
memory, the interpreter's own error output).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pfl_dist.launch import TORCHRUN_ENV

REPO = Path(__file__).resolve().parents[2]
ERROR = "pfl_dist: error:"
SWEEP_ERROR = "pfl_dist.sweep: error:"
WARNING = "pfl_dist: warning:"
STOPPED = "pfl_dist: stopped by"
# Arguments for a run that takes well under a second in-process.
TINY_RUN = ("data.num_clients=2", "data.samples_per_client=20", "data.dim=4", "train.num_rounds=2",
            "train.eval_every=1", "algorithm.num_local_steps=2")


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str]) -> Outcome:
    """`main(argv)` in this process with stdout/stderr captured; SystemExit -> its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            if isinstance(exc.code, str):  # SystemExit("message") prints it and exits 1
                print(exc.code, file=sys.stderr)
                code = 1
            else:
                code = exc.code
    return Outcome(code=int(code or 0), stdout=out.getvalue(), stderr=err.getvalue())


def run_module(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
               timeout: float = 120, ulimit_v_kib: int | None = None) -> Outcome:
    """`python -m module args` as a subprocess (torchrun-safe environment, one thread);
    `ulimit_v_kib`: its address space limited as by `ulimit -v` (RLIMIT_AS, inherited by its children)."""
    full_env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", **(env or {})}

    def limit() -> None:
        if ulimit_v_kib is not None:
            resource.setrlimit(resource.RLIMIT_AS, (ulimit_v_kib * 1024, ulimit_v_kib * 1024))

    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                            text=True, timeout=timeout, preexec_fn=limit)
    return Outcome(code=result.returncode, stdout=result.stdout, stderr=result.stderr)


def assert_no_traceback(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.describe()


def assert_one_line(outcome: Outcome, *, code: int, prefix: str = ERROR, contains: str | Sequence[str] = ()) -> str:
    """Exit `code`, exactly one stderr line, starting with `prefix` and holding every `contains`
    text; no traceback. Returns the line."""
    assert_no_traceback(outcome)
    assert outcome.code == code, outcome.describe()
    lines = outcome.stderr_lines
    assert len(lines) == 1, outcome.describe()
    assert lines[0].startswith(prefix), outcome.describe()
    for text in [contains] if isinstance(contains, str) else contains:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


# --- directory snapshots -----------------------------------------------------------------------


def _entry(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"link -> {os.readlink(path)}"
    if stat.S_ISDIR(info.st_mode):
        return f"dir {stat.S_IMODE(info.st_mode):o}"
    if stat.S_ISREG(info.st_mode):
        return f"file {stat.S_IMODE(info.st_mode):o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return f"other {stat.S_IFMT(info.st_mode):o}"


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` (and root itself, as '.') -> its kind, mode and content: the sha256
    of a file, the target of a symlink (never followed). A missing root is {'.': 'missing'}."""
    if not os.path.lexists(root):
        return {".": "missing"}
    tree = {".": _entry(root)}
    if not root.is_symlink() and root.is_dir():
        for folder, dirs, files in os.walk(root):  # os.walk does not descend into symlinked dirs
            for name in dirs + files:
                path = Path(folder) / name
                tree[str(path.relative_to(root))] = _entry(path)
    return tree


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    """`root` is byte-identical to the snapshot `before`; the message lists what changed."""
    after = snapshot(root)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        detail = "\n".join(f"  {k}: {before.get(k, 'absent')} -> {after.get(k, 'absent')}" for k in changed[:20])
        raise AssertionError(f"{root} changed:\n{detail}")


# --- pre-existing results ----------------------------------------------------------------------


def finished_run(out_dir: Path, name: str, *overrides: str) -> Path:
    """A finished tiny run at out_dir/name (in-process, ~0.1 s once torch is warm)."""
    from pfl_dist import train

    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={out_dir}", f"run.name={name}", *overrides])
    assert outcome.code == 0, outcome.describe()
    return out_dir / name


def existing_results(root: Path) -> Path:
    """root/out/prev: a finished run with a checkpoint folder; root/ also holds files named like a
    run's results (what `run.name=..` with out_dir=root/out would have cleared). -> root/out."""
    out = root / "out"
    finished_run(out, "prev", "checkpoint.every=1")
    for name in ("summary.json", "metrics.jsonl", "config.yaml"):
        (root / name).write_text(f"not pfl_dist's {name}\n")
    (root / "final").mkdir()
    (root / "final" / "global.pt").write_bytes(b"someone else's model")
    return out
