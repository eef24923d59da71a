"""Family 1, paths: run.name and sweep point names are single safe path components, and a run
never writes through a symlink or over a file where its folders go.

Before the fix `run.name=..` exited 0, wrote its results into the parent of run.out_dir and
cleared the summary.json, metrics.jsonl and final/ it found there; a symlinked final/ had its
target's global.pt replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pfl_dist import launch, plot, train
from pfl_dist.sweep import cli as sweep_cli
from tests.helpers import write_sweep
from tests.hostile.hostile import (
    SWEEP_ERROR,
    TINY_RUN,
    assert_one_line,
    assert_unchanged,
    run_main,
    snapshot,
)

BAD_NAMES = {
    "dotdot": "..",
    "dot": ".",
    "slash": "a/b",
    "parent_escape": "../prev",
    "absolute": "/tmp",
    "nul": "a\0b",
    "newline": '"a\\nb"',  # YAML-quoted: a newline inside (a plain scalar would fold it)
    "too_long": "x" * 256,
    "too_long_utf8": "é" * 128,  # 128 characters, 256 bytes
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_unsafe_run_names_are_refused_and_touch_nothing(results: Path, name: str) -> None:
    before = snapshot(results)
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={results / 'out'}", f"run.name={name}"])
    assert_one_line(outcome, code=2, contains="run.name must")
    assert_unchanged(before, results)


def test_unsafe_run_name_from_a_config_file(results: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "..", "out_dir": str(results / "out")}}))
    before = snapshot(results)
    outcome = run_main(train.main, ["--config", str(config), *TINY_RUN])
    assert_one_line(outcome, code=2, contains="run.name must be a single folder name")
    assert_unchanged(before, results)


def test_the_launcher_refuses_before_starting_torchrun(results: Path) -> None:
    before = snapshot(results)
    outcome = run_main(launch.main, ["--nproc-per-node=2", *TINY_RUN, f"run.out_dir={results / 'out'}",
                                     "run.name=.."])
    assert_one_line(outcome, code=2, contains="run.name must")
    assert_unchanged(before, results)


@pytest.mark.parametrize("where", ["out_dir", "config", "data_dir"])
def test_nul_in_other_paths_is_one_line(results: Path, where: str) -> None:
    args = {"out_dir": [f"run.out_dir={results}/o\0ut"], "config": ["--config", "c\0.yaml"],
            "data_dir": ["data.data_dir=/tmp/\0", f"run.out_dir={results / 'out'}"]}[where]
    before = snapshot(results)
    outcome = run_main(train.main, [*TINY_RUN, *args])
    assert_one_line(outcome, code=2, contains="must not contain a NUL character")
    assert_unchanged(before, results)


LONG_NAME = "a" * 5000  # one folder name: the kernel's limit is 255 bytes (ENAMETOOLONG)
LONG_PATH = "ab/" * 1700  # 5100 bytes of short names: its limit for a whole path is 4095
# where -> (arguments, the key the line names); each was an OSError [Errno 36] traceback.
LONG_PATHS = {
    "out_dir": (lambda results: [f"run.out_dir={results / LONG_NAME}"], "run.out_dir must not hold a folder or "
                "file name longer than 255 bytes, got one of 5000 bytes"),
    "out_dir_path": (lambda results: [f"run.out_dir={results / LONG_PATH}"], "run.out_dir must be a path of at "
                     "most 3583 bytes"),
    "data_dir": (lambda results: ["data.kind=client_files", f"data.data_dir={results / LONG_NAME}",
                                  f"run.out_dir={results / 'out'}"], "data.data_dir must not hold"),
    "init_file": (lambda results: [f"model.init_file={results / LONG_NAME}.npy", f"run.out_dir={results / 'out'}"],
                  "model.init_file must not hold"),
    "config": (lambda results: ["--config", f"{results / LONG_PATH}c.yaml", f"run.out_dir={results / 'out'}"],
               "config file must be a path of at most 4095 bytes"),
}


@pytest.mark.parametrize("where", list(LONG_PATHS))
@pytest.mark.parametrize("entry", ["train", "launch"])
def test_paths_too_long_for_the_kernel_are_one_line_naming_the_key(results: Path, where: str, entry: str) -> None:
    args, message = LONG_PATHS[where]
    main = train.main if entry == "train" else launch.main
    before = snapshot(results)
    outcome = run_main(main, [*args(results), *TINY_RUN])  # --config before the overrides (argparse)
    assert_one_line(outcome, code=2, contains=message)
    assert_unchanged(before, results)


def test_sweep_and_plot_folders_too_long_for_the_kernel_are_one_line(results: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", grid={"algorithm.lam": [0.1]})
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--out-dir", str(results / LONG_NAME)])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains="--out-dir must not hold a folder or file name")
    outcome = run_main(plot.main, [str(results / LONG_PATH)])
    assert_one_line(outcome, code=2, prefix="pfl_dist.plot: error:", contains="results_dir must be a path of at most")
    assert_unchanged(before, results)


def test_a_name_of_255_bytes_is_accepted(tmp_path: Path) -> None:
    name = "é" * 127 + "x"  # 255 bytes
    outcome = run_main(train.main, [*TINY_RUN, f"run.out_dir={tmp_path}", f"run.name={name}"])
    assert outcome.code == 0, outcome.describe()
    assert (tmp_path / name / "summary.json").is_file()


# --- what is already on disk where a run writes ----------------------------------------------------


def _link_run_dir(out: Path) -> str:
    os.symlink(out / "prev", out / "linked")
    return "linked"


def _link_final(out: Path) -> str:
    (out / "new").mkdir()
    os.symlink(out / "prev" / "final", out / "new" / "final")
    return "new"


def _link_ckpt(out: Path) -> str:
    (out / "new").mkdir()
    os.symlink(out / "prev" / "ckpt", out / "new" / "ckpt")
    return "new"


def _link_round(out: Path) -> str:
    (out / "new" / "ckpt").mkdir(parents=True)
    os.symlink(out / "prev" / "ckpt" / "round_000001", out / "new" / "ckpt" / "round_000001")
    return "new"


def _link_summary(out: Path) -> str:
    (out / "new").mkdir()
    os.symlink(out / "prev" / "summary.json", out / "new" / "summary.json")
    return "new"


def _file_run_dir(out: Path) -> str:
    (out / "new").write_text("a file where the run dir goes")
    return "new"


def _file_final(out: Path) -> str:
    (out / "new").mkdir()
    (out / "new" / "final").write_text("a file where final/ goes")
    return "new"


def _file_ckpt(out: Path) -> str:
    (out / "new").mkdir()
    (out / "new" / "ckpt").write_text("a file where ckpt/ goes")
    return "new"


def _folder_metrics(out: Path) -> str:
    (out / "new" / "metrics.jsonl").mkdir(parents=True)
    return "new"


ON_DISK: dict[str, tuple[Callable[[Path], str], str]] = {
    "run_dir_symlink": (_link_run_dir, "linked is a symlink"),
    "final_symlink": (_link_final, "final is a symlink"),
    "ckpt_symlink": (_link_ckpt, "ckpt is a symlink"),
    "ckpt_round_symlink": (_link_round, "round_000001 is a symlink"),
    "summary_symlink": (_link_summary, "summary.json is a symlink"),
    "run_dir_is_a_file": (_file_run_dir, "new is a file, not a folder"),
    "final_is_a_file": (_file_final, "final is a file, not a folder"),
    "ckpt_is_a_file": (_file_ckpt, "ckpt is a file, not a folder"),
    "metrics_is_a_folder": (_folder_metrics, "metrics.jsonl is not a regular file"),
}


@pytest.mark.parametrize(("make", "message"), ON_DISK.values(), ids=ON_DISK.keys())
@pytest.mark.parametrize("entry", ["train", "launch"])
def test_links_and_files_in_the_run_dir_are_refused(results: Path, make: Callable[[Path], str], message: str,
                                                     entry: str) -> None:
    name = make(results / "out")
    before = snapshot(results)
    main = train.main if entry == "train" else launch.main
    torchrun = ["--nproc-per-node=2"] if entry == "launch" else []
    outcome = run_main(main, [*torchrun, *TINY_RUN, f"run.out_dir={results / 'out'}", f"run.name={name}",
                              "checkpoint.every=1"])
    assert_one_line(outcome, code=2, contains=message)
    assert_unchanged(before, results)


def test_sweep_point_names_longer_than_a_file_name_are_refused(results: Path, tmp_path: Path) -> None:
    long_dir = "d" * 300  # a grid value ends up in the point name
    sweep = write_sweep(tmp_path / "s.yaml", out_dir=str(results / "out"), grid={"data.data_dir": [long_dir]})
    before = snapshot(results)
    outcome = run_main(sweep_cli.main, [str(sweep), "--dry-run"])
    assert_one_line(outcome, code=2, prefix=SWEEP_ERROR, contains="run.name must be at most 255 bytes")
    assert_unchanged(before, results)
