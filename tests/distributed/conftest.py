"""The 4-rank job several distributed tests read (run once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_torchrun

ROUNDS = 6
# 8 clients, half sampled per round; stable step sizes (auto) so summation order barely matters.
BASE = ("data.num_clients=8", "data.samples_per_client=100", f"train.num_rounds={ROUNDS}", "train.eval_every=3",
        "algorithm.num_local_steps=20", "algorithm.sample_fraction=0.5", "algorithm.lam=0.5")


@pytest.fixture(scope="session")
def four_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`torchrun --nproc-per-node=4 -m pfl_dist.train *BASE` -> its run dir."""
    out = tmp_path_factory.mktemp("w4")
    run_torchrun(out, 4, *BASE)
    return out / "run"
