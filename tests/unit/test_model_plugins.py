"""Plug-in models (`model.kind: "package.module:factory"`, pfl_dist/models/module.py): the batched
wrapper equals a per-client loop over copies of the module, the flat layout and head split, the
one-line errors, and whole runs with the plug-in (its exact bytes, final/global.pt, resume).

The user modules are written to tmp_path, outside the repo, and imported from there."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.models import WORKING_COPIES, model_entry
from pfl_dist.models.module import ModuleModel
from pfl_dist.resources import estimate_rank_bytes
from tests.faults import compare_runs
from tests.helpers import REPO, crash_and_resume, read_summary, run_inprocess, write_learnable_mnist

MNIST_SHAPE = (1, 28, 28)
MLP_PARAMS = 784 * 64 + 64 + 64 * 10 + 10  # examples/mlp.py: fc1 784 -> 64, fc2 64 -> 10, with biases

USER_MODELS = '''
import math

import torch
from torch import nn


class SmallConv(nn.Module):
    """conv3x3(4) - GroupNorm - ReLU - pool2 - fc: normalisation without buffers."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels, height, width = input_shape
        self.conv = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4 * (height // 2) * (width // 2), num_classes)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.head(x.flatten(1))


def small_conv(input_shape, num_classes):
    return SmallConv(input_shape, num_classes)


NOT_CALLABLE = 3


def returns_int(input_shape, num_classes):
    return 3


def raises(input_shape, num_classes):
    raise ValueError("no layout for this size\\nsecond line")


def no_parameters(input_shape, num_classes):
    return nn.Flatten()


def with_buffer(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes), nn.BatchNorm1d(num_classes))


def wrong_output(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))


def forward_raises(input_shape, num_classes):
    return nn.Linear(3, num_classes)
'''


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path/user on sys.path (and PYTHONPATH) holding `user_mlp` (examples/mlp.py as a user would
    copy it) and `user_models`; imported fresh by each test."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "user_mlp.py").write_text((REPO / "examples" / "mlp.py").read_text())
    (folder / "user_models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    yield folder
    for name in ("user_mlp", "user_models"):
        sys.modules.pop(name, None)


def build(kind: str, *, head: str | None = None, input_shape: tuple[int, ...] = MNIST_SHAPE,
          num_classes: int = 10) -> ModuleModel:
    return ModuleModel.from_entry(model_entry(kind, head=head), input_shape=input_shape, num_classes=num_classes)


# --- the wrapper -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "head"), [("user_mlp:mlp", None), ("user_models:small_conv", "conv.")])
def test_batched_outputs_and_gradients_equal_a_loop_over_module_copies(user_dir: Path, kind: str,
                                                                       head: str | None) -> None:
    # Prepare: 3 clients with different float64 models; the last one's batch is padded (weight 0)
    model = build(kind, head=head)
    params = torch.stack([model.init_params(seed, dtype=torch.float64) for seed in (0, 1, 2)])
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, 5, *MNIST_SHAPE, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 5), generator=generator)
    weights = torch.tensor([[0.2] * 5, [0.2] * 5, [0.25] * 4 + [0.0]], dtype=torch.float64)
    # Execute
    logits = model.logits(params, x)
    grads = model.weighted_grad(params, x, y, weights)
    # Assert: each client's row is what its own copy of the module computes, to 1e-10 in float64
    assert model.vectorize and model.num_params == params.shape[1]
    factory = model.factory
    for i in range(3):
        module = factory(MNIST_SHAPE, 10).double()
        module.load_state_dict(model.state_dict(params[i]))
        out = module(x[i])
        assert (logits[i] - out.detach()).abs().max() <= 1e-10
        (F.cross_entropy(out, y[i], reduction="none") * weights[i]).sum().backward()
        named = dict(module.named_parameters())
        expected = torch.cat([named[name].grad.flatten() for name in model.names])
        assert (grads[i] - expected).abs().max() <= 1e-10
        assert expected.abs().sum() > 0


def test_the_initial_model_is_the_factorys_own_under_the_seed(user_dir: Path) -> None:
    model = build("user_mlp:mlp")
    torch.manual_seed(12345)
    state = torch.random.get_rng_state()
    first, again, other = (model.init_params(seed, dtype=torch.float32) for seed in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)  # the process's RNG is left alone
    torch.manual_seed(7)
    module = model.factory(MNIST_SHAPE, 10)
    own = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert torch.equal(first, again) and torch.equal(first, own) and not torch.equal(first, other)
    assert model.init_params(7, dtype=torch.float64).dtype == torch.float64
    assert model.num_params == MLP_PARAMS


def test_the_head_is_moved_to_the_end_of_the_flat_row(user_dir: Path) -> None:
    model = build("user_models:small_conv", head="conv.")
    assert model.names == ["norm.weight", "norm.bias", "head.weight", "head.bias", "conv.weight", "conv.bias"]
    groups = model.groups()
    assert groups is not None and groups["head"] == slice(model.num_params - (4 * 9 + 4), model.num_params)
    row = model.init_params(0, dtype=torch.float64)
    module = model.factory(MNIST_SHAPE, 10).double()
    module.load_state_dict(model.state_dict(row))  # named tensors: the module's own layout
    assert torch.equal(module.conv.bias, row[-4:])
    assert build("user_mlp:mlp").groups() is None


@pytest.mark.parametrize(("kind", "head", "message"), [
    ("user_models:NOT_CALLABLE", None, r"^model\.kind=user_models:NOT_CALLABLE: 'NOT_CALLABLE' is not callable "
                                       r"\(its type is int\): name a factory\(input_shape, num_classes\)"),
    ("user_models:returns_int", None, r"^model\.kind=user_models:returns_int: the factory returned an object of "
                                      r"type int, not a torch\.nn\.Module$"),
    ("user_models:raises", None, r"^model\.kind=user_models:raises: the factory raised ValueError: no layout for "
                                 r"this size for input_shape \(1, 28, 28\), num_classes 10$"),
    ("user_models:no_parameters", None, r"^model\.kind=user_models:no_parameters: the module has no parameters"),
    ("user_models:with_buffer", None, r"^model\.kind=user_models:with_buffer: the module has a buffer "
                                      r"'2\.running_mean'"),
    ("user_models:wrong_output", None, r"^model\.kind=user_models:wrong_output: the module maps a batch of shape "
                                       r"\(2, 1, 28, 28\) to \(2, 11\), expected \(2, 10\)"),
    ("user_models:forward_raises", None, r"^model\.kind=user_models:forward_raises: the module's forward on a batch "
                                         r"of shape \(2, 1, 28, 28\) raised RuntimeError: "),
    ("user_models:missing", None, r"^model\.kind=user_models:missing: module user_models has no 'missing'$"),
    ("no_such_user_module:mlp", None, r"^model\.kind=no_such_user_module:mlp: cannot import no_such_user_module"),
    ("user_mlp:mlp", "fc9.", r"^model\.head 'fc9\.' matches no parameter of model\.kind user_mlp:mlp \(its "
                             r"parameters: fc1\.weight, fc1\.bias, fc2\.weight, fc2\.bias\)"),
    ("user_mlp:mlp", "fc", r"^model\.head 'fc' matches every parameter of model\.kind user_mlp:mlp"),
])
def test_a_bad_plugin_model_is_one_line(user_dir: Path, kind: str, head: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build(kind, head=head)
    assert "\n" not in str(caught.value)


# --- config checks (torch-free, before any process starts) ------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (("model.kind=user_mlp:mlp",), "model.kind 'user_mlp:mlp' does not apply to data.kind 'synthetic' (it takes "
                                   "'auto' or 'linear')"),
    (("model.kind=mlp",), "model.kind must be one of 'auto', 'linear', 'logreg', 'cnn' or a plug-in "
                          "'package.module:factory'"),
    (("data.kind=mnist", "model.kind=user_mlp:mlp", "algorithm.name=fedrep", "algorithm.local_lr=0.1"),
     "algorithm.name 'fedrep' needs a model with a body/head split; model.kind 'user_mlp:mlp' has none (name the "
     "head with model.head"),
    (("data.kind=mnist", "model.kind=cnn", "model.head=fc2.", "algorithm.name=fedrep", "algorithm.local_lr=0.1"),
     "model.head is for plug-in models (a plug-in 'package.module:factory'); model.kind 'cnn' has its own head, "
     "'fc2.': remove model.head"),
    (("data.kind=mnist", "model.kind=user_mlp:mlp", "model.head=fc2.", "algorithm.name=fedavg",
      "algorithm.local_lr=0.1"),
     "model.head is read only by the methods with a body/head split; algorithm.name 'fedavg' trains the whole "
     "model: remove model.head"),
    (("data.kind=mnist", "algorithm.name=fedper", "algorithm.local_lr=0.1"),
     "algorithm.name 'fedper' needs a model with a body/head split; model.kind 'auto' has none (data.kind 'mnist' "
     "has one with model.kind 'cnn' or a plug-in 'package.module:factory' with model.head)"),
    (("data.kind=mnist", "model.kind=user_mlp:mlp", "algorithm.name=fedavg"),
     "algorithm.smoothness 'auto' has no formula for model.kind 'user_mlp:mlp'"),
])
def test_config_errors_name_the_model_keys(overrides: tuple[str, ...], message: str) -> None:
    from pfl_dist.tasks.images import check_image_config

    with pytest.raises(ConfigError) as caught:
        check_image_config(load_config(None, list(overrides)))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_plugin_model_applies_to_image_data_and_reaches_the_memory_estimate(user_dir: Path,
                                                                            tmp_path: Path) -> None:
    cfg = load_config(None, ["data.kind=mnist", f"data.data_dir={tmp_path}", "data.num_clients=6",
                             "model.kind=user_mlp:mlp", "algorithm.local_lr=0.1", "algorithm.name=fedavg"])
    _, model_bytes = estimate_rank_bytes(cfg, world_size=2)
    # 3 clients per rank, float32: the working copies and FedAvg's one kept local model
    assert model_bytes == (WORKING_COPIES + 1) * 3 * MLP_PARAMS * 4


# --- whole runs --------------------------------------------------------------------------------

ROUNDS = 4
RUN = ("data.kind=mnist", "data.num_partitions=30", "data.num_clients=4", "model.kind=user_mlp:mlp",
       "algorithm.batch_size=32", "algorithm.local_epochs=1", "algorithm.local_lr=0.05",
       "algorithm.sample_fraction=0.5",
       "train.dtype=float64", f"train.num_rounds={ROUNDS}", "train.eval_every=2", "checkpoint.every=2")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.mark.parametrize(("method", "sent"), [("fedavg", MLP_PARAMS), ("fedrep", 784 * 64 + 64)])
def test_a_float64_plugin_run_counts_its_exact_bytes_and_resumes_bitwise(
        user_dir: Path, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str,
        sent: int) -> None:
    # Prepare: an uninterrupted run, and one that crashes in round 4 (after round 2's checkpoint)
    overrides = (*RUN, f"data.data_dir={mnist_dir}", f"algorithm.name={method}",
                 *(["model.head=fc2."] if method == "fedrep" else []))
    # Execute: the same command again resumes
    summary = crash_and_resume(tmp_path, monkeypatch, *overrides, crash_round=3)
    # Assert: resumed from round 2, the same run bit for bit
    assert summary["resumed_from"] == [2]
    assert compare_runs(tmp_path / "run", tmp_path / "reference") == []
    # the uplink: one float64 message of the sent parameters (FedRep: the body, fc1) per local update
    assert summary["comm"]["uplink_bytes"] == summary["participation"]["num_local_updates"] * sent * 8
    assert summary["participation"]["num_local_updates"] == ROUNDS * 2
    # final/global.pt is the module's own state dict
    module = importlib.import_module("user_mlp").mlp(MNIST_SHAPE, 10).double()
    module.load_state_dict(torch.load(tmp_path / "run" / "final" / "global.pt", weights_only=True))
    assert read_summary(tmp_path / "reference")["final"]["eval/acc_personal"] > 0.5


def test_a_plugin_runs_final_global_pt_is_its_next_runs_init_file(user_dir: Path, tmp_path: Path,
                                                                  mnist_dir: Path) -> None:
    from pfl_dist.models.init_file import initial_model
    from pfl_dist.tasks.images import ImageTask

    overrides = (*RUN, f"data.data_dir={mnist_dir}", "algorithm.name=fedavg", "train.num_rounds=1",
                 "train.eval_every=1")
    run_inprocess(tmp_path, *overrides, name="first")
    saved_path = tmp_path / "first" / "final" / "global.pt"
    summary = run_inprocess(tmp_path, *overrides, f"model.init_file={saved_path}", name="second")
    assert summary["inputs"]["model.init_file"]  # its digest enters the run's identity
    cfg = load_config(None, [*overrides, f"model.init_file={saved_path}"])
    task = ImageTask(cfg, client_ids=range(2), device=torch.device("cpu"), dtype=torch.float64)
    start = task.model_state_dict(initial_model(cfg.model.init_file, task))
    saved = torch.load(saved_path, weights_only=True)
    assert list(start) == list(saved) and all(torch.equal(start[name], saved[name]) for name in saved)
    assert not torch.equal(initial_model(cfg.model.init_file, task), task.init_model())
