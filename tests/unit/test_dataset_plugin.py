"""Plug-in datasets (`data.kind: "package.module:factory"`, pfl_dist/tasks/dataset.py): every one-line
error, client(i) called only for a rank's own clients, the run identity (data.params and the
module's source), and a run on examples/my_dataset.py that learns.

The user modules are written to tmp_path, outside the repo, and imported from there."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.rundir import RunDirError, config_hash
from pfl_dist.tasks import TASKS, build_task, preflight, task_entry
from pfl_dist.tasks.dataset import DatasetTask
from tests.faults import compare_runs
from tests.helpers import REPO, crash_and_resume, read_metrics, run_cli, run_inprocess

USER_DATASETS = '''
import numpy as np

CALLS = []


class Toy:
    """4 clients of 3-feature samples, 3 classes; `broken` names what to get wrong."""

    def __init__(self, broken=None, num_clients=4, input_shape=(3,), num_classes=3):
        self.broken = broken
        self.num_clients = num_clients
        self.input_shape = input_shape
        self.num_classes = num_classes

    def client(self, i):
        CALLS.append(i)
        rng = np.random.default_rng(i)
        x, y = rng.normal(size=(8, 3)), np.arange(8) % 3
        x_test, y_test = rng.normal(size=(2, 3)), np.array([0, 1])
        b = self.broken
        if b == "raises":
            raise KeyError("no such client")
        if b == "three":
            return x, y, x_test
        if b == "lists":
            return x.tolist(), y, x_test, y_test
        if b == "int_features":
            x = np.zeros((8, 3), dtype=np.int64)
        if b == "shape":
            x = rng.normal(size=(8, 4))
        if b == "float_labels":
            y = y.astype(np.float64)
        if b == "short_labels":
            y = y[:5]
        if b == "label_range":
            y = np.full(8, 3)
        if b == "negative_label":
            y_test = np.array([-1, 0])
        if b == "no_train" and i == 2:
            x, y = x[:0], y[:0]
        if b == "no_test":
            x_test, y_test = x_test[:0], y_test[:0]
        if b == "nan":
            x[0, 0] = np.nan
        return x, y, x_test, y_test


def toy(**params):
    return Toy(**params)


def raises(**params):
    raise ValueError("cannot open the archive\\nsecond line")


def returns_int(**params):
    return 3


class NoClient:
    num_clients, input_shape, num_classes = 4, (3,), 3


def no_client(**params):
    return NoClient()


class LazyShape(NoClient):
    def client(self, i):
        raise AssertionError("not reached")

    @property
    def input_shape(self):
        raise OSError("header unreadable")


def lazy_shape(**params):
    return LazyShape()


class ClientNotCallable(NoClient):
    client = 3


def client_not_callable(**params):
    return ClientNotCallable()


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """user_data.py in a folder of its own on sys.path."""
    folder = tmp_path / "user"
    folder.mkdir()
    path = folder / "user_data.py"
    path.write_text(textwrap.dedent(USER_DATASETS))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("user_data", None)
    yield path
    sys.modules.pop("user_data", None)


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    yield
    sys.modules.pop("my_dataset", None)


def one_line_error(overrides: list[str]) -> str:
    """The ConfigError of the config, its preflight, or building all its clients on one rank."""
    with pytest.raises(ConfigError) as raised:
        cfg = load_config(None, overrides)
        preflight(cfg)
        build_task(cfg, client_ids=range(cfg.data.num_clients), device=torch.device("cpu"))
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    return message


TOY = ["data.kind=user_data:toy", "data.num_clients=4"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["data.kind=nosuchkind"], "data.kind must be one of cifar10, client_files, fashion_mnist, leaf, mnist, mnist5k, "
     "synthetic or a plug-in 'package.module:factory' (factory(**data.params) returning a federated dataset), "
     "got 'nosuchkind'"),
    (["data.kind=no_such_module:toy"], "data.kind=no_such_module:toy: cannot import no_such_module: No module named "
     "'no_such_module' (is its folder on PYTHONPATH?)"),
    (["data.kind=user_data:missing"], "data.kind=user_data:missing: module user_data has no 'missing'"),
    (["data.kind=user_data:NOT_CALLABLE"], "data.kind=user_data:NOT_CALLABLE: int object is not callable"),
    (["data.kind=user_data:raises"], "data.kind=user_data:raises: the factory called with data.params {} raised "
     "ValueError: cannot open the archive"),
    ([*TOY, "data.params.colour=1"], "data.kind=user_data:toy: the factory called with data.params {'colour': 1} "
     "raised TypeError: "),
    ([*TOY, "data.params.colour=1"], "unexpected keyword argument 'colour'"),
    (["data.kind=user_data:returns_int"], "data.kind=user_data:returns_int: the factory returned a int without "
     "num_clients, input_shape, num_classes, client"),
    (["data.kind=user_data:no_client"], "the factory returned a NoClient without client"),
    (["data.kind=user_data:lazy_shape"], "data.kind=user_data:lazy_shape: the dataset's input_shape raised OSError: "
     "header unreadable"),
    (["data.kind=user_data:client_not_callable"], "data.kind=user_data:client_not_callable: the dataset's client is "
     "not callable"),
    ([*TOY, "data.params.num_clients=0"], "the dataset's num_clients must be an int >= 1, got 0"),
    ([*TOY, "data.params.input_shape=[3, 0]"], "the dataset's input_shape must be a tuple of positive ints"),
    ([*TOY, "data.params.num_classes=1"], "the dataset's num_classes must be an int >= 2, got 1"),
    (["data.kind=user_data:toy", "data.num_clients=5"], "data.num_clients (5) must be <= the 4 clients of "
     "data.kind=user_data:toy"),
    ([*TOY, "data.params.broken=raises"], "data.kind=user_data:toy: client(0) raised KeyError: 'no such client'"),
    ([*TOY, "data.params.broken=three"], "client(0) must return 4 numpy arrays ('x_train', 'y_train', 'x_test', "
     "'y_test'), got a tuple of 3"),
    ([*TOY, "data.params.broken=lists"], "client(0) must return 4 numpy arrays"),
    ([*TOY, "data.params.broken=int_features"], "client(0): x_train must be floating-point features, got dtype int64"),
    ([*TOY, "data.params.broken=shape"], "client(0): x_train has shape (8, 4), expected (n, *input_shape) = (n, 3)"),
    ([*TOY, "data.params.broken=float_labels"], "client(0): y_train must be 8 integer labels (shape (8,)), got "
     "dtype float64 shape (8,)"),
    ([*TOY, "data.params.broken=short_labels"], "client(0): y_train must be 8 integer labels"),
    ([*TOY, "data.params.broken=label_range"], "client(0): y_train holds labels in [3, 3], outside [0, 2] "
     "(num_classes 3)"),
    ([*TOY, "data.params.broken=negative_label"], "client(0): y_test holds labels in [-1, 0], outside [0, 2]"),
    ([*TOY, "data.params.broken=no_train"], "data.kind=user_data:toy: client(2) has no train rows"),
    ([*TOY, "data.params.broken=no_test"], "client(0) has no test rows"),
    ([*TOY, "data.params.broken=nan"], "client(0): x_train holds NaN or infinite values"),
    (["data.params.n=1"], "data.kind 'synthetic' does not use data.params={'n': 1}: remove it"),
    (["data.kind=mnist5k", "data.params.n=1"], "data.kind 'mnist5k' does not use data.params={'n': 1}"),
    ([*TOY, "data.R=2.0"], "data.kind 'user_data:toy' does not use data.R=2.0: remove it"),
    ([*TOY, "data.partition=iid"], "data.kind 'user_data:toy' does not use data.partition='iid'"),
    ([*TOY, "model.kind=cnn", "algorithm.name=fedavg", "algorithm.local_lr=0.1"],
     "model.kind=cnn: the factory raised ValueError: not enough values to unpack (expected 3, got 1) for "
     "input_shape (3,), num_classes 3"),
])
def test_each_mistake_is_one_line(user_module: Path, overrides: list[str], expected: str) -> None:
    assert expected in one_line_error(overrides)


def test_the_launcher_checks_every_client_before_any_rank_starts(user_module: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute: 2 ranks of a dataset whose client 2 (rank 1's) has no train rows
    monkeypatch.setenv("PYTHONPATH", str(user_module.parent))
    result = run_cli("--nproc-per-node=2", *TOY, "data.params.broken=no_train", module="pfl_dist.launch")
    # Assert: exit 2 with the one line, and no rank started
    assert result.returncode == 2
    assert result.stderr.strip() == ("pfl_dist: error: data.kind=user_data:toy: client(2) has no train rows (every "
                                     "client needs at least one train and one test row)")
    assert result.stdout == ""


def test_data_params_keys_are_keyword_names() -> None:
    with pytest.raises(ConfigError, match=r"^data.params keys must be Python identifiers .*got 'a-b'$"):
        load_config(None, ["data.kind=m:f", "data.params.a-b=1"])


def test_a_plugin_kind_has_the_registry_path_of_a_builtin() -> None:
    entry = task_entry("user_data:toy")
    assert entry.target == "pfl_dist.tasks.dataset:DatasetTask" and entry.auto_model == "logreg"
    assert "data.params" not in entry.unused_keys and "data.num_clients" not in entry.unused_keys
    assert all("data.params" in task_entry(kind).unused_keys for kind in ("synthetic", "mnist", "client_files"))
    assert load_config(None, TOY).data.params == {}


def test_a_rank_asks_only_for_its_own_clients(user_module: Path) -> None:
    # Prepare
    cfg = load_config(None, TOY)
    import user_data  # type: ignore[import-not-found]

    # Execute: the rank hosting clients 2 and 3 of 4
    task = build_task(cfg, client_ids=range(2, 4), device=torch.device("cpu"))
    # Assert: client(i) was called for 2 and 3 only; their rows are the task's, the global test set is theirs
    assert user_data.CALLS == [2, 3]
    assert isinstance(task, DatasetTask) and task.train_counts == [8, 8]
    assert task.test_counts.tolist() == [2, 2] and task.global_y.tolist() == [0, 1, 0, 1]
    x, y, _, _ = user_data.toy().client(3)
    torch.testing.assert_close(task.train_x[1].double(), torch.from_numpy(x), atol=1e-6, rtol=0)
    assert task.train_y[1].tolist() == y.tolist()
    assert task.num_params == 3 * 3 + 3  # logreg on 3 features, 3 classes


def test_data_params_and_the_module_source_enter_the_identity(user_module: Path) -> None:
    # Prepare
    def identity_hash(*overrides: str) -> str:
        cfg = load_config(None, [*TOY, *overrides])
        cfg.set_world_size(1)
        return config_hash(cfg.identity())

    base = identity_hash()
    cfg = load_config(None, TOY)
    # Assert: the module's source is recorded; another data.params value is another run
    assert cfg.inputs["data.kind"].path == str(user_module)
    assert identity_hash() == base
    assert identity_hash("data.params.num_classes=3") != base  # the default, given explicitly, is a setting too
    assert identity_hash("data.params.num_classes=4") not in (base, identity_hash("data.params.num_classes=3"))
    # Execute: the dataset's code edited (no config key changes)
    user_module.write_text(user_module.read_text() + "\nEDITED = True\n")
    # Assert: another identity
    assert identity_hash() != base


def test_a_run_on_the_example_dataset_learns(tmp_path: Path, examples_on_path: None) -> None:
    # Execute: FedAvg with logreg on 8 clients of examples/my_dataset.py's blobs, 4 classes (chance 0.25)
    summary = run_inprocess(tmp_path, "data.kind=my_dataset:blobs", "data.num_clients=8", "data.params.noise=3.0",
                            "algorithm.name=fedavg", "algorithm.local_lr=0.1", "train.num_rounds=20",
                            "train.eval_every=5", "train.dtype=float64")
    # Assert: the global model learns from round 0 to the end, well above chance
    rounds = [m["metrics"] for m in read_metrics(tmp_path / "run") if "eval/acc_global" in m.get("metrics", {})]
    first, final = rounds[0]["eval/acc_global"], summary["final"]["eval/acc_global"]
    assert final > 0.5 and final > first + 0.1, (first, final)
    assert summary["final"]["eval/acc_personal"] > 0.5
    assert summary["config"]["data"]["params"] == {"noise": 3.0}
    assert set(summary["inputs"]) == {"data.kind"}


def test_example_clients_are_generated_from_seed_and_id_alone(examples_on_path: None) -> None:
    import my_dataset  # type: ignore[import-not-found]

    one, other = my_dataset.blobs(num_clients=8), my_dataset.blobs(num_clients=8)
    for a, b in zip(one.client(5), other.client(5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(one.client(5)[0], one.client(6)[0])
    # the label skew: client 5 draws mostly its own class 5 % 4 = 1
    assert np.bincount(one.client(5)[1], minlength=4).argmax() == 1


# --- every dataset entry (a built-in with a factory, and the example plug-in) ----------------


def check_dataset_kind(kind: str) -> None:
    """The generic checks of a federated dataset kind at its defaults: the launcher's preflight
    passes, a rank of its first two clients builds, every model it takes is sized for the
    dataset's shape and classes, and the data does not depend on which rank asks."""
    cfg = load_config(None, [f"data.kind={kind}", "data.num_clients=2"])
    preflight(cfg)
    task = build_task(cfg, client_ids=range(2), device=torch.device("cpu"))
    alone = build_task(cfg, client_ids=range(1, 2), device=torch.device("cpu"))
    assert isinstance(task, DatasetTask) and task.model.num_params == task.num_params
    torch.testing.assert_close(task.train_x[1, : task.train_counts[1]], alone.train_x[0], rtol=0, atol=0)
    assert task.num_classes >= 2 and int(task.train_y.max()) < task.num_classes


DATASET_KINDS = [*(kind for kind, entry in TASKS.items() if entry.factory is not None), "my_dataset:blobs"]


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_every_dataset_kind_passes_the_generic_checks(kind: str, examples_on_path: None) -> None:
    check_dataset_kind(kind)


def test_results_csv_leaves_the_data_keys_a_plugin_does_not_read_empty() -> None:
    from pfl_dist.sweep.results import _data_setting

    plugin = {"data": {"kind": "user_data:toy", "R": 1.0, "classes_per_client": 2}}
    assert _data_setting(plugin, "data.R") is None and _data_setting(plugin, "data.classes_per_client") is None
    assert _data_setting({"data": {"kind": "synthetic", "R": 1.0}}, "data.R") == 1.0


def test_a_float64_run_on_a_plugin_dataset_resumes_bitwise(tmp_path: Path, examples_on_path: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: an uninterrupted run, and one that crashes in round 4 (after round 2's checkpoint)
    overrides = ("data.kind=my_dataset:blobs", "data.num_clients=6", "data.params.noise=2.0", "algorithm.name=fedavg",
                 "algorithm.local_lr=0.1", "algorithm.batch_size=16", "algorithm.sample_fraction=0.5",
                 "train.dtype=float64", "train.num_rounds=6", "train.eval_every=2", "checkpoint.every=2")
    # Execute: the same command again resumes
    summary = crash_and_resume(tmp_path, monkeypatch, *overrides, crash_round=3)
    # Assert: resumed from round 2, the same run bit for bit; uplink = messages x logreg's float64 bytes
    assert summary["resumed_from"] == [2]
    assert compare_runs(tmp_path / "run", tmp_path / "reference") == []
    assert summary["comm"]["uplink_bytes"] == summary["participation"]["num_local_updates"] * (10 * 4 + 4) * 8


def test_the_config_check_and_the_identity_import_neither_torch_nor_the_dataset() -> None:
    # Execute: what the sweep driver does with a plug-in dataset's config, in a fresh interpreter
    code = ("import sys; from pfl_dist.config import load_config; "
            "cfg = load_config(None, ['data.kind=my_dataset:blobs', 'data.params.noise=2.0']); "
            "cfg.set_world_size(1); cfg.identity(); "
            "assert 'torch' not in sys.modules and 'my_dataset' not in sys.modules, sorted(sys.modules); "
            "print(cfg.inputs['data.kind'].path)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "examples")})
    # Assert: checked and identified from the source file, without running it
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(REPO / "examples" / "my_dataset.py")


def test_rerunning_after_editing_the_dataset_names_the_change(user_module: Path, tmp_path: Path) -> None:
    # Prepare: a finished run in a named run dir
    overrides = (*TOY, "algorithm.name=fedavg", "train.num_rounds=1", "train.eval_every=1")
    run_inprocess(tmp_path, *overrides, name="fixed")
    old = sha256_of(user_module)
    # Execute: the dataset's module edited, the same command again
    user_module.write_text(user_module.read_text() + "\nEDITED = True\n")
    sys.modules.pop("user_data", None)
    with pytest.raises(RunDirError) as refused:
        run_inprocess(tmp_path, *overrides, name="fixed")
    # Assert: refused, naming the module's source and its digests
    assert (f"data.kind's source changed (sha256 {old[:12]}.. -> {sha256_of(user_module)[:12]}..)"
            in str(refused.value)), str(refused.value)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
