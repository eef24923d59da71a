"""Lazy client data (data.lazy, pfl_dist/data/lazy.py): the same run bit for bit as eager data,
clients generated only when sampled or evaluated, at most the cache's bound kept, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pfl_dist.data.lazy as lazy_module
import pfl_dist.tasks.synthetic as synthetic_task
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.lazy import ClientCache, cache_capacity, lazy_data, resident_clients
from pfl_dist.errors import ConfigError
from pfl_dist.methods import METHODS
from pfl_dist.resources import estimate_rank_bytes
from pfl_dist.rundir import config_hash, result_config
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import eval_cohort
from pfl_dist.tasks import TASKS
from pfl_dist.train import Trainer, run_session
from tests.helpers import (
    assert_lazy_equals_eager,
    assert_rounds_make_only_their_clients,
    crash_and_resume,
    read_metrics,
    read_summary,
)

M, COHORT = 40, 8
RUN = (f"data.num_clients={M}", "data.samples_per_client=30", "data.dim=6", "data.num_classes=3", "data.R=1.5",
       "run.seed=7", "algorithm.num_local_steps=5", "algorithm.sample_fraction=0.25", "train.num_rounds=4",
       "train.eval_every=2", "train.dtype=float64", f"train.eval_clients={COHORT}")


def train(tmp_path: Path, *overrides: str, name: str) -> tuple[dict[str, Any], Trainer]:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", *RUN, *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    return trainer.summary, trainer


class CountingGenerate:
    """synthetic_task.generate_clients, counting the client ids it is asked for."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.original = synthetic_task.generate_clients

    def __call__(self, client_ids: Any, **kwargs: Any) -> Any:
        self.ids.extend(int(i) for i in client_ids)
        return self.original(client_ids, **kwargs)


@pytest.mark.parametrize(("name", "smoothness"), [
    *((name, "auto") for name, info in METHODS.items() if not info.parameter_groups),  # FedRep/FedPer: CNN only
    *((name, "4.0") for name in ("fedclup", "scaffold", "ditto")),
])
def test_lazy_equals_eager_bit_for_bit(tmp_path: Path, name: str, smoothness: str) -> None:
    # Execute: the same run with every client generated at start-up, and lazily
    common = (f"algorithm.name={name}", f"algorithm.smoothness={smoothness}")
    eager, eager_trainer = train(tmp_path, *common, "data.lazy=false", name="eager")
    lazy, lazy_trainer = train(tmp_path, *common, "data.lazy=true", name="lazy")
    # Assert: the lazy run was lazy, and every number is the same: w_g, the metrics, the state rows
    assert_lazy_equals_eager(tmp_path, lazy, lazy_trainer, eager, eager_trainer)


def test_start_up_generates_no_client_and_the_cache_holds_at_most_its_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: count every client the task generates; an explicit L (no smoothness pass)
    counting = CountingGenerate()
    monkeypatch.setattr(synthetic_task, "generate_clients", counting)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=bound", *RUN, "data.lazy=true",
                             "algorithm.smoothness=4.0"])
    # Execute: build the Trainer (start-up)
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    task: Any = trainer.task
    # Assert: nothing generated yet; then each round generates only its sampled clients (and the
    # cohort once), and the cache never holds more than the LRU's bound plus the pinned cohort
    assert counting.ids == [] and len(task.cache) == 0
    assert "data: lazy (data.lazy=true): each client generated when sampled or evaluated, at most 18 clients' " \
        in capsys.readouterr().out  # the choice is logged, with the bound
    capacity = cache_capacity(cfg)
    cohort = set(eval_cohort(seed=7, num_clients=M, size=COHORT).tolist())
    assert capacity == 10 and task.cache.pinned_ids == cohort
    generated = assert_rounds_make_only_their_clients(trainer, counting.ids, seed=7, num_clients=M,
                                                      capacity=capacity, cohort=cohort)
    assert task.cache.materialized == len(counting.ids)
    assert len(generated) > capacity + COHORT  # the bound was reached: clients were evicted


def test_eager_start_up_generates_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    counting = CountingGenerate()
    monkeypatch.setattr(synthetic_task, "generate_clients", counting)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=eager", *RUN, "data.lazy=false",
                             "algorithm.smoothness=4.0"])
    Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    assert sorted(counting.ids) == list(range(M)) and "data: lazy" not in capsys.readouterr().out


def test_lazy_smoothness_auto_generates_each_client_once_and_keeps_none(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingGenerate()
    monkeypatch.setattr(synthetic_task, "generate_clients", counting)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=auto", *RUN, "data.lazy=true"])
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    assert sorted(counting.ids) == list(range(M)) and len(trainer.task.cache) == 0  # type: ignore[attr-defined]


def test_client_cache_is_an_lru_with_pinned_clients() -> None:
    made: list[int] = []

    def make(ids: list[int]) -> list[str]:
        made.extend(ids)
        return [f"client {i}" for i in ids]

    cache = ClientCache(make, capacity=2, pinned=[9])
    assert cache.get([1, 9, 2]) == ["client 1", "client 9", "client 2"] and made == [1, 9, 2]
    cache.get([1])  # 1 is now the most recent: 2 goes first
    cache.get([3])
    assert made == [1, 9, 2, 3] and len(cache) == 3
    cache.get([1, 9])  # held: nothing made
    assert made == [1, 9, 2, 3]
    cache.get([2])  # evicted before: made again, and 3 (least recently used) goes
    cache.get([3])
    assert made == [1, 9, 2, 3, 2, 3] and cache.materialized == 6 and len(cache) == 3
    with pytest.raises(ValueError, match="at least 1 client"):
        ClientCache(make, capacity=0)


def test_auto_is_lazy_from_the_threshold_with_a_cohort(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolved(*overrides: str) -> bool:
        return lazy_data(load_config(None, list(overrides)))

    assert not resolved(f"data.num_clients={M}", "train.eval_clients=8")
    monkeypatch.setattr(lazy_module, "LAZY_FROM", M)
    assert resolved(f"data.num_clients={M}", "train.eval_clients=8")
    assert not resolved(f"data.num_clients={M}", "train.eval_clients=all")  # every client evaluated: eager
    assert not resolved(f"data.num_clients={M}", "train.eval_clients=8", "data.lazy=false")
    assert not resolved(f"data.num_clients={M - 1}", "train.eval_clients=8")


def test_the_key_is_no_part_of_the_run_identity() -> None:
    hashes = {config_hash(load_config(None, [*RUN, f"data.lazy={value}"]).to_dict()) for value in
              ("auto", "true", "false")}
    assert len(hashes) == 1
    assert "data.lazy" not in result_config(load_config(None, list(RUN)).to_dict())


@pytest.mark.parametrize(("overrides", "message"), [
    (("data.lazy=maybe",), "data.lazy"),
    (("data.lazy=true", "train.eval_clients=all"),
     f"data.lazy=true needs an evaluation cohort: train.eval_clients=all evaluates all {M} clients"),
    (("data.lazy=true", f"train.eval_clients={M}"), "data.lazy=true needs an evaluation cohort"),
])
def test_bad_values_are_one_line(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(None, [*RUN, *overrides])
    assert "\n" not in str(raised.value)


def test_a_kind_that_cannot_be_lazy_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A kind whose registry entry has no `lazy` (how it makes one client) holds every client eagerly.
    monkeypatch.setitem(TASKS, "mnist", dataclasses.replace(TASKS["mnist"], lazy=None))
    lazy = " or ".join(kind for kind, entry in TASKS.items() if entry.lazy is not None)
    assert "synthetic" in lazy and "client_files" in lazy and "mnist5k" in lazy
    with pytest.raises(ConfigError, match=rf"^data.lazy=true is for data.kind {lazy}, not 'mnist': remove "
                                          r"data.lazy$") as raised:
        load_config(None, ["data.kind=mnist", "data.lazy=true", "train.eval_clients=8"])
    assert "\n" not in str(raised.value)
    monkeypatch.setattr(lazy_module, "LAZY_FROM", 10)  # auto is eager for it whatever the size
    assert not lazy_data(load_config(None, ["data.kind=mnist", "data.num_clients=20", "train.eval_clients=8"]))
    assert not lazy_data(load_config(None, ["data.kind=mnist", "data.lazy=false", "train.eval_clients=8"]))


def test_memory_estimate_counts_the_resident_clients_only() -> None:
    cfg = load_config(None, ["data.num_clients=1000000", "algorithm.sample_fraction=0.001",
                             "train.eval_clients=1000", "data.lazy=true"])
    eager = load_config(None, ["data.num_clients=1000000", "algorithm.sample_fraction=0.001",
                               "train.eval_clients=1000", "data.lazy=false"])
    lazy_bytes, store = estimate_rank_bytes(cfg, world_size=1)
    eager_bytes, eager_store = estimate_rank_bytes(eager, world_size=1)
    assert resident_clients(cfg, 10**6) == 2000 and resident_clients(eager, 10**6) == 10**6
    assert lazy_bytes * 500 == eager_bytes and store == eager_store  # the store is not data's to shrink
    assert np.isclose(lazy_bytes, 2000 * 200 * (10 * 4 + 8))


def test_a_resumed_lazy_run_is_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resumed = crash_and_resume(tmp_path, monkeypatch, *RUN, "algorithm.name=scaffold", "data.lazy=true",
                               "checkpoint.every=1", crash_round=3)
    reference = read_metrics(tmp_path / "reference")
    assert resumed["resumed_from"] == [3]
    assert read_metrics(tmp_path / "run")[-1]["metrics"] == reference[-1]["metrics"]
    assert resumed["global_model_sha256"] == read_summary(tmp_path / "reference")["global_model_sha256"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lazy_rows_index_as_the_eager_tensors(dtype: torch.dtype) -> None:
    # Prepare: one rank's clients 10..39 of M, eager and lazy
    cfg = load_config(None, [*RUN, "data.lazy=true"])
    eager_cfg = load_config(None, [*RUN, "data.lazy=false"])
    block, device = range(10, M), torch.device("cpu")
    lazy = synthetic_task.SyntheticTask(cfg, client_ids=block, device=device, dtype=dtype)
    eager = synthetic_task.SyntheticTask(eager_cfg, client_ids=block, device=device, dtype=dtype)
    assert lazy.lazy and not eager.lazy
    # Execute and assert: unsorted, repeated and empty rows give the same values, dtype and layout
    for rows in ([3, 0, 3, 29], [], [5], list(range(30))):
        index = torch.tensor(rows, dtype=torch.long)
        for field in ("features", "labels", "scale", "true_models"):
            got, want = getattr(lazy, field)[index], getattr(eager, field)[index]
            assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride(), field
            assert torch.equal(got, want), (field, rows)
    assert lazy.local_smoothness() == eager.local_smoothness()
    with pytest.raises(TypeError, match="1-D tensor of rows"):
        lazy.features[0:2]


def test_the_docs_state_the_threshold() -> None:
    repo = Path(__file__).resolve().parents[2]
    readme, architecture = ((repo / doc).read_text() for doc in ("README.md", "docs/ARCHITECTURE.md"))
    assert f"`auto` = lazy from {lazy_module.LAZY_FROM:,} clients on when a cohort is evaluated" in readme
    assert f"`auto` is lazy from {lazy_module.LAZY_FROM:,} clients on (`LAZY_FROM`)" in architecture
