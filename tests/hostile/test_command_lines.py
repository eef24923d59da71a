"""Command lines gone wrong (issue 22): an option no tool knows, and an emulated network larger
than its address range. Each is one line `...: error: ...`, exit 2, no traceback and no usage
text, before anything is created."""

from __future__ import annotations

from pathlib import Path

from pfl_dist.netem import cli as netem_cli
from pfl_dist.netem import sweep as netem_sweep
from tests.hostile.hostile import assert_one_line, assert_unchanged, run_main, snapshot


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
