"""Command lines gone wrong (issue 22): an option no tool knows, and an emulated network larger
than its address range. Each is one line `...: error: ...`, exit 2, no traceback and no usage
text, before anything is created."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pfl_dist import launch, plot, train
from pfl_dist.netem import cli as netem_cli
from pfl_dist.netem import sweep as netem_sweep
from pfl_dist.sweep import cli as sweep_cli
from pfl_dist.sweep import family
from tests.hostile.hostile import (
    ERROR,
    REPO,
    SWEEP_ERROR,
    assert_one_line,
    assert_unchanged,
    run_main,
    snapshot,
)

QUICK = str(REPO / "configs" / "sweeps" / "quick.yaml")
Main = Callable[[Sequence[str]], "int | None"]
# tool -> (its main, its arguments with a mistake, its error prefix, what the line names). argparse
# printed its usage (2-5 lines) before its error; the launcher passed --bogus on to torchrun, which
# printed its own usage (about 30 lines) once the config had been checked.
BAD_ARGUMENTS: dict[str, tuple[Main, list[str], str, str]] = {
    "train --bogus": (train.main, ["--bogus"], ERROR, "unrecognized arguments: --bogus"),
    "train --config": (train.main, ["--config"], ERROR, "argument --config: expected one argument"),
    "launch --bogus": (launch.main, ["--nproc-per-node=2", "--bogus"], ERROR, "unknown option '--bogus'"),
    "launch -x3": (launch.main, ["-x3"], ERROR, "unknown option '-x'"),
    "sweep --bogus": (sweep_cli.main, [QUICK, "--dry-run", "--bogus"], SWEEP_ERROR, "unrecognized arguments: --bogus"),
    "sweep --jobs x": (sweep_cli.main, [QUICK, "--jobs", "x"], SWEEP_ERROR, "argument --jobs: invalid int value: 'x'"),
    "plot --bogus": (plot.main, ["runs", "--bogus"], "pfl_dist.plot: error:", "unrecognized arguments: --bogus"),
    "plot": (plot.main, [], "pfl_dist.plot: error:", "the following arguments are required: results_dir"),
    "sweep.family --bogus": (family.main, ["runs", "--bogus"], ERROR, "unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_a_bad_command_line_is_one_line_and_exit_2(results: Path, case: str) -> None:
    main, argv, prefix, names = BAD_ARGUMENTS[case]
    before = snapshot(results)
    outcome = run_main(main, [f"run.out_dir={results / 'out'}", *argv] if main in (train.main, launch.main)
                       else argv)
    assert_one_line(outcome, code=2, prefix=prefix, contains=names)
    assert "usage:" not in outcome.stdout + outcome.stderr
    assert_unchanged(before, results)


def test_an_emulated_network_of_500_nodes_is_one_line_before_anything_is_made(results: Path) -> None:
    """It was a ValueError traceback ("at most 250 nodes fit in a /24") from inside the namespace
    set-up, after the run dir's netem/ folder had been made."""
    before = snapshot(results)
    outcome = run_main(netem_cli.main, ["--nodes", "500", "--rate", "10mbit", "data.num_clients=500",
                                        f"run.out_dir={results / 'out'}", "run.name=prev"])
    assert_one_line(outcome, code=2, contains=["--nodes 500", "at most 250 nodes", "10.77.0.2-251"])
    assert_unchanged(before, results)
    sweep = run_main(netem_sweep.main, ["--out", str(results / "netem"), "--nodes", "500", "--rates", "10mbit",
                                        "--methods", "fedavg", "data.num_clients=500"])
    assert_one_line(sweep, code=2, contains=["--nodes 500", "at most 250 nodes"])
    assert_unchanged(before, results)
