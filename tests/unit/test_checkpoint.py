"""Checkpoints without a process group: file format, checksums, re-sharding, pruning, the vote,
and in-process crash/stop + resume runs that must end bitwise equal to an uninterrupted run."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pfl_dist import checkpoint as checkpoint_module
from pfl_dist.algorithms import FedCLUP
from pfl_dist.checkpoint import (
    RUN_COMPLETE,
    Checkpointer,
    RunStopped,
    SavedRows,
    StopRequest,
    agree_on_resume_round,
    rng_state,
    set_rng_state,
)
from pfl_dist.comm import ByteLedger, Communicator
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError, DivergenceError
from pfl_dist.rundir import RunDirError
from pfl_dist.runtime import Runtime
from pfl_dist.sampling import client_block
from pfl_dist.store import ClientStore, LazyStore, Row
from pfl_dist.tensorboard_views import TIME_GROUP
from pfl_dist.train import Trainer, run
from tests.helpers import crash_at, make_client_diverge, read_metrics, read_summary, run_inprocess

CONFIG = load_config(None, []).to_dict()
SINGLE = Runtime(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)


def checkpointer(root: Path, *, rank: int = 0, world_size: int = 1, num_clients: int = 8, keep: int = 2,
                 config: dict[str, Any] = CONFIG) -> Checkpointer:
    return Checkpointer(root, rank=rank, world_size=world_size, num_clients=num_clients, keep=keep, config=config)


def shard_state(clients: range, *, num_params: int = 3, measured: int = 0) -> dict[str, Any]:
    """Rows whose values are the client ids, so any mix-up of clients shows."""
    ids = torch.tensor(list(clients), dtype=torch.float32)
    return {"clients": {"local_models": ids.unsqueeze(1).repeat(1, num_params), "update_counts": ids.double()},
            "replicated": {"global_model": torch.arange(num_params, dtype=torch.float32), "lam": 0.5,
                           "lambda_choices": [], "resumed_from": []},
            "rank": {"round_times": [0.1, 0.2], "measured_local": {"train": measured, "telemetry": 0},
                     "wall_s": 1.0, "rng": rng_state()}}


def save_all_ranks(root: Path, round_num: int, *, world_size: int, num_clients: int = 8, **kwargs: Any) -> None:
    for rank in range(world_size):
        ckpt = checkpointer(root, rank=rank, world_size=world_size, num_clients=num_clients, **kwargs)
        ckpt.save(round_num, shard_state(ckpt.clients, measured=100 * (rank + 1)))


def vote(ckpt: Checkpointer, num_rounds: int = 20, *, complete: bool = False) -> int:
    return agree_on_resume_round(ckpt, Communicator(SINGLE, ByteLedger()), num_rounds=num_rounds, complete=complete)


# --- file format ---------------------------------------------------------------------------


def test_round_trip_restores_every_field(tmp_path: Path) -> None:
    # Prepare
    ckpt = checkpointer(tmp_path)
    state = shard_state(ckpt.clients, measured=7)
    # Execute
    folder = ckpt.save(4, state)
    loaded = ckpt.load(4)
    # Assert
    assert folder == tmp_path / "round_000004"
    assert sorted(p.name for p in folder.iterdir()) == ["shard_00000_of_00001.clients", "shard_00000_of_00001.json",
                                                        "shard_00000_of_00001.pt"]
    assert sorted(p.name for p in (folder / "shard_00000_of_00001.clients").iterdir()) == [
        "local_models.00000.bin", "update_counts.00000.bin"]
    assert list(loaded["clients"]) == ["local_models", "update_counts"]
    for name, tensor in state["clients"].items():
        assert torch.equal(loaded["clients"][name], tensor)
    assert torch.equal(loaded["replicated"]["global_model"], state["replicated"]["global_model"])
    assert loaded["rank"]["measured_local"] == {"train": 7, "telemetry": 0}
    assert loaded["rank"]["round_times"] == [0.1, 0.2]
    marker = json.loads((folder / "shard_00000_of_00001.json").read_text())
    assert marker["clients"] == [0, 8] and marker["num_bytes"] == (folder / "shard_00000_of_00001.pt").stat().st_size
    assert marker["format"] == 2 and [row["name"] for row in marker["rows"]] == ["local_models", "update_counts"]
    segment = marker["rows"][0]["segments"][0]
    data = (folder / "shard_00000_of_00001.clients" / segment["file"]).read_bytes()
    assert (segment["count"], segment["first"], segment["last"]) == (8, 0, 7)
    assert segment["num_bytes"] == len(data) == 8 * 8 + 8 * 3 * 4  # int64 ids, then float32 rows
    assert segment["sha256"] == hashlib.sha256(data).hexdigest()
    assert np.frombuffer(data[:64], dtype="<i8").tolist() == list(range(8))


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    ckpt.save(2, shard_state(ckpt.clients))  # captures the RNG state now
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(ckpt.load(2)["rank"]["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_a_shard_without_its_marker_does_not_count(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path)
    ckpt.save(2, shard_state(ckpt.clients))
    ckpt.save(4, shard_state(ckpt.clients))
    (tmp_path / "round_000004" / "shard_00000_of_00001.json").unlink()  # died before the marker
    assert vote(ckpt) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_newest_shard_is_skipped_with_a_warning(tmp_path: Path, damage: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpointer(tmp_path)
    ckpt.save(2, shard_state(ckpt.clients))
    ckpt.save(4, shard_state(ckpt.clients))
    shard = tmp_path / "round_000004" / "shard_00000_of_00001.pt"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert vote(ckpt) == 2
    warning = capsys.readouterr().err
    assert "skipping checkpoint round 4" in warning and ("truncated" in warning or "corrupt" in warning)


def test_rounds_after_the_resume_round_are_discarded(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path, keep=5)
    for round_num in (2, 4, 6):
        ckpt.save(round_num, shard_state(ckpt.clients))
    ckpt.discard_after(2)
    assert ckpt.rounds() == [2]


def test_keep_counts_complete_checkpoints_besides_the_one_being_written(tmp_path: Path) -> None:
    for round_num in (2, 4, 6, 8):
        save_all_ranks(tmp_path, round_num, world_size=2, keep=2)
    assert checkpointer(tmp_path).rounds() == [4, 6, 8]
    # Rank 0 alone wrote round 10 (rank 1 died): rounds 6 and 8 are still complete.
    checkpointer(tmp_path, rank=0, world_size=2, keep=2).save(10, shard_state(range(0, 4)))
    assert not list((tmp_path / "round_000004").glob("shard_00000_*"))  # rank 1's files wait for rank 1
    assert vote(checkpointer(tmp_path, rank=1, world_size=2)) == 8


def test_pruning_a_round_another_rank_removes_meanwhile_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a re-shard from 2 to 4 ranks, every new rank prunes the old ranks' files of the same
    # old rounds. Here rank 0 removes round 2's folder just as rank 1 starts listing it.
    save_all_ranks(tmp_path, 2, world_size=2)
    listing, raced = Path.iterdir, []

    def other_rank_first(self: Path) -> Any:
        if self.name == "round_000002" and not raced:
            raced.append(True)
            checkpointer(tmp_path, rank=0, world_size=4)._remove_stale(2)
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", other_rank_first)
    checkpointer(tmp_path, rank=1, world_size=4)._remove_stale(2)
    assert not (tmp_path / "round_000002").exists()


# --- client rows by segments (format 2) ----------------------------------------------------------

W_G = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def big_lazy_store(tmp_path: Path, name: str, num_clients: int) -> LazyStore:
    store = LazyStore(num_clients, global_model=W_G, spill_dir=tmp_path / name, cache_bytes=2 * 3 * 8)
    store.declare("algo", [Row("local_models", "global"), Row("control_variates", "zeros")])
    store.declare("engine", [Row("update_counts", "zeros", shape=(), dtype=torch.float64)])
    return store


def store_state(store: ClientStore) -> dict[str, Any]:
    return {"clients": store, "replicated": {}, "rank": {"measured_local": {"train": 0, "telemetry": 0}}}


def test_a_store_of_a_million_clients_saves_and_loads_only_its_written_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 10^6 clients (dense: 48 MB a row), 5 trained; client 3's update equals its default
    store = big_lazy_store(tmp_path, "saved", 10**6)
    trained = torch.tensor([3, 17, 40_000, 654_321, 999_999])
    models = W_G.repeat(5, 1) + torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64).unsqueeze(1)
    store.write("algo", trained, {"local_models": models, "control_variates": -models})
    store.write("engine", trained, {"update_counts": torch.ones(5, dtype=torch.float64)})
    for cls in (LazyStore, ClientStore):
        monkeypatch.setattr(cls, "rows", lambda *_: pytest.fail("held every client at once"))
        monkeypatch.setattr(cls, "state_dict", lambda *_: pytest.fail("held every client at once"))
    monkeypatch.setattr(SavedRows, "__getitem__", lambda *_: pytest.fail("built a whole row of every client"))
    ckpt = checkpointer(tmp_path / "ckpt", num_clients=10**6)
    # Execute
    folder = ckpt.save(4, store_state(store))
    fresh = big_lazy_store(tmp_path, "loaded", 10**6)
    fresh.load_saved(ckpt.load(4)["clients"])
    # Assert: a few KB on disk; the rows that differ from their default, and nothing else, loaded
    segments = folder / "shard_00000_of_00001.clients"
    assert sum(p.stat().st_size for p in segments.iterdir()) == 8 * 4 + 4 * 24 + 8 * 5 + 5 * 24 + 8 * 5 + 5 * 8
    assert np.flatnonzero(fresh.written["algo/local_models"]).tolist() == [17, 40_000, 654_321, 999_999]
    assert np.flatnonzero(fresh.written["algo/control_variates"]).tolist() == trained.tolist()
    probe = torch.tensor([0, 3, 17, 500, 654_321, 999_999])
    monkeypatch.undo()
    for namespace in ("algo", "engine"):
        want, got = store.read(namespace, probe), fresh.read(namespace, probe)
        for name in want:
            assert want[name].numpy().tobytes() == got[name].numpy().tobytes(), name
    store.close()
    fresh.close()


def test_segments_are_bounded_and_a_rerun_of_a_round_replaces_them(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: segments of at most 2 rows of 3 float32
    monkeypatch.setattr(checkpoint_module, "SEGMENT_BYTES", 2 * 3 * 4)
    ckpt = checkpointer(tmp_path, num_clients=8)
    # Execute: round 4 saved twice (an abandoned attempt, then the rerun), the second with other rows
    ckpt.save(4, shard_state(ckpt.clients))
    rerun = shard_state(ckpt.clients)
    rerun["clients"] = {"local_models": rerun["clients"]["local_models"] * 10}
    folder = ckpt.save(4, rerun)
    # Assert: four segments of two rows, none of the first attempt left, the rerun's rows loaded
    files = sorted(p.name for p in (folder / "shard_00000_of_00001.clients").iterdir())
    assert files == [f"local_models.{i:05d}.bin" for i in range(4)]
    assert torch.equal(ckpt.load(4)["clients"]["local_models"], rerun["clients"]["local_models"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_segment_skips_the_round_only_for_the_ranks_needing_it(
        tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: two rounds of 2 ranks; rank 1's newest segment of local models damaged
    for round_num in (2, 4):
        save_all_ranks(tmp_path, round_num, world_size=2)
    segment = tmp_path / "round_000004" / "shard_00001_of_00002.clients" / "local_models.00000.bin"
    data = bytearray(segment.read_bytes())
    if damage == "delete":
        segment.unlink()
    else:
        if damage == "truncate":
            data = data[:-1]
        else:
            data[-1] ^= 0xFF
        segment.write_bytes(bytes(data))
    # Execute / Assert: rank 1 (clients 4-7) falls back to round 2, with the reason; rank 0 does not
    # need the segment; at 4 ranks, rank 2 (clients 4, 5) needs it and rank 1 (2, 3) does not
    assert vote(checkpointer(tmp_path, rank=1, world_size=2)) == 2
    assert re.search(r"skipping checkpoint round 4: \S+local_models.00000.bin is (truncated|corrupt|unreadable)",
                     capsys.readouterr().err)
    assert vote(checkpointer(tmp_path, rank=0, world_size=2)) == 4
    assert checkpointer(tmp_path, rank=1, world_size=4).votes(10, complete=False)[2 + 4] == 1
    assert checkpointer(tmp_path, rank=2, world_size=4).votes(10, complete=False)[2 + 4] == 0


def test_a_marker_with_a_damaged_manifest_skips_its_round(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpointer(tmp_path)
    ckpt.save(2, shard_state(ckpt.clients))
    ckpt.save(4, shard_state(ckpt.clients))
    marker = tmp_path / "round_000004" / "shard_00000_of_00001.json"
    info = json.loads(marker.read_text())
    del info["rows"][0]["segments"][0]["first"]
    marker.write_text(json.dumps(info))
    assert vote(ckpt) == 2
    assert "skipping checkpoint round 4: " in capsys.readouterr().err


def test_a_checkpoint_of_format_1_still_loads(tmp_path: Path) -> None:
    # Prepare: a shard as pfl_dist wrote them before segments: every row inside the .pt
    state = shard_state(range(0, 8), measured=5)
    buffer = io.BytesIO()
    torch.save({"format": 1, "round": 6, **state}, buffer)
    folder = tmp_path / "round_000006"
    folder.mkdir()
    (folder / "shard_00000_of_00001.pt").write_bytes(buffer.getvalue())
    (folder / "shard_00000_of_00001.json").write_text(json.dumps(
        {"round": 6, "rank": 0, "world_size": 1, "clients": [0, 8], "num_bytes": len(buffer.getvalue()),
         "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "config": checkpointer(tmp_path).config}))
    # Execute: resumed on 2 ranks
    for rank in range(2):
        ckpt = checkpointer(tmp_path, rank=rank, world_size=2)
        assert vote(ckpt) == 6
        loaded = ckpt.load(6)
        # Assert
        assert loaded["clients"]["update_counts"].tolist() == [float(c) for c in ckpt.clients]


# --- re-sharding and the vote ----------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), [(4, 2), (2, 3), (3, 1), (1, 4)])
def test_a_different_world_size_reshards_by_client_id(tmp_path: Path, old: int, new: int) -> None:
    save_all_ranks(tmp_path, 6, world_size=old, num_clients=8)
    measured = 0
    for rank in range(new):
        ckpt = checkpointer(tmp_path, rank=rank, world_size=new, num_clients=8)
        state = ckpt.load(6)
        block = client_block(rank, world_size=new, num_clients=8)
        assert state["clients"]["update_counts"].tolist() == [float(c) for c in block]
        assert state["clients"]["local_models"][:, 0].tolist() == [float(c) for c in block]
        assert state["world_size"] == old
        measured += state["rank"]["measured_local"]["train"]
    assert measured == sum(100 * (r + 1) for r in range(old))  # every old rank's bytes counted once


def test_a_missing_shard_of_another_rank_blocks_only_the_ranks_needing_it(tmp_path: Path) -> None:
    save_all_ranks(tmp_path, 6, world_size=4)
    (tmp_path / "round_000006" / "shard_00003_of_00004.json").unlink()
    assert checkpointer(tmp_path, rank=0, world_size=4).votes(10, complete=False)[2 + 6] == 1
    assert checkpointer(tmp_path, rank=3, world_size=4).votes(10, complete=False)[2 + 6] == 0
    assert checkpointer(tmp_path, rank=1, world_size=2).votes(10, complete=False)[2 + 6] == 0  # needs ranks 2, 3


def test_a_complete_run_is_not_rerun(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path)
    ckpt.save(4, shard_state(ckpt.clients))
    assert vote(ckpt, complete=True) == RUN_COMPLETE
    assert vote(ckpt, complete=False) == 4


def test_a_checkpoint_of_another_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    checkpointer(tmp_path).save(4, shard_state(range(0, 8)))
    other = load_config(None, ["algorithm.lam=0.3"]).to_dict()
    with pytest.raises(ConfigError, match=r"algorithm.lam was 0.5, now 0.3"):
        vote(checkpointer(tmp_path, config=other))
    ignored = load_config(None, ["checkpoint.every=3", "comm.timeout_s=9", "run.out_dir=elsewhere"]).to_dict()
    assert vote(checkpointer(tmp_path, config=ignored)) == 4
    shorter = load_config(None, ["train.num_rounds=3"]).to_dict()  # round 4 is beyond it: still refused
    with pytest.raises(ConfigError, match=r"train.num_rounds was 50, now 3"):
        vote(checkpointer(tmp_path, config=shorter), num_rounds=3)


# --- whole runs in one process -----------------------------------------------------------------

ROUNDS = 10
BASE = ("data.num_clients=6", "data.samples_per_client=60", f"train.num_rounds={ROUNDS}", "train.eval_every=3",
        "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.5", "algorithm.lam=auto", "checkpoint.every=2")


def run_one(tmp_path: Path, name: str, *overrides: str) -> dict[str, Any]:
    return run_inprocess(tmp_path, *BASE, *overrides, name=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_one(out, "run")
    return out / "run"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    # Times differ between runs: time/* values, and the steps of the curves over wall-clock time.
    return {tag: [(-1 if tag.startswith(TIME_GROUP) else p.step, 0.0 if tag.startswith("time/") else p.value)
                  for p in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = read_summary(run_dir), read_summary(reference)
    for key in ("global_model_sha256", "final", "comm", "comm_telemetry", "participation", "lambda_auto"):
        assert got[key] == want[key], key
    assert [r["round"] for r in read_metrics(run_dir)] == [r["round"] for r in read_metrics(reference)]
    assert scalars(run_dir) == scalars(reference)  # no duplicate, missing or stale points
    assert got["time"]["measured_rounds"] == want["time"]["measured_rounds"] == ROUNDS and got["resumed_from"]


def test_crash_and_resume_equals_an_uninterrupted_run(tmp_path: Path, reference: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: crash in round 8 (index 7), after the checkpoint of round 6
    with monkeypatch.context() as patch:
        crash_at(patch, 7)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_one(tmp_path, "run")
    # Execute
    run_one(tmp_path, "run")
    # Assert
    assert_same_run(tmp_path / "run", reference)
    assert read_summary(tmp_path / "run")["resumed_from"] == [6]
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir()) == ["round_000004", "round_000006",
                                                                              "round_000008"]


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path: Path, reference: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        crash_at(patch, 7)
        with pytest.raises(RuntimeError):
            run_one(tmp_path, "run")
    shard = tmp_path / "run" / "ckpt" / "round_000006" / "shard_00000_of_00001.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    run_one(tmp_path, "run")
    assert_same_run(tmp_path / "run", reference)
    assert read_summary(tmp_path / "run")["resumed_from"] == [4]


def test_a_signal_stops_at_a_round_boundary_with_a_checkpoint(tmp_path: Path, reference: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the signal arrives during round 6 (index 5): that round is discarded.
    original = Trainer.run_round

    def run_round(self: Trainer, idx: int) -> bool:
        if idx == 5:
            self.stop._handle(15, None)  # what SIGTERM does
        return original(self, idx)

    # Execute
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_round", run_round)
        with pytest.raises(RunStopped, match=r"stopped by SIGTERM after round 5/10; checkpoint .*round_000005"):
            run_one(tmp_path, "run")
    run_one(tmp_path, "run")
    # Assert
    assert_same_run(tmp_path / "run", reference)
    assert read_summary(tmp_path / "run")["resumed_from"] == [5]


def test_local_training_stops_at_the_next_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = ("algorithm.name=local", "algorithm.lam=0", "algorithm.local_lr=0.05")
    uninterrupted = run_one(tmp_path, "reference", *local)
    original = Trainer.run_round

    def run_round(self: Trainer, idx: int) -> bool:
        if idx == 4:
            self.stop._handle(2, None)  # SIGINT in round 5: the evaluation of round 6 carries it
        return original(self, idx)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_round", run_round)
        with pytest.raises(RunStopped, match=r"stopped by SIGINT after round 6/10"):
            run_one(tmp_path, "run", *local)
    resumed = run_one(tmp_path, "run", *local)
    assert resumed["global_model_sha256"] == uninterrupted["global_model_sha256"]
    assert resumed["comm_telemetry"] == uninterrupted["comm_telemetry"]
    assert resumed["resumed_from"] == [6]


def test_a_diverged_round_is_never_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_client_diverge(monkeypatch, FedCLUP, round_idx=3, row=0)
    with pytest.raises(DivergenceError, match=r"round 4: client \d+ diverged"):
        run_one(tmp_path, "run", "checkpoint.every=1")
    assert checkpointer(tmp_path / "run" / "ckpt").rounds() == [1, 2, 3]


def test_rerunning_a_complete_run_trains_nothing_and_touches_nothing(tmp_path: Path, reference: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    first = run_one(tmp_path, "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    again = run_one(tmp_path, "run")
    assert "already complete" in capsys.readouterr().out
    assert again == first and again["global_model_sha256"] == read_summary(reference)["global_model_sha256"]
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_overwrite_replaces_a_complete_run_of_another_config(tmp_path: Path, reference: Path) -> None:
    run_one(tmp_path, "run", "algorithm.lam=0.3")
    with pytest.raises(RunDirError, match=r"another config \(algorithm.lam was 0.3, now 'auto'\).*--overwrite"):
        run_one(tmp_path, "run")
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=run", *BASE])
    summary = run(cfg, overwrite=True)
    assert summary["global_model_sha256"] == read_summary(reference)["global_model_sha256"]
    assert read_summary(tmp_path / "run")["config"]["algorithm"]["lam"] == "auto"
    assert not (tmp_path / "run" / ".replaced").exists()  # removed once the new summary is on disk


def test_stop_request_first_signal_sets_a_flag_second_restores_the_handler() -> None:
    import signal

    stop = StopRequest()
    stop.install()
    try:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.requested and stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) != stop._handle
    finally:
        stop.uninstall()


def test_stop_request_takes_repeats_for_the_same_stop_where_every_process_is_signalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Slurm step (PFL_SIGNAL_EVERY_PROCESS=1): the worker gets slurmstepd's SIGTERM and then its
    agent's; the second must not interrupt the round and its checkpoint."""
    import signal

    monkeypatch.setenv("PFL_SIGNAL_EVERY_PROCESS", "1")
    stop = StopRequest()
    stop.install()
    try:
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGINT, None)
        assert stop.requested and stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) == stop._handle
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) != stop._handle


def test_a_bad_pfl_signal_every_process_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFL_SIGNAL_EVERY_PROCESS", "yes")
    with pytest.raises(ConfigError, match="PFL_SIGNAL_EVERY_PROCESS must be 1 .* or 0, got 'yes'"):
        StopRequest()
