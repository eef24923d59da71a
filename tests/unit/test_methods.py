"""pfl_dist/methods.py states which algorithm keys each method reads (`MethodInfo.reads`): a key
in the table must change that method's numbers, a key outside it must not."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import pytest
import torch

from pfl_dist.algorithms import ClientRound, build_algorithm
from pfl_dist.config import AlgorithmConfig, Config, load_config
from pfl_dist.methods import (
    GD_SCHEDULE,
    LAM_AUTO_KEYS,
    METHODS,
    MINIBATCH_SCHEDULE,
    MethodInfo,
    info_from_summary,
    keys_read,
)
from pfl_dist.store import DenseStore
from pfl_dist.tasks import build_task
from tests.helpers import write_learnable_mnist

# Keys every method reads, or that are about lam: not what `reads` states; and params, a plug-in's
# own settings (a built-in declares none, so no value but {} is valid for it).
COMMON = {"name", "params", "lam", "local_lr", "smoothness", "sample_fraction", "client_weights",
          *(k.split(".")[1] for k in (*LAM_AUTO_KEYS, *GD_SCHEDULE, *MINIBATCH_SCHEDULE))}
OWN_KEYS = [f.name for f in dataclasses.fields(AlgorithmConfig) if f.name not in COMMON]
LINEAR = ("data.num_clients=3", "data.samples_per_client=30", "algorithm.num_local_steps=3",
          "train.dtype=float64")
ROUNDS = 2


def another_value(key: str, value: Any) -> Any:
    """A valid value of algorithm.<key> other than `value` (its default)."""
    hint = typing.get_type_hints(AlgorithmConfig)[key]
    if value == "auto":
        return 0.03  # a step size given instead of derived
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    options = [o for arg in typing.get_args(hint) if typing.get_origin(arg) is Literal for o in typing.get_args(arg)]
    return next(o for o in options if o != value)


def train(cfg: Config) -> torch.Tensor:
    """Two rounds of the method on every client of one process, evaluated: w_g and the personal
    models, flattened (what a key that the method reads must change)."""
    task = build_task(cfg, client_ids=range(cfg.data.num_clients), device=torch.device("cpu"))
    algorithm = build_algorithm(cfg.algorithm, smoothness=task.local_smoothness(), groups=task.parameter_groups())
    global_model = task.init_model()
    algorithm.init_server_state(global_model)
    store = DenseStore(cfg.data.num_clients, global_model=global_model)
    store.declare("algo", algorithm.client_rows())
    state = dict(store.rows("algo"))
    rows = torch.arange(cfg.data.num_clients)
    weights = task.sample_counts / task.sample_counts.sum()
    for round_idx in range(ROUNDS):
        out = algorithm.client_update(ClientRound(task=task, rows=rows, round_idx=round_idx,
                                                  global_model=global_model), dict(state))
        if algorithm.info.communicates:
            global_model = algorithm.server_update(global_model, weights @ out.sent)
        state.update(out.keep)
    personal = algorithm.personal_models(task, state, global_model, ROUNDS)
    return torch.cat([global_model, personal.flatten()])


@pytest.fixture(scope="module")
def cnn_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """Tiny MNIST-shaped data for the methods that need the CNN's body/head split."""
    mnist = write_learnable_mnist(tmp_path_factory.mktemp("mnist"), num_train=300, num_test=30)
    return ("data.kind=mnist", f"data.data_dir={mnist}", "data.num_partitions=10", "data.num_clients=2",
            "model.kind=cnn", "algorithm.batch_size=16", "algorithm.local_epochs=1", "algorithm.local_lr=0.05",
            "algorithm.global_lr=1/lam")


# FedRep and FedPer need the CNN: ~1 s per gradient here, so they run with the slow tests.
@pytest.mark.parametrize("method", [pytest.param(name, marks=pytest.mark.slow) if info.parameter_groups else name
                                    for name, info in METHODS.items()])
def test_a_method_reads_exactly_the_keys_its_table_entry_names(method: str, cnn_data: tuple[str, ...]) -> None:
    # Prepare
    info = METHODS[method]
    base = [*(cnn_data if info.parameter_groups else LINEAR), f"algorithm.name={method}"]
    reference = train(load_config(None, base))
    defaults = AlgorithmConfig()
    # Execute: every key besides the common ones, changed alone
    changes = {}
    for key in OWN_KEYS:
        value = another_value(key, getattr(defaults, key))
        changed = train(load_config(None, [*base, f"algorithm.{key}={value}"]))
        changes[f"algorithm.{key}"] = not torch.equal(changed, reference)
    # Assert: changed exactly where the table says the method reads the key
    assert {key for key, differs in changes.items() if differs} == set(info.reads) - set(LAM_AUTO_KEYS)


def test_keys_read_follow_the_schedule_lam_auto_and_communication() -> None:
    gd = {"algorithm": {"batch_size": None, "lam": 0.5}}
    minibatch = {"algorithm": {"batch_size": 32, "lam": "auto"}}
    assert keys_read(METHODS["fedavg"], gd) == ["algorithm.num_local_steps", "algorithm.local_lr",
                                                "algorithm.client_weights", "comm.codec", "comm.downlink_codec"]
    assert keys_read(METHODS["local"], minibatch) == ["algorithm.local_epochs", "algorithm.batch_size",
                                                      "algorithm.local_lr"]
    assert keys_read(METHODS["fedclup"], gd) == ["algorithm.num_local_steps", "algorithm.local_lr", "algorithm.lam",
                                                 "algorithm.global_lr", "algorithm.client_weights", "comm.codec",
                                                 "comm.downlink_codec"]
    assert set(LAM_AUTO_KEYS) <= set(keys_read(METHODS["fedclup"], minibatch))


def test_a_method_reads_back_as_summary_json_records_it() -> None:
    import json

    with_params = MethodInfo("mine:Mine", "Mine", params=(("momentum", 0.0), ("steps", 3)))  # a plug-in's
    for info in (*METHODS.values(), with_params):
        recorded = json.loads(json.dumps(info.to_dict()))
        assert recorded == info.to_dict()  # what a summary holds is what to_dict says
        assert info_from_summary({"method": recorded, "config": {"algorithm": {"name": info.name}}}) == info


def test_a_recorded_method_without_the_newer_facts_takes_them_from_the_table() -> None:
    recorded = {k: v for k, v in METHODS["ditto"].to_dict().items() if k != "reads"}  # an older summary
    info = info_from_summary({"method": recorded, "config": {"algorithm": {"name": "ditto"}}})
    assert info == METHODS["ditto"]
    assert info_from_summary({"config": {"algorithm": {"name": "pfedme"}}}) == METHODS["pfedme"]
