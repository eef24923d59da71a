"""Lazy client data on image partitions (data.lazy=true, data.kind mnist here): the partition is
made at start-up (label arithmetic), a client's images are gathered from the dataset (loaded once
per process) when it is sampled or evaluated; the run is the eager run bit for bit, start-up
gathers no client, and the cache holds at most its bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.lazy import cache_capacity, resident_clients
from pfl_dist.resources import estimate_rank_bytes
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import eval_cohort, sample_clients
from pfl_dist.train import Trainer, run_session
from tests.helpers import assert_lazy_equals_eager, write_learnable_mnist

M, COHORT = 12, 4
RUN = ("data.kind=mnist", "data.num_partitions=30", f"data.num_clients={M}", "algorithm.local_lr=0.01",
       "algorithm.global_lr=1/lam", "train.dtype=float64", f"train.eval_clients={COHORT}", "run.seed=2",
       "algorithm.sample_fraction=0.25", "train.num_rounds=4", "train.eval_every=2")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def train(tmp_path: Path, mnist_dir: Path, *overrides: str, name: str) -> tuple[dict[str, Any], Trainer]:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", f"data.data_dir={mnist_dir}", *RUN,
                             *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    return trainer.summary, trainer


@pytest.mark.parametrize("overrides", [
    ("algorithm.name=fedclup", "model.kind=logreg", "algorithm.smoothness=auto", "algorithm.local_lr=auto"),
    ("algorithm.name=scaffold", "algorithm.batch_size=8", "algorithm.local_epochs=1", "data.val_fraction=0.2"),
    ("algorithm.name=pfedme", "model.kind=linear", "data.partition=dirichlet"),
], ids=["fedclup_auto_L", "scaffold_minibatch_validation", "pfedme_dirichlet"])
def test_lazy_images_equal_eager_bit_for_bit(tmp_path: Path, mnist_dir: Path, overrides: tuple[str, ...]) -> None:
    eager, eager_trainer = train(tmp_path, mnist_dir, *overrides, "data.lazy=false", name="eager")
    lazy, lazy_trainer = train(tmp_path, mnist_dir, *overrides, "data.lazy=true", name="lazy")
    assert_lazy_equals_eager(tmp_path, lazy, lazy_trainer, eager, eager_trainer)


def test_start_up_gathers_no_client_and_the_cache_holds_at_most_its_bound(
        tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=bound", f"data.data_dir={mnist_dir}", *RUN,
                             "data.lazy=true", "algorithm.smoothness=4.0"])
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    task: Any = trainer.task
    made: list[int] = []
    original = task.cache._make
    task.cache._make = lambda ids: (made.extend(ids), original(ids))[1]
    assert task.cache.materialized == 0 and len(task.cache) == 0
    assert "each client gathered from the dataset when sampled or evaluated" in capsys.readouterr().out
    cohort = set(eval_cohort(seed=2, num_clients=M, size=COHORT).tolist())
    capacity = cache_capacity(cfg)
    trainer.evaluate(round_num=0)
    assert sorted(made) == sorted(cohort)
    for round_idx in range(6):
        before = len(made)
        trainer.run_round(round_idx)
        sampled = set(sample_clients(round_idx, seed=2, num_clients=M, sample_fraction=0.25).tolist())
        assert set(made[before:]) <= sampled - cohort and len(made[before:]) == len(set(made[before:]))
        assert len(task.cache._lru) <= capacity and len(task.cache) <= capacity + COHORT
    assert task.cache.materialized == len(made) and len(set(made)) > capacity + COHORT


def test_memory_estimate_counts_the_resident_clients_only(mnist_dir: Path) -> None:
    args = [f"data.data_dir={mnist_dir}", *RUN]
    lazy_cfg, eager_cfg = (load_config(None, [*args, f"data.lazy={v}"]) for v in ("true", "false"))
    lazy_bytes, eager_bytes = (estimate_rank_bytes(c, world_size=1)[0] for c in (lazy_cfg, eager_cfg))
    assert resident_clients(lazy_cfg, M) == 3 + COHORT
    assert lazy_bytes * M == eager_bytes * (3 + COHORT)
