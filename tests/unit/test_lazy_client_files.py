"""Lazy client data on the user's own files (data.kind client_files, data.lazy=true): a client's
file is read (and split, and scaled) when it is sampled or evaluated; the run is the eager run bit
for bit, start-up reads no file's numbers, and the cache holds at most its bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pfl_dist.tasks.client_files as client_files_task
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.lazy import cache_capacity, lazy_data, resident_clients
from pfl_dist.errors import ConfigError, DataError
from pfl_dist.resources import estimate_rank_bytes
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import eval_cohort
from pfl_dist.train import Trainer, run_session
from tests.data_fixtures import write_reference_csv_clients
from tests.helpers import assert_lazy_equals_eager, assert_rounds_make_only_their_clients

M, COHORT = 16, 5
RUN = (f"data.num_clients={M}", "data.kind=client_files", "run.seed=5", "algorithm.num_local_steps=4",
       "algorithm.sample_fraction=0.25", "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64",
       f"train.eval_clients={COHORT}")
NPZ = ("data.dim=4", "data.num_classes=3")


def csv_clients(tmp_path: Path) -> Path:
    """The reference layout: CSV files of 30 rows (every client the same count: the fused solver),
    scaled (auto on CSV), with the true models (ITR, ATR)."""
    return write_reference_csv_clients(tmp_path / "csv", num_clients=M, num_samples=30, dim=10, seed=3)


def npz_clients(tmp_path: Path) -> Path:
    """NPZ clients of 7..25 rows (padding, masked metrics, the generic loop), no true models."""
    directory = tmp_path / "npz"
    directory.mkdir()
    rng = np.random.default_rng(2)
    for k in range(M):
        n = int(rng.integers(7, 26))
        np.savez(directory / f"{k + 1}_client_data.npz", X=rng.standard_normal((n, 4)) * 3,
                 y=rng.integers(0, 3, size=n))
    return directory


def train(tmp_path: Path, folder: Path, *overrides: str, name: str) -> tuple[dict[str, Any], Trainer]:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", f"data.data_dir={folder}", *RUN,
                             *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    return trainer.summary, trainer


class CountingRead:
    """client_files_task.read_client, counting the clients it reads."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.original = client_files_task.read_client

    def __call__(self, directory: Path, client: int, **kwargs: Any) -> Any:
        self.ids.append(client)
        return self.original(directory, client, **kwargs)


CASES = {
    "csv_fedclup": ("csv", "algorithm.name=fedclup"),
    "csv_scaffold_held_out": ("csv", "algorithm.name=scaffold", "data.test_fraction=0.2", "algorithm.smoothness=4.0"),
    "npz_ditto_minibatch": ("npz", *NPZ, "algorithm.name=ditto", "algorithm.batch_size=4",
                            "algorithm.smoothness=4.0"),
    "npz_pfedme_validation": ("npz", *NPZ, "algorithm.name=pfedme", "data.test_fraction=0.25",
                              "data.val_fraction=0.25", "data.scale_features=true"),
    "npz_localtrain": ("npz", *NPZ, "algorithm.name=local", "data.test_fraction=0.2"),
}


@pytest.mark.parametrize("case", CASES)
def test_lazy_files_equal_eager_bit_for_bit(tmp_path: Path, case: str) -> None:
    # Prepare: the case's folder of client files
    kind, *overrides = CASES[case]
    folder = csv_clients(tmp_path) if kind == "csv" else npz_clients(tmp_path)
    # Execute: every client read at start-up, and each read when sampled or evaluated
    eager, eager_trainer = train(tmp_path, folder, *overrides, "data.lazy=false", name="eager")
    lazy, lazy_trainer = train(tmp_path, folder, *overrides, "data.lazy=true", name="lazy")
    # Assert: the lazy run was lazy, and every number is the same: w_g, the metrics, the state rows, L
    assert_lazy_equals_eager(tmp_path, lazy, lazy_trainer, eager, eager_trainer)
    task: Any = lazy_trainer.task
    assert 0 < len(task.cache) <= cache_capacity(lazy_trainer.cfg) + COHORT


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_start_up_reads_no_file_and_the_cache_holds_at_most_its_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    # Prepare: count every client file the task reads; an explicit L (no smoothness pass)
    folder = csv_clients(tmp_path) if kind == "csv" else npz_clients(tmp_path)
    counting = CountingRead()
    monkeypatch.setattr(client_files_task, "read_client", counting)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=bound", f"data.data_dir={folder}", *RUN,
                             *(NPZ if kind == "npz" else ()), "data.lazy=true", "algorithm.smoothness=4.0",
                             "data.test_fraction=0.2"])
    # Execute: build the Trainer (start-up)
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    task: Any = trainer.task
    # Assert: no file read yet; then each round reads only its sampled clients (and the cohort
    # once), and the cache never holds more than the LRU's bound plus the pinned cohort
    assert counting.ids == [] and task.cache.materialized == 0 and len(task.cache) == 0
    assert "data: lazy (data.lazy=true): each client read from its file when sampled or evaluated" \
        in capsys.readouterr().out
    capacity = cache_capacity(cfg)
    cohort = set(eval_cohort(seed=5, num_clients=M, size=COHORT).tolist())
    assert capacity == 4 and task.cache.pinned_ids == cohort
    read = assert_rounds_make_only_their_clients(trainer, counting.ids, seed=5, num_clients=M, capacity=capacity,
                                                 cohort=cohort)
    assert task.cache.materialized == len(counting.ids)
    assert len(read) > capacity + COHORT  # the bound was reached: clients were evicted


def test_smoothness_auto_reads_each_file_once_and_keeps_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingRead()
    monkeypatch.setattr(client_files_task, "read_client", counting)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=auto", f"data.data_dir={npz_clients(tmp_path)}",
                             *RUN, *NPZ, "data.lazy=true"])
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    assert sorted(counting.ids) == list(range(M)) and len(trainer.task.cache) == 0  # type: ignore[attr-defined]


def test_a_file_that_changes_during_the_run_is_one_line(tmp_path: Path) -> None:
    folder = npz_clients(tmp_path)
    cfg = load_config(None, [f"data.data_dir={folder}", *RUN, *NPZ, "data.lazy=true", "algorithm.smoothness=4.0"])
    task = client_files_task.ClientFilesTask(cfg, client_ids=range(M), device=torch.device("cpu"),
                                              dtype=torch.float64)
    np.savez(folder / "3_client_data.npz", X=np.zeros((30, 4)), y=np.zeros(30, dtype=np.int64))
    with pytest.raises(DataError, match=r"3_client_data.npz: holds 30 samples, \d+ when the run started") as raised:
        task.features[torch.tensor([2])]
    assert "\n" not in str(raised.value)


def test_start_up_errors_stay_at_start_up(tmp_path: Path) -> None:
    # A missing file and too few rows to split are found at start-up, as eagerly, in one line.
    folder = npz_clients(tmp_path)
    (folder / "9_client_data.npz").unlink()
    args = [f"data.data_dir={folder}", *RUN, *NPZ, "data.lazy=true"]
    with pytest.raises(DataError, match="9_client_data.npz: file not found") as raised:
        client_files_task.ClientFilesTask(load_config(None, args), client_ids=range(M), device=torch.device("cpu"),
                                          dtype=torch.float64)
    assert "\n" not in str(raised.value)
    np.savez(folder / "9_client_data.npz", X=np.zeros((1, 4)), y=np.zeros(1, dtype=np.int64))
    with pytest.raises(DataError, match=r"data.test_fraction=0.5: client 9 has 1 row\(s\)") as raised:
        client_files_task.ClientFilesTask(load_config(None, [*args, "data.test_fraction=0.5"]), client_ids=range(M),
                                          device=torch.device("cpu"), dtype=torch.float64)
    assert "\n" not in str(raised.value)


def test_lazy_needs_a_cohort_and_auto_needs_the_threshold(tmp_path: Path) -> None:
    args = [f"data.data_dir={tmp_path}", *RUN]
    with pytest.raises(ConfigError, match="data.lazy=true needs an evaluation cohort") as raised:
        load_config(None, [*args, "data.lazy=true", "train.eval_clients=all"])
    assert "\n" not in str(raised.value)
    assert not lazy_data(load_config(None, args)) and lazy_data(load_config(None, [*args, "data.lazy=true"]))


def test_memory_estimate_counts_the_resident_clients_only(tmp_path: Path) -> None:
    folder = npz_clients(tmp_path)
    args = [f"data.data_dir={folder}", *RUN, *NPZ]
    lazy_cfg, eager_cfg = (load_config(None, [*args, f"data.lazy={v}"]) for v in ("true", "false"))
    (lazy_bytes, lazy_store), (eager_bytes, eager_store) = (estimate_rank_bytes(c, world_size=1)
                                                            for c in (lazy_cfg, eager_cfg))
    counts = [len(np.load(folder / f"{k + 1}_client_data.npz")["y"]) for k in range(M)]
    resident = resident_clients(lazy_cfg, M)
    assert resident == cache_capacity(lazy_cfg) + COHORT == 9
    padded = max(counts) * (4 * 8 + 8)
    assert lazy_bytes == resident * (padded + 4 * 8)  # padded rows and the scales of the resident clients
    assert eager_bytes == M * (padded + 4 * 8) + sum(counts) * (4 * 8 + 8)  # + the arrays as read
    assert lazy_store == eager_store
