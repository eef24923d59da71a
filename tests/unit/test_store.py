"""The ClientStore (pfl_dist/store.py): declared per-client rows, their defaults, one owner for
the algorithm's, the codec's and the Trainer's rows, and checkpoints with no code per algorithm."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfl_dist.algorithms import ALGORITHMS, algorithm_class
from pfl_dist.checkpoint import Checkpointer, SavedRows
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.base import ErrorFeedback
from pfl_dist.store import ClientStore, DenseStore, LazyStore, Row
from tests.helpers import crash_and_resume
from tests.unit.test_checkpoint import assert_same_run

W_G = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def test_a_row_never_written_reads_its_default() -> None:
    # Prepare
    store = DenseStore(4, global_model=W_G)
    store.declare("algo", [Row("models", "global"), Row("c", "zeros"), Row("alpha", 0.25, shape=(1,))])
    store.declare("engine", [Row("counts", "zeros", shape=(), dtype=torch.float64)])
    # Execute: clients 1 and 3 write, 0 and 2 never do
    rows = torch.tensor([1, 3])
    store.write("algo", rows, {"models": torch.full((2, 3), 7.0, dtype=torch.float64)})
    store.write("engine", rows, {"counts": torch.tensor([1.0, 2.0], dtype=torch.float64)})
    # Assert
    untouched = store.read("algo", torch.tensor([0, 2]))
    assert torch.equal(untouched["models"], W_G.repeat(2, 1))
    assert torch.equal(untouched["c"], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(untouched["alpha"], torch.full((2, 1), 0.25, dtype=torch.float64))
    assert torch.equal(store.read("algo", rows)["models"], torch.full((2, 3), 7.0, dtype=torch.float64))
    assert store.rows("engine")["counts"].tolist() == [0.0, 1.0, 0.0, 2.0]
    assert list(store.state_dict()) == ["models", "c", "alpha", "counts"]  # the checkpoint's bare names


def test_a_read_is_a_copy_and_a_write_touches_only_its_rows() -> None:
    store = DenseStore(3, global_model=W_G)
    store.declare("algo", [Row("models", "global")])
    got = store.read("algo", torch.tensor([0]))["models"]
    got.fill_(0.0)  # the algorithm may update its rows in place
    assert torch.equal(store.rows("algo")["models"], W_G.repeat(3, 1))


@pytest.mark.parametrize(("row", "message"), [
    ({"name": "codec_residual"}, r"per-client row algo/codec_residual: the name 'codec_residual' is already "
                                 r"codec/codec_residual"),
    ({"name": "x", "default": "ones"}, r"per-client row 'x': default must be 'global', 'zeros' or a number, "
                                       r"got 'ones'"),
    ({"name": "x", "default": "global", "shape": (2,)}, r"per-client row 'x': default 'global' has the model's shape"),
    ({"name": "not a name"}, r"per-client row name 'not a name' must be an identifier"),
])
def test_a_bad_declaration_is_one_config_error_line(row: dict[str, Any], message: str) -> None:
    store = DenseStore(2, global_model=W_G)
    ErrorFeedback(2, 3, dtype=torch.float64, device=torch.device("cpu"), store=store)  # declares codec/
    with pytest.raises(ConfigError, match=message):
        store.declare("algo", [Row(**row)])


def test_the_codec_residual_is_a_row_of_the_shared_store() -> None:
    store = DenseStore(3, global_model=W_G)
    memory = ErrorFeedback(3, 3, dtype=torch.float64, device=torch.device("cpu"), store=store)
    memory.keep(torch.tensor([2]), torch.ones(1, 3, dtype=torch.float64))
    assert store.rows("codec")["codec_residual"][:, 0].tolist() == [0.0, 0.0, 1.0]
    assert torch.equal(memory.corrected(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([2])),
                       torch.ones(1, 3, dtype=torch.float64))


# What each built-in kept before the store (its former init_client_state): the same rows, the
# same initial values, so runs and checkpoints are unchanged.
BEFORE_THE_STORE = {
    **{name: {"local_models": "w_g"} for name in ("fedclup", "fedavg", "fedprox", "local", "fedrep", "fedper",
                                                   "fedadam")},
    **{name: {"personal_models": "w_g"} for name in ("ditto", "pfedme")},
    "apfl": {"personal_models": "w_g", "alpha": "alpha_0"},
    "scaffold": {"local_models": "w_g", "control_variates": "zeros"},
    "perfedavg": {}, "fedavg_ft": {},
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_builtin_declares_the_state_it_allocated_before(name: str) -> None:
    # Prepare
    cfg = dataclasses.replace(load_config(None, ["algorithm.alpha=0.3"]).algorithm, name=name)
    algorithm = algorithm_class(name)(cfg, smoothness=1.0)
    store = DenseStore(5, global_model=W_G)
    # Execute
    store.declare("algo", algorithm.client_rows())
    # Assert
    expected = {"w_g": W_G.repeat(5, 1), "zeros": torch.zeros(5, 3, dtype=torch.float64),
                "alpha_0": torch.full((5, 1), 0.3, dtype=torch.float64)}
    state = store.rows("algo")
    assert list(state) == list(BEFORE_THE_STORE[name])
    for row, kind in BEFORE_THE_STORE[name].items():
        assert state[row].dtype == torch.float64 and torch.equal(state[row], expected[kind]), row


LEGACY = '''
import torch

from pfl_dist.algorithms import FedAvg
from pfl_dist.methods import MethodInfo


class Legacy(FedAvg):
    info = MethodInfo("legacy", "Legacy", colors="#112233", marker="8")

    def init_client_state(self, global_model, num_clients):
        return {"local_models": global_model.repeat(num_clients, 1), "extra": torch.zeros(num_clients)}
'''


def test_a_plugin_that_still_allocates_its_state_by_hand_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "legacy_algo.py").write_text(LEGACY)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^algorithm.name=legacy_algo:Legacy: Legacy.init_client_state is no "
                                          r"longer called; declare the per-client rows with client_rows\(\)"):
        algorithm_class("legacy_algo:Legacy")


VISITS = '''
import torch

from pfl_dist.algorithms import ClientOutput, FedAvg, Row
from pfl_dist.methods import MethodInfo


class Visits(FedAvg):
    """FedAvg whose clients also count their own visits in a declared row (no checkpoint code)."""

    info = MethodInfo("visits", "Visits", colors="#112233", marker="8")

    def client_rows(self):
        return (*super().client_rows(), Row("visits", 0.0, shape=(), dtype=torch.float64))

    def client_update(self, ctx, state):
        out = super().client_update(ctx, state)
        return ClientOutput(sent=out.sent, keep={**out.keep, "visits": state["visits"] + 1})
'''

RESUME = ("data.num_clients=6", "data.samples_per_client=60", "train.num_rounds=10", "train.eval_every=3",
          "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.5", "checkpoint.every=3", "checkpoint.keep=3",
          "train.dtype=float64", "algorithm.name=visits_algo:Visits", "comm.codec=topk:0.5")


@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_a_declared_row_is_checkpointed_and_resumed_with_no_code_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # Prepare: a plug-in with its own row, with an error-feedback codec; a reference run and a run
    # that crashes in round 8, after the checkpoint of round 6
    (tmp_path / "visits_algo.py").write_text(VISITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Execute: the run again resumes
    crash_and_resume(tmp_path, monkeypatch, *RESUME, f"store.backend={backend}", "store.cache_mb=0.0001",
                     crash_round=7)
    # Assert: the same run; every row under the name checkpoints always had, and the plug-in's row
    # carried across the resume (the resumed process wrote round 9's checkpoint: a row reset to its
    # default at the resume would count fewer visits than the Trainer's update counts)
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    clients = SavedRows.of_shard(tmp_path / "run" / "ckpt" / "round_000009" / "shard_00000_of_00001.json")
    assert list(clients) == ["local_models", "visits", "update_counts", "codec_residual"]
    assert torch.equal(clients["visits"], clients["update_counts"]) and float(clients["visits"].sum()) == 27.0
    assert float(clients["codec_residual"].abs().sum()) > 0


def declared_store(clients: range) -> DenseStore:
    """A rank's store as the Trainer makes it for SCAFFOLD with an error-feedback codec and APFL's
    alpha, each row written with values made of its client ids (so any mix-up of clients shows)."""
    store = DenseStore(len(clients), global_model=W_G)
    store.declare("algo", [Row("local_models", "global"), Row("control_variates"), Row("alpha", 0.5, shape=(1,))])
    store.declare("engine", [Row("update_counts", "zeros", shape=(), dtype=torch.float64)])
    ErrorFeedback(len(clients), 6, dtype=torch.float64, device=torch.device("cpu"), store=store)
    ids = torch.tensor(list(clients), dtype=torch.float64)
    odd = torch.arange(len(clients))[ids.long() % 2 == 1]  # even clients keep their defaults
    store.write("algo", odd, {"control_variates": ids[odd].unsqueeze(1).repeat(1, 3),
                              "alpha": ids[odd].unsqueeze(1) / 10})
    store.write("engine", odd, {"update_counts": ids[odd]})
    store.write("codec", odd, {"codec_residual": -ids[odd].unsqueeze(1).repeat(1, 6)})
    return store


@pytest.mark.parametrize(("old", "new", "backend"), [(4, 2, "dense"), (2, 3, "lazy"), (3, 1, "lazy"), (1, 4, "dense")])
def test_a_store_reshards_through_the_checkpoint_with_no_code_per_row(tmp_path: Path, old: int, new: int,
                                                                      backend: str) -> None:
    # Prepare: every rank of `old` saves its store as the Trainer does (the store itself: its
    # written rows go to segments)
    config = load_config(None, []).to_dict()
    for rank in range(old):
        ckpt = Checkpointer(tmp_path / "ckpt", rank=rank, world_size=old, num_clients=9, keep=2, config=config)
        ckpt.save(3, {"clients": declared_store(ckpt.clients), "replicated": {},
                      "rank": {"measured_local": {"train": 0, "telemetry": 0}}})
    reference = declared_store(range(9))
    for rank in range(new):
        # Execute: a rank of `new` loads its block into a fresh store of `backend`, segment by segment
        ckpt = Checkpointer(tmp_path / "ckpt", rank=rank, world_size=new, num_clients=9, keep=2, config=config)
        store: ClientStore = (DenseStore(len(ckpt.clients), global_model=W_G) if backend == "dense" else
                              LazyStore(len(ckpt.clients), global_model=W_G, spill_dir=tmp_path / f"spill{rank}",
                                        cache_bytes=8))
        store.declare("algo", [Row("local_models", "global"), Row("control_variates"), Row("alpha", 0.5, shape=(1,))])
        store.declare("engine", [Row("update_counts", "zeros", shape=(), dtype=torch.float64)])
        ErrorFeedback(len(ckpt.clients), 6, dtype=torch.float64, device=torch.device("cpu"), store=store)
        store.load_saved(ckpt.load(3)["clients"])
        # Assert: its rows are the single store's rows of its clients, in every namespace
        block = torch.arange(ckpt.clients.start, ckpt.clients.stop)
        for namespace in ("algo", "engine", "codec"):
            want = reference.read(namespace, block)
            got = store.read(namespace, torch.arange(len(ckpt.clients)))
            assert list(got) == list(want)
            for name in want:
                assert torch.equal(got[name], want[name]), (namespace, name)
        store.close()


def test_a_checkpoint_without_a_declared_row_or_with_another_shape_is_one_config_error_line(tmp_path: Path) -> None:
    store = DenseStore(2, global_model=W_G)
    store.declare("algo", [Row("local_models", "global"), Row("alpha", 0.5, shape=(1,))])
    saved = store.state_dict()
    with pytest.raises(ConfigError, match=r"^cannot resume: the checkpoint has no per-client row 'alpha', which this "
                                          r"run declares \(algo/alpha\); use another run.name or --overwrite$"):
        store.load_state_dict({"local_models": saved["local_models"]})
    with pytest.raises(ConfigError, match=r"^cannot resume: per-client row algo/alpha is \(2, 2\) in the checkpoint "
                                          r"and \(2, 1\) in this run"):
        store.load_state_dict({**saved, "alpha": torch.zeros(2, 2, dtype=torch.float64)})
    # the same two lines from a checkpoint's segments
    ckpt = Checkpointer(tmp_path, rank=0, world_size=1, num_clients=2, keep=2, config=load_config(None, []).to_dict())
    for round_num, rows in ((2, {"local_models": saved["local_models"]}),
                            (4, {**saved, "alpha": torch.zeros(2, 2, dtype=torch.float64)})):
        ckpt.save(round_num, {"clients": rows, "replicated": {}, "rank": {"measured_local": {}}})
    with pytest.raises(ConfigError, match=r"^cannot resume: the checkpoint has no per-client row 'alpha'"):
        store.load_saved(ckpt.load(2)["clients"])
    with pytest.raises(ConfigError, match=r"^cannot resume: per-client row algo/alpha is \(2, 2\) in the checkpoint "
                                          r"and \(2, 1\) in this run"):
        store.load_saved(ckpt.load(4)["clients"])


# --- the lazy back-end -------------------------------------------------------------------------

ROW = 3 * 8  # bytes of one row of W_G's size (float64)


def lazy_store(tmp_path: Path, num_clients: int, *, cache_rows: int) -> LazyStore:
    """A lazy store whose cache holds `cache_rows` rows of the model's size."""
    store = LazyStore(num_clients, global_model=W_G, spill_dir=tmp_path / "store" / "rank0",
                      cache_bytes=cache_rows * ROW)
    store.declare("algo", [Row("models", "global"), Row("c", "zeros")])
    return store


def test_a_lazy_row_never_written_costs_nothing_and_reads_its_default(tmp_path: Path) -> None:
    # Execute: a store of 10^7 clients (dense: two rows of 240 MB), one client written
    store = lazy_store(tmp_path, 10**7, cache_rows=4)
    store.write("algo", torch.tensor([7]), {"c": torch.ones(1, 3, dtype=torch.float64)})
    got = store.read("algo", torch.tensor([7, 10**7 - 1]))
    # Assert: the defaults and the write, one row cached, nothing on disk
    assert torch.equal(got["models"], W_G.repeat(2, 1))
    assert got["c"].tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert list(store.cache) == [("algo/c", 7)] and store.cached_bytes == ROW
    assert store.spills == 0 and not (tmp_path / "store").exists()


def test_evicted_rows_are_spilled_to_row_files_and_read_back_exactly(tmp_path: Path) -> None:
    # Prepare: 20 clients, a cache of 3 rows, a dense store as the reference
    store, dense = lazy_store(tmp_path, 20, cache_rows=3), DenseStore(20, global_model=W_G)
    dense.declare("algo", [Row("models", "global"), Row("c", "zeros")])
    generator = torch.Generator().manual_seed(0)
    # Execute: rounds of writes of a few clients each, some clients written twice
    for _ in range(6):
        rows = torch.randperm(20, generator=generator)[:4]
        values = {"models": torch.randn(4, 3, generator=generator, dtype=torch.float64),
                  "c": torch.randn(4, 3, generator=generator, dtype=torch.float64)}
        store.write("algo", rows, values)
        dense.write("algo", rows, values)
        assert store.cached_bytes <= 3 * ROW  # the bound holds after every write
    # Assert: rows spilled to one file per row; every client reads what the dense store holds
    assert store.spills > 0
    assert sorted(p.name for p in (tmp_path / "store" / "rank0").iterdir()) == ["algo.c.rows", "algo.models.rows"]
    everyone = torch.arange(20)
    for name, rows in dense.read("algo", everyone).items():
        assert torch.equal(store.read("algo", everyone)[name], rows), name
    # the blocks of `chunks` cover every client once, each within the cache's bound
    blocks = list(store.chunks("algo"))
    assert torch.equal(torch.cat([block for block, _ in blocks]), everyone)
    assert max(len(block) for block, _ in blocks) == 3
    assert torch.equal(torch.cat([values["c"] for _, values in blocks]), dense.rows("algo")["c"])
    # close drops the scratch files
    store.close()
    assert not (tmp_path / "store").exists()


def test_a_lazy_store_round_trips_a_checkpoint_keeping_default_rows_unwritten(tmp_path: Path) -> None:
    dense = DenseStore(6, global_model=W_G)
    dense.declare("algo", [Row("models", "global"), Row("c", "zeros")])
    dense.write("algo", torch.tensor([1, 4]), {"models": torch.ones(2, 3, dtype=torch.float64)})
    dense.write("algo", torch.tensor([2]), {"c": torch.tensor([[0.0, -0.0, 0.0]], dtype=torch.float64)})
    store = lazy_store(tmp_path, 6, cache_rows=1)
    store.load_state_dict(dense.state_dict())
    assert store.written["algo/models"].tolist() == [False, True, False, False, True, False]
    assert store.written["algo/c"].tolist() == [False, False, True, False, False, False]  # -0.0 is not 0.0's bits
    for name, rows in dense.state_dict().items():
        assert store.state_dict()[name].numpy().tobytes() == rows.numpy().tobytes(), name


# --- streaming the written rows (the checkpoint's segments, issue 24) ---------------------------


@pytest.mark.parametrize("backend", ["dense", "lazy"])
def test_written_rows_stream_only_the_rows_that_differ_from_the_default_in_bounded_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # Prepare: 1000 clients, 37 written with values made of their ids (client 0's equals its
    # default, so it is not held); a lazy cache of two rows, so most rows are in the row file
    def make(name: str) -> ClientStore:
        if backend == "dense":
            return DenseStore(1000, global_model=W_G)
        return LazyStore(1000, global_model=W_G, spill_dir=tmp_path / name, cache_bytes=2 * 3 * 8)

    store = make("saved")
    store.declare("algo", [Row("local_models", "global")])
    written = torch.tensor(sorted({0, *range(5, 1000, 27)}))
    values = W_G.repeat(len(written), 1) + written.double().unsqueeze(1)
    store.write("algo", written, {"local_models": values})
    monkeypatch.setattr(type(store), "rows", lambda *_: pytest.fail("read every client at once"))
    monkeypatch.setattr(type(store), "state_dict", lambda *_: pytest.fail("read every client at once"))
    # Execute
    blocks = list(store.written_rows("algo/local_models", max_rows=5))
    # Assert: ascending ids, at most 5 rows a block, exactly the rows that differ, bit for bit
    ids = np.concatenate([block for block, _ in blocks])
    assert all(len(block) <= 5 for block, _ in blocks)
    assert ids.tolist() == written[1:].tolist()
    assert torch.equal(torch.cat([rows for _, rows in blocks]), values[1:])
    # Execute: the blocks loaded into a fresh store
    fresh = make("loaded")
    fresh.declare("algo", [Row("local_models", "global")])
    for block, rows in blocks:
        fresh.load_rows("algo/local_models", block, rows)
    # Assert: every client reads what the first store reads
    monkeypatch.undo()
    everyone = torch.arange(1000)
    assert torch.equal(fresh.read("algo", everyone)["local_models"], store.read("algo", everyone)["local_models"])
    store.close()
    fresh.close()
