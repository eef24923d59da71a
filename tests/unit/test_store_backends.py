"""store.backend: the lazy back-end (a bounded RAM cache spilling to row files, pfl_dist/store.py)
gives the dense back-end's run to 1e-12 in float64, for every algorithm and every error-feedback
codec, with a cache of a few rows so that rows are spilled and read back every round; `auto`
chooses and says why, and the memory estimate counts the chosen store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.spec import CODECS
from pfl_dist.methods import METHODS
from pfl_dist.resources import estimate_rank_bytes, store_backend
from pfl_dist.runtime import init_runtime
from pfl_dist.store import NAMESPACES, LazyStore
from pfl_dist.train import Trainer, run_session
from tests.helpers import run_inprocess, write_learnable_mnist

TOL = 1e-12
M = 1000
# 5 of 1000 clients per round, 4 rounds; P = 4 x 3 = 12, so a row is 96 bytes and the cache of 1.5
# rows' bytes spills at every round (the update counts, 8 bytes a client, by the last round); every
# client is evaluated, and read by blocks (`chunks`) of one client.
SYNTHETIC = (f"data.num_clients={M}", "data.samples_per_client=20", "data.dim=4", "data.num_classes=3",
             "data.R=1.5", "run.seed=5", "algorithm.num_local_steps=4", "algorithm.sample_fraction=0.005",
             "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64", "algorithm.alpha=0.3")
CACHE_MB = 1.5 * 12 * 8 / 2**20
# FedRep and FedPer need a model with a body and a head: a tiny MLP on MNIST-layout images
IMAGE_MODEL = '''
from collections import OrderedDict

from torch import nn


def tiny_mlp(input_shape, num_classes):
    return nn.Sequential(OrderedDict(flat=nn.Flatten(), body=nn.Linear(784, 3), relu=nn.ReLU(),
                                     head=nn.Linear(3, num_classes)))
'''
IMAGES = (f"data.num_clients={M}", "data.kind=mnist", f"data.num_partitions={M}", "data.partition=iid",
          "model.kind=tiny_store_mlp:tiny_mlp", "model.head=head.", "run.seed=5", "algorithm.local_lr=0.05",
          "algorithm.batch_size=4", "algorithm.local_epochs=1", "algorithm.sample_fraction=0.005",
          "train.num_rounds=3", "train.eval_every=3", "train.dtype=float64", "train.eval_clients=40")
FEEDBACK_CODECS = sorted(name for name, entry in CODECS.items() if entry.error_feedback)


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "tiny_store_mlp.py").write_text(IMAGE_MODEL)
    (folder / "mnist").mkdir()
    write_learnable_mnist(folder / "mnist", num_train=3 * M, num_test=200)
    return folder


@dataclass
class Finished:
    """A finished run as its Trainer held it just before `close` (which drops a lazy store's files)."""

    trainer: Trainer
    rows: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # every stored row, by namespace
    evaluated: torch.Tensor | None = None  # every client's evaluated model
    spilled: list[str] = field(default_factory=list)  # the row files the lazy store had written


def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, *overrides: str) -> Finished:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={backend}", *overrides,
                             f"store.backend={backend}", f"store.cache_mb={CACHE_MB}"])
    seen: list[Finished] = []
    close = Trainer.close

    def recording_close(trainer: Trainer) -> None:
        store = trainer.store
        rows = {namespace: {name: values.clone() for name, values in store.rows(namespace).items()}
                for namespace in NAMESPACES}
        seen.append(Finished(trainer, rows=rows,
                             evaluated=trainer.local_models.clone(),
                             spilled=sorted(path.name for path in store.spill_dir.glob("*.rows"))
                             if isinstance(store, LazyStore) else []))
        close(trainer)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "close", recording_close)
        trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    assert trainer.store.backend == backend and seen[0].trainer is trainer
    return seen[0]


def assert_same_run(dense: Finished, lazy: Finished) -> None:
    """w_g, every client's evaluated model, every stored row and every final metric, to TOL."""
    assert (dense.trainer.global_model - lazy.trainer.global_model).abs().max() <= TOL
    assert dense.evaluated is not None and lazy.evaluated is not None
    assert (dense.evaluated - lazy.evaluated).abs().max() <= TOL
    for namespace, rows in dense.rows.items():
        assert rows.keys() == lazy.rows[namespace].keys()
        for name, values in rows.items():
            assert (values - lazy.rows[namespace][name]).abs().max() <= TOL, name
    final, lazy_final = dense.trainer.summary["final"], lazy.trainer.summary["final"]
    assert final.keys() == lazy_final.keys()
    for name, value in final.items():
        assert abs(value - lazy_final[name]) <= TOL, name
    assert dense.trainer.summary["participation"] == lazy.trainer.summary["participation"]


def run_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    try:
        load_config(None, list(overrides))
    except ConfigError as refused:  # a pair the config refuses (stated, not silently passed)
        pytest.skip(f"refused by the config: {refused}")
    dense = train(tmp_path, monkeypatch, "dense", *overrides)
    lazy = train(tmp_path, monkeypatch, "lazy", *overrides)
    # the lazy run spilled rows to its files (its model-sized rows among them) and read them back;
    # its scratch folder is gone
    assert isinstance(lazy.trainer.store, LazyStore) and lazy.trainer.store.spills > 0
    assert any(name.startswith("algo.") for name in lazy.spilled) or not lazy.rows["algo"]
    assert not (tmp_path / "lazy" / "store").exists()
    assert_same_run(dense, lazy)


SYNTHETIC_METHODS = sorted(name for name, info in METHODS.items() if not info.parameter_groups)
IMAGE_METHODS = sorted(name for name, info in METHODS.items() if info.parameter_groups)


@pytest.mark.parametrize("codec", ["none", *FEEDBACK_CODECS])
@pytest.mark.parametrize("method", SYNTHETIC_METHODS)
def test_lazy_equals_dense_on_every_method_and_feedback_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              method: str, codec: str) -> None:
    run_pair(tmp_path, monkeypatch, *SYNTHETIC, f"algorithm.name={method}", f"comm.codec={codec}")


@pytest.mark.parametrize("codec", ["none", *FEEDBACK_CODECS])
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_lazy_equals_dense_on_the_body_and_head_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        image_inputs: Path, method: str, codec: str) -> None:
    monkeypatch.syspath_prepend(str(image_inputs))
    run_pair(tmp_path, monkeypatch, *IMAGES, f"data.data_dir={image_inputs / 'mnist'}", f"algorithm.name={method}",
             f"comm.codec={codec}")


def test_lambda_auto_reads_every_client_by_blocks_and_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FedCLUP's lam=auto statistic over every client (no cohort) and on a cohort
    run_pair(tmp_path / "all", monkeypatch, *SYNTHETIC, "algorithm.name=fedclup", "algorithm.lam=auto",
             "algorithm.lam_auto_warmup=0.5")
    run_pair(tmp_path / "cohort", monkeypatch, *SYNTHETIC, "algorithm.name=fedclup", "algorithm.lam=auto",
             "algorithm.lam_auto_warmup=0.5", "train.eval_clients=30")


# --- auto, the log and the memory estimate -------------------------------------------------------


def test_auto_is_dense_while_it_fits_in_a_quarter_of_memory_and_says_why() -> None:
    cfg = load_config(None, [])
    assert store_backend(cfg, dense_bytes=25, available=100)[0] == "dense"
    backend, why = store_backend(cfg, dense_bytes=26, available=100)
    assert backend == "lazy" and why.startswith("store.backend=auto: the dense rows would take 26 B of the 100 B")
    assert store_backend(cfg, dense_bytes=10**15, available=None)[0] == "dense"  # unknown: as before the key
    assert store_backend(load_config(None, ["store.backend=lazy"]), dense_bytes=1, available=100) == \
        ("lazy", "store.backend=lazy")


def test_the_choice_is_printed_once_and_recorded_in_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = train(tmp_path, monkeypatch, "lazy", *SYNTHETIC).trainer
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("store: ")]
    assert lines == [f"store: lazy (store.backend=lazy; a RAM cache of {CACHE_MB:g} MiB, spilled to "
                     f"{tmp_path / 'lazy' / 'store'})"]
    assert trainer.summary["store"] == {"setting": "lazy", "backend": "lazy",
                                        "dense_rows_bytes": trainer.summary["store"]["dense_rows_bytes"]}
    assert trainer.summary["store"]["dense_rows_bytes"] > 0


def test_a_dense_store_by_auto_prints_nothing_and_is_recorded(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_inprocess(tmp_path, "data.num_clients=4", "train.num_rounds=2", "train.eval_every=2")
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("store: ")]
    # 4 clients' FedCLUP local models (20 float32 values each): 320 B, dense by any memory
    assert summary["store"] == {"setting": "auto", "backend": "dense", "dense_rows_bytes": 4 * 20 * 4}


@pytest.mark.parametrize("value", ["fast", "0", "-1"])
def test_a_bad_store_key_is_one_line(value: str) -> None:
    key = "store.backend" if value == "fast" else "store.cache_mb"
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"{key}={value}"])
    assert str(raised.value).startswith(f"{key} must be") and "\n" not in str(raised.value)


def test_the_estimate_counts_the_lazy_cache_and_the_trained_clients_working_copies() -> None:
    common = ["data.num_clients=1000000", "data.dim=100", "data.num_classes=10", "algorithm.sample_fraction=0.001",
              "train.eval_clients=1000", "data.lazy=true", "train.dtype=float64", "algorithm.name=scaffold"]
    dense = estimate_rank_bytes(load_config(None, [*common, "store.backend=dense"]), world_size=2)[1]
    lazy = estimate_rank_bytes(load_config(None, [*common, "store.backend=lazy", "store.cache_mb=64"]),
                               world_size=2)[1]
    row = 1000 * 8  # P = 100 x 10, float64
    working = 2 * 500 * row  # a rank trains 500 of the 1000 sampled clients, 2 working copies each
    assert dense == working + 2 * 500_000 * row  # SCAFFOLD keeps y_i and c_i for the rank's 500,000 clients
    assert lazy == working + 64 * 2**20
