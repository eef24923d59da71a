"""The hostile-case helpers themselves: a snapshot sees every kind of change, and the one-line
check rejects what it must (tracebacks, extra lines, wrong codes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.hostile.hostile import Outcome, assert_one_line, assert_unchanged, run_main, snapshot


def _tree(root: Path) -> None:
    (root / "run" / "final").mkdir(parents=True)
    (root / "run" / "summary.json").write_text("{}")
    (root / "run" / "final" / "global.pt").write_bytes(b"\0\1")
    os.symlink("run", root / "alias")


@pytest.mark.parametrize("change", ["edit", "add", "remove", "retarget", "chmod", "replace_link"])
def test_snapshot_sees_every_change(tmp_path: Path, change: str) -> None:
    _tree(tmp_path)
    before = snapshot(tmp_path)
    assert_unchanged(before, tmp_path)
    if change == "edit":
        (tmp_path / "run" / "final" / "global.pt").write_bytes(b"\0\2")
    elif change == "add":
        (tmp_path / "run" / "extra").write_text("")
    elif change == "remove":
        (tmp_path / "run" / "summary.json").unlink()
    elif change == "retarget":
        (tmp_path / "alias").unlink()
        os.symlink("run/final", tmp_path / "alias")
    elif change == "chmod":
        (tmp_path / "run" / "summary.json").chmod(0o400)
    else:  # the symlink becomes a real folder with the same content
        (tmp_path / "alias").unlink()
        (tmp_path / "alias").mkdir()
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(before, tmp_path)


def test_snapshot_does_not_follow_links(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "inside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "inside" / "link")
    before = snapshot(tmp_path / "inside")
    (tmp_path / "outside" / "new").write_text("x")  # behind the link: not part of the tree
    assert_unchanged(before, tmp_path / "inside")
    assert snapshot(tmp_path / "missing") == {".": "missing"}


def test_one_line_check_rejects_what_it_must() -> None:
    good = Outcome(code=2, stdout="", stderr="pfl_dist: error: run.name must be ...\n")
    assert assert_one_line(good, code=2, contains="run.name").startswith("pfl_dist: error:")
    bad = [Outcome(3, "", good.stderr), Outcome(2, "", good.stderr * 2), Outcome(2, "", "error: x\n"),
           Outcome(2, "Traceback (most recent call last):\n", good.stderr), Outcome(2, "", "")]
    for outcome in bad:
        with pytest.raises(AssertionError):
            assert_one_line(outcome, code=2)
    with pytest.raises(AssertionError):
        assert_one_line(good, code=2, contains="seed")


def test_run_main_captures_output_and_exit_codes() -> None:
    def main(argv: list[str]) -> int:
        print("out")
        print(f"pfl_dist: error: {argv[0]}", file=sys.stderr)
        if argv[0] == "exit":
            raise SystemExit(4)
        return 2

    assert run_main(main, ["x"]) == Outcome(code=2, stdout="out\n", stderr="pfl_dist: error: x\n")
    assert run_main(main, ["exit"]).code == 4
