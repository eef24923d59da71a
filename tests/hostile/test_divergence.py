"""Divergence (issue 21 point 4, issue 22): the one line names what diverged and the key to lower,
on one process and through the launcher.

Before the fix every divergence said "lower algorithm.local_lr"; a single-process run whose global
step diverged (algorithm.global_lr=1e30) blamed "a client on another rank", where there is none;
and a divergence through `pfl_dist.launch --nproc-per-node=2` printed one line per rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfl_dist import train
from tests.hostile.hostile import TINY_RUN, assert_one_line, assert_unchanged, run_main, run_module, snapshot

SERVER_STEP = "the global model is non-finite after the server step (every client's model and their mean are finite)"


@pytest.mark.parametrize(("overrides", "expected"), [
    (("algorithm.global_lr=1e30",), f"round 2: {SERVER_STEP}; lower algorithm.global_lr"),
    (("algorithm.name=pfedme", "algorithm.beta=1e30"), f"round 2: {SERVER_STEP}; lower algorithm.beta"),
    (("algorithm.local_lr=1e30",), "round 1: client 0 diverged: the model it sends is non-finite; lower "
                                   "algorithm.local_lr"),
    (("algorithm.name=ditto", "algorithm.lam=200", "algorithm.personal_lr=0.1", "algorithm.num_local_steps=50"),
     "round 1: client 0 diverged: the state it keeps is non-finite; lower algorithm.personal_lr"),
], ids=["global_lr", "beta", "local_lr", "personal_lr"])
def test_a_single_process_divergence_names_what_diverged(results: Path, overrides: tuple[str, ...],
                                                         expected: str) -> None:
    # Prepare
    before = snapshot(results / "out" / "prev")
    # Execute
    outcome = run_main(train.main, [*TINY_RUN, "train.num_rounds=3", f"run.out_dir={results / 'out'}",
                                    "run.name=diverged", *overrides])
    # Assert
    assert_one_line(outcome, code=3, contains=f"pfl_dist: error: {expected}")
    assert "another rank" not in outcome.stderr
    assert not (results / "out" / "diverged" / "summary.json").exists()
    assert_unchanged(before, results / "out" / "prev")


def write_one_diverging_client(data_dir: Path) -> Path:
    """Two NPZ clients; client 1's features are 1e30, so its logits overflow in its first step."""
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for k, scale in ((1, 1.0), (2, 1e30)):
        x = rng.normal(size=(20, 4))
        np.savez(data_dir / f"{k}_client_data.npz", X=x * scale, y=(x[:, 0] > 0).astype(np.int64))
    return data_dir


@pytest.mark.distributed
def test_divergence_through_the_launcher_is_one_line_naming_the_client_on_the_other_rank(tmp_path: Path) -> None:
    # Prepare: client 1 is hosted by rank 1; rank 0's client stays finite
    data_dir = write_one_diverging_client(tmp_path / "clients")
    # Execute
    outcome = run_module("pfl_dist.launch", "--nproc-per-node=2", f"run.out_dir={tmp_path / 'out'}",
                         "data.kind=client_files", f"data.data_dir={data_dir}", "data.num_clients=2", "data.dim=4",
                         "data.num_classes=2", "algorithm.name=fedavg", "algorithm.num_local_steps=2",
                         "algorithm.local_lr=0.1", "train.num_rounds=3", timeout=300)
    # Assert
    assert_one_line(outcome, code=3, contains="pfl_dist: error: round 1: client 1 diverged: the model it sends is "
                                              "non-finite; lower algorithm.local_lr")
