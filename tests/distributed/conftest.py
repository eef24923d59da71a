"""The torchrun jobs several distributed tests read, each run once per session.

A torchrun job costs about 10 s before its first round (the agent, every rank's torch import, the
rendezvous), more on a loaded machine. Tests that check a property per codec or per algorithm
used to pay that once per parameter; here the runs of one world size are the points of ONE job
(tests/helpers.py `run_torchrun_points`, the in-job sweep worker; the counted runs, the
collective-counting worker), and each test reads its own run's results:

- `four_rank_runs`: 4 ranks; BASE, BASE with LocalTrain, BASE with every compressing codec, every
  algorithm (on BASE, or on image data for the methods with a body and a head);
- `counted_runs`: 2 ranks under the collective counter; BASE with every codec, the body/head
  methods, SCAFFOLD.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.methods import METHODS
from tests.helpers import REPO, read_summary, run_torchrun_points, write_learnable_mnist

ROUNDS = 6
# 8 clients, half sampled per round; stable step sizes (auto) so summation order barely matters.
BASE = ("data.num_clients=8", "data.samples_per_client=100", f"train.num_rounds={ROUNDS}", "train.eval_every=3",
        "algorithm.num_local_steps=20", "algorithm.sample_fraction=0.5", "algorithm.lam=0.5")
CODECS = ("none", "fp16", "bf16", "qsgd:4", "qsgd:1", "topk:0.2", "randk:0.5", "powersgd:1")
GROUPED = tuple(name for name, info in METHODS.items() if info.parameter_groups)  # need the CNN's body/head
IMAGE_ROUNDS = 2


def image_overrides(mnist_dir: Path, method: str) -> tuple[str, ...]:
    """8 image clients with the paper's CNN, half sampled per round, one epoch of batch 32."""
    return ("data.kind=mnist", f"data.data_dir={mnist_dir}", "data.num_partitions=30", "data.num_clients=8",
            "model.kind=cnn", f"algorithm.name={method}", "algorithm.batch_size=32", "algorithm.local_epochs=1",
            "algorithm.local_lr=0.05", "algorithm.sample_fraction=0.5", f"train.num_rounds={IMAGE_ROUNDS}",
            "train.eval_every=1")


def method_overrides(method: str, mnist_dir: Path) -> tuple[str, ...]:
    if method in GROUPED:
        return image_overrides(mnist_dir, method)
    return (*BASE, f"algorithm.name={method}")


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def four_rank_runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """One `torchrun --nproc-per-node=4` job with a point per run -> the dir holding their run
    dirs: `base`, `local`, `codec-<codec>` (each compressing codec), `method-<name>` (each
    algorithm)."""
    out = tmp_path_factory.mktemp("w4")
    points = {"base": BASE, "local": (*BASE, "algorithm.name=local")}
    points |= {f"codec-{codec}": (*BASE, f"comm.codec={codec}") for codec in CODECS[1:]}
    points |= {f"method-{method}": method_overrides(method, mnist_dir) for method in sorted(METHODS)}
    run_torchrun_points(out, 4, points)
    return out


@pytest.fixture(scope="session")
def four_rank_run(four_rank_runs: Path) -> Path:
    """The 4-rank run of BASE -> its run dir."""
    return four_rank_runs / "base"


@pytest.fixture(scope="session")
def counted_runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """One 2-rank job of tests/distributed/collective_counter_worker.py with a run per name ->
    the dir holding each run's out dir: `codec-<codec>` (BASE, every codec), `method-<name>` (the
    body/head methods on image data, SCAFFOLD on BASE); `outside_rank<R>.json` next to them."""
    out = tmp_path_factory.mktemp("counted")
    runs = {f"codec-{codec}": (*BASE, f"comm.codec={codec}") for codec in CODECS}
    runs |= {f"method-{method}": image_overrides(mnist_dir, method) for method in GROUPED}
    runs["method-scaffold"] = (*BASE, "algorithm.name=scaffold")
    plan = out / "plan.json"
    plan.write_text(json.dumps({"runs": [{"out_dir": str(out / name), "overrides": list(overrides)}
                                         for name, overrides in runs.items()]}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(REPO / "tests/distributed/collective_counter_worker.py"), str(plan)]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


def counted(counted_runs: Path, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One counted run -> (its summary, what each of the 2 ranks handed c10d during it)."""
    (run_dir,) = [p.parent for p in (counted_runs / name).glob("*/summary.json")]  # run.name=auto
    seen = [json.loads((counted_runs / name / f"dispatch_rank{rank}.json").read_text()) for rank in range(2)]
    return read_summary(run_dir), seen
