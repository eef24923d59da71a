"""Lazy client data for a plug-in dataset (`data.kind: "package.module:factory"`, data.lazy=true):
with the dataset's optional `client_size(i)`, start-up asks for row counts only, and client(i) is
called when client i is sampled or evaluated; the run is the eager run bit for bit. Without
client_size, or with one that disagrees with client(i), one line.

The user module is written to tmp_path, outside the repo, and imported from there."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pfl_dist.data.lazy as lazy_module
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.lazy import cache_capacity, lazy_data
from pfl_dist.errors import ConfigError, DataError
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import eval_cohort
from pfl_dist.tasks import build_task, preflight
from pfl_dist.train import Trainer, run_session
from tests.helpers import (
    assert_lazy_equals_eager,
    assert_rounds_make_only_their_clients,
    crash_and_resume,
    read_summary,
)

USER_DATASET = '''
import numpy as np

CALLS = []  # client(i)
SIZE_CALLS = []  # client_size(i)


class Ragged:
    """Clients of 6..19 train and 1..5 test rows (padding, masked metrics), features float32 for
    every third client and float64 otherwise, labels skewed per client; `lie` names a client
    whose client_size is one train row off."""

    def __init__(self, num_clients=16, dim=4, num_classes=3, seed=0, lie=-1):
        self.num_clients, self.input_shape, self.num_classes = num_clients, (dim,), num_classes
        self.seed, self.lie = seed, lie

    def _sizes(self, i):
        rng = np.random.default_rng([self.seed, i, 0])
        return int(rng.integers(6, 20)), int(rng.integers(1, 6))

    def client_size(self, i):
        SIZE_CALLS.append(i)
        n_train, n_test = self._sizes(i)
        return (n_train + 1 if i == self.lie else n_train), n_test

    def client(self, i):
        CALLS.append(i)
        n_train, n_test = self._sizes(i)
        rng = np.random.default_rng([self.seed, i, 1])
        n = n_train + n_test
        x = (rng.normal(size=(n, *self.input_shape)) + i % 3).astype(np.float32 if i % 3 == 0 else np.float64)
        probs = np.full(self.num_classes, 0.2 / self.num_classes)
        probs[i % self.num_classes] += 0.8
        y = rng.choice(self.num_classes, size=n, p=probs)
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class NoSize:
    """Ragged's clients without client_size."""

    def __init__(self, **params):
        ragged = Ragged(**params)
        self.num_clients, self.input_shape, self.num_classes = ragged.num_clients, ragged.input_shape, 3
        self.client = ragged.client


def ragged(**params):
    return Ragged(**params)


def no_size(**params):
    return NoSize(**params)


class BadSize(Ragged):
    def client_size(self, i):
        return (0, 2) if i == 3 else super().client_size(i)


def bad_size(**params):
    return BadSize(**params)
'''

M, COHORT = 16, 5
RUN = (f"data.num_clients={M}", "data.kind=user_lazy:ragged", "run.seed=5", "algorithm.num_local_steps=3",
       "algorithm.sample_fraction=0.25", "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64",
       f"train.eval_clients={COHORT}")


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """user_lazy.py in a folder of its own on sys.path, imported (its call lists emptied)."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_lazy.py").write_text(textwrap.dedent(USER_DATASET))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("user_lazy", None)
    import user_lazy  # type: ignore[import-not-found]

    yield user_lazy
    sys.modules.pop("user_lazy", None)


def train(tmp_path: Path, *overrides: str, name: str) -> tuple[dict[str, Any], Trainer]:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", *RUN, *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    return trainer.summary, trainer


CASES = {
    "fedclup_full_batch": ("algorithm.name=fedclup",),
    "fedavg_minibatch": ("algorithm.name=fedavg", "algorithm.batch_size=4", "algorithm.local_lr=0.1"),
    "scaffold": ("algorithm.name=scaffold", "algorithm.smoothness=4.0"),
    "ditto_validation": ("algorithm.name=ditto", "data.val_fraction=0.25", "algorithm.smoothness=4.0"),
    "pfedme_float32": ("algorithm.name=pfedme", "train.dtype=float32", "algorithm.smoothness=4.0"),
}


@pytest.mark.parametrize("case", CASES)
def test_lazy_dataset_equals_eager_bit_for_bit(tmp_path: Path, user: Any, case: str) -> None:
    # Execute: every hosted client built at start-up, and each built when sampled or evaluated
    eager, eager_trainer = train(tmp_path, *CASES[case], "data.lazy=false", name="eager")
    lazy, lazy_trainer = train(tmp_path, *CASES[case], "data.lazy=true", name="lazy")
    # Assert: the lazy run was lazy, and every number is the same: w_g, every metric, the state rows, L
    lazy_metrics = assert_lazy_equals_eager(tmp_path, lazy, lazy_trainer, eager, eager_trainer)
    assert "eval/acc_global_se" in lazy_metrics[-1] and "eval/naive_acc" in lazy_metrics[-1]
    if "data.val_fraction=0.25" in CASES[case]:
        assert "val/acc_personal" in lazy_metrics[-1]
    task: Any = lazy_trainer.task
    assert 0 < len(task.cache) <= cache_capacity(lazy_trainer.cfg) + COHORT


def test_lazy_rows_are_the_eager_tensors_rows(user: Any) -> None:
    # Every field a lazy client holds is its row of the eager tensor: values, dtype and shape
    cfg = load_config(None, [*RUN, "data.val_fraction=0.25", "data.lazy=true"])
    eager_cfg = load_config(None, [*RUN, "data.val_fraction=0.25", "data.lazy=false"])
    ids, rows = range(3, 11), torch.tensor([5, 0, 7, 0])
    lazy: Any = build_task(cfg, client_ids=ids, device=torch.device("cpu"))
    eager: Any = build_task(eager_cfg, client_ids=ids, device=torch.device("cpu"))
    for field in ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y", "class_frequencies", "class_mask"):
        got, want = getattr(lazy, field)[rows], getattr(eager, field)[rows]
        assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride(), field
        assert torch.equal(got, want), field
    assert lazy.train_counts == eager.train_counts
    assert torch.equal(lazy.test_counts, eager.test_counts) and torch.equal(lazy.val_counts, eager.val_counts)
    assert torch.equal(lazy.sample_counts, eager.sample_counts)
    assert sorted(set(user.CALLS)) == [*ids]  # the eager task's; the lazy one asked for rows 5, 0, 7 only
    assert user.CALLS.count(3) == 2 and user.CALLS.count(8) == 2 and user.CALLS.count(10) == 2


def test_start_up_asks_for_sizes_only_and_rounds_for_their_clients(
        tmp_path: Path, user: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: an explicit L (no smoothness pass)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=bound", *RUN, "data.lazy=true",
                             "algorithm.smoothness=4.0"])
    # Execute: build the Trainer (start-up)
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    task: Any = trainer.task
    # Assert: client_size once per hosted client, client(i) never; then the cohort once, and each
    # round only its sampled clients, each once; the cache within its bound
    assert user.CALLS == [] and list(range(M)) == user.SIZE_CALLS and len(task.cache) == 0
    assert ("data: lazy (data.lazy=true): each client made by the dataset's client(i) when sampled or evaluated"
            in capsys.readouterr().out)
    capacity = cache_capacity(cfg)
    cohort = set(eval_cohort(seed=5, num_clients=M, size=COHORT).tolist())
    assert capacity == 4 and task.cache.pinned_ids == cohort
    assert_rounds_make_only_their_clients(trainer, user.CALLS, seed=5, num_clients=M, capacity=capacity,
                                          cohort=cohort)
    assert list(range(M)) == user.SIZE_CALLS


def test_smoothness_auto_asks_for_each_client_once_and_keeps_none(tmp_path: Path, user: Any) -> None:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=auto", *RUN, "data.lazy=true"])
    trainer = Trainer(cfg, init_runtime(cfg), stop=StopRequest())
    assert sorted(user.CALLS) == list(range(M)) and len(trainer.task.cache) == 0  # type: ignore[attr-defined]


def one_line(error: type[Exception], run: Any) -> str:
    with pytest.raises(error) as raised:
        run()
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_dataset_without_client_size_is_one_line_and_auto_stays_eager(user: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*RUN, "data.kind=user_lazy:no_size"]
    cfg = load_config(None, [*args, "data.lazy=true"])
    expected = ("data.lazy=true needs the dataset's client_size(i) -> (n_train, n_test), a client's row counts "
                "without its arrays: data.kind=user_lazy:no_size returned a NoSize without client_size; add it, "
                "or set data.lazy=false")
    assert one_line(ConfigError, lambda: preflight(cfg)) == expected
    assert one_line(ConfigError, lambda: build_task(cfg, client_ids=range(M), device=torch.device("cpu"))) == expected
    assert user.CALLS == []  # refused before any client was asked for
    # auto: lazy above the threshold with a cohort for a dataset with client_size, eager without it
    monkeypatch.setattr(lazy_module, "LAZY_FROM", 10)
    assert not lazy_data(load_config(None, args)) and lazy_data(load_config(None, list(RUN)))
    assert not lazy_data(load_config(None, [*RUN, "train.eval_clients=all"]))
    task: Any = build_task(load_config(None, args), client_ids=range(M), device=torch.device("cpu"))
    assert not task.lazy and sorted(user.CALLS) == list(range(M))


def test_a_client_size_that_disagrees_with_the_client_is_one_line(user: Any) -> None:
    cfg = load_config(None, [*RUN, "data.lazy=true", "data.params.lie=2", "algorithm.smoothness=4.0"])
    task: Any = build_task(cfg, client_ids=range(M), device=torch.device("cpu"))
    message = one_line(ConfigError, lambda: task.train_x[torch.tensor([2])])
    n_test = len(user.ragged().client(2)[3])
    n_train = len(user.ragged().client(2)[1])
    assert message == (f"data.kind=user_lazy:ragged: client(2) returned {n_train} train and {n_test} test rows, but "
                       f"client_size(2) gave ({n_train + 1}, {n_test}): they must agree")
    # the launcher's preflight asks for the first client only, and checks it against its size
    lie0 = load_config(None, [*RUN, "data.lazy=true", "data.params.lie=0"])
    assert "client(0) returned" in one_line(ConfigError, lambda: preflight(lie0))
    user.CALLS.clear()
    preflight(cfg)
    assert user.CALLS == [0]


@pytest.mark.parametrize(("overrides", "error", "expected"), [
    (("data.kind=user_lazy:bad_size",), ConfigError,
     "data.kind=user_lazy:bad_size: client_size(3) returned (0, 2): every client needs at least one train and one "
     "test row"),
    (("data.params.num_classes=2.5",), ConfigError, "the dataset's num_classes must be an int >= 2, got 2.5"),
    (("data.val_fraction=0.95",), DataError, "training row(s), too few to hold validation rows out and still train"),
])
def test_start_up_errors_are_one_line(user: Any, overrides: tuple[str, ...], error: type[Exception],
                                      expected: str) -> None:
    cfg = load_config(None, [*RUN, "data.lazy=true", *overrides])
    assert expected in one_line(error, lambda: build_task(cfg, client_ids=range(M), device=torch.device("cpu")))
    assert user.CALLS == []


@pytest.mark.parametrize("lazy", ["false", "true"])
def test_acc_global_on_a_cohort_is_w_g_on_the_cohorts_test_rows(user: Any, lazy: str) -> None:
    # Prepare: a logreg w_g, and the cohort's members among a rank's clients 4..13
    cfg = load_config(None, [*RUN, f"data.lazy={lazy}", "algorithm.smoothness=4.0"])
    ids = range(4, 14)
    task: Any = build_task(cfg, client_ids=ids, device=torch.device("cpu"))
    w_g = torch.randn(task.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    members = [c for c in eval_cohort(seed=5, num_clients=M, size=COHORT).tolist() if c in ids]
    rows = torch.tensor([c - ids.start for c in members])
    # Execute
    sums = task.metric_sums(w_g.expand(len(rows), -1).clone(), w_g, rows)
    # Assert: against numpy on the dataset's own test arrays (weight (d, C), bias (C,))
    named = {k: v.numpy() for k, v in task.model_state_dict(w_g).items()}
    correct, losses, counts = [], [], []
    for c in members:
        _, _, x_test, y_test = user.ragged().client(c)
        logits = x_test.astype(np.float64) @ named["weight"] + named["bias"]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        correct.append(float((logits.argmax(axis=1) == y_test).sum()))
        losses.append(float(-np.maximum(log_probs[np.arange(len(y_test)), y_test], np.log(1e-12)).sum()))
        counts.append(float(len(y_test)))
    assert len(members) >= 1 and float(sums["num_test_global"]) == sum(counts)
    assert float(sums["correct_global"]) == sum(correct)
    assert float(sums["loss_global_sum"]) == pytest.approx(sum(losses), rel=1e-12)
    assert sums["client/acc_global"].tolist() == [correct, counts]
    assert sums["client/loss_global"][0].tolist() == pytest.approx(losses, rel=1e-12)


def test_a_resumed_lazy_run_is_the_uninterrupted_run(tmp_path: Path, user: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A checkpoint holds no client data: the resumed rank asks client(i) again for what it needs
    resumed = crash_and_resume(tmp_path, monkeypatch, *RUN, "algorithm.name=ditto", "data.lazy=true",
                               "algorithm.smoothness=4.0", "checkpoint.every=2", crash_round=3)
    assert resumed["resumed_from"] == [2]
    assert resumed["global_model_sha256"] == read_summary(tmp_path / "reference")["global_model_sha256"]
    assert resumed["final"] == read_summary(tmp_path / "reference")["final"]
