"""The model registry agrees with the models (pfl_dist/models/__init__.py): every built-in entry
builds, and what it declares (the tasks it serves, its body/head split, its smoothness bound, its
parameter count and memory estimate, its factory) is what the built model and the config checks do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.data import cifar, leaf
from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE
from pfl_dist.errors import ConfigError
from pfl_dist.models import MODELS, MODULE_TASKS, ModelEntry, model_entry
from pfl_dist.models.module import ModuleModel, build_module
from pfl_dist.tasks import TASKS, check_task_config, task_entry
from pfl_dist.tasks.client_files import _build_model as client_files_model
from pfl_dist.tasks.images import ImageModel, build_image_model, check_image_config
from pfl_dist.tasks.synthetic import SyntheticTask

IMAGE_SHAPES = [(MNIST_INPUT_SHAPE, MNIST_CLASSES), (cifar.INPUT_SHAPE, cifar.NUM_CLASSES),
                (leaf.INPUT_SHAPE, leaf.NUM_CLASSES)]
ENTRIES = sorted(MODELS)


def data_kinds_of(target: str) -> list[str]:
    return [kind for kind, entry in TASKS.items() if entry.target == target]


@pytest.mark.parametrize("kind", ENTRIES)
@pytest.mark.parametrize("data_kind", sorted(TASKS))
def test_the_config_check_accepts_exactly_the_tasks_an_entry_serves(kind: str, data_kind: str,
                                                                    tmp_path: Path) -> None:
    overrides = [f"data.kind={data_kind}", f"model.kind={kind}", "algorithm.local_lr=0.1", "algorithm.name=fedavg"]
    serves = TASKS[data_kind].target in MODELS[kind].tasks
    if serves:
        check_task_config(load_config(None, overrides))
    else:
        with pytest.raises(ConfigError, match=f"model.kind '{kind}' does not apply to data.kind '{data_kind}'"):
            load_config(None, overrides)


def test_every_task_is_served_by_its_auto_model_and_every_named_task_exists() -> None:
    targets = {entry.target for entry in (*TASKS.values(), task_entry("my_dataset:blobs"))}
    for entry in (*TASKS.values(), task_entry("my_dataset:blobs")):
        assert entry.target in MODELS[entry.auto_model].tasks
    assert {task for entry in MODELS.values() for task in entry.tasks} | set(MODULE_TASKS) <= targets


def _image_models(entry: ModelEntry) -> list[tuple[tuple[int, ...], int, ImageModel]]:
    return [(shape, classes, build_image_model(entry.kind, input_shape=shape, num_classes=classes))
            for shape, classes in IMAGE_SHAPES]


@pytest.mark.parametrize("kind", ENTRIES)
def test_declared_sizes_heads_and_factories_are_the_built_models(kind: str) -> None:
    entry = MODELS[kind]
    image_task = "pfl_dist.tasks.images:ImageTask"
    built = _image_models(entry) if image_task in entry.tasks else []
    for shape, classes, model in built:
        # the parameter count and the memory estimate
        assert entry.num_params(shape, classes) == model.num_params
        assert entry.memory_bytes(shape, classes, clients=5, value_bytes=8, copies=3) == 3 * 5 * model.num_params * 8
        # a factory <=> a module model, whose module is the factory's
        assert (entry.factory is not None) == isinstance(model, ModuleModel)
        if isinstance(model, ModuleModel):
            assert entry.factory is not None
            module = build_module(entry.factory, input_shape=shape, num_classes=classes)
            assert sum(p.numel() for p in module.parameters()) == model.num_params
            named = dict(module.named_parameters())
            head = model.groups()
            # the body/head split: the head prefix's parameters are the trailing slice
            assert (head is not None) == (entry.head is not None)
            if head is not None and entry.head is not None:
                head_size = sum(p.numel() for name, p in named.items() if name.startswith(entry.head))
                assert 0 < head_size < model.num_params
                assert head["head"] == slice(model.num_params - head_size, model.num_params)
        else:
            assert entry.head is None
    if "pfl_dist.tasks.synthetic:SyntheticTask" in entry.tasks:
        cfg = load_config(None, ["data.num_clients=2", "data.samples_per_client=5", "data.dim=7",
                                 "data.num_classes=3", f"model.kind={kind}"])
        task = SyntheticTask(cfg, client_ids=range(2), device=torch.device("cpu"), dtype=torch.float64)
        assert entry.num_params((7,), 3) == task.num_params and task.parameter_groups() is None
        assert entry.head is None
    if "pfl_dist.tasks.client_files:ClientFilesTask" in entry.tasks:
        cfg = load_config(None, ["data.kind=client_files", "data.dim=7", "data.num_classes=3",
                                 f"model.kind={kind}"])
        assert entry.num_params((7,), 3) == client_files_model(cfg).num_params


@pytest.mark.parametrize("kind", ENTRIES)
def test_the_smoothness_flag_is_what_the_image_check_allows(kind: str) -> None:
    if "pfl_dist.tasks.images:ImageTask" not in MODELS[kind].tasks:
        pytest.skip("not an image model")
    cfg = load_config(None, ["data.kind=mnist", f"model.kind={kind}", "algorithm.local_lr=auto",
                             "algorithm.smoothness=auto", "algorithm.name=fedavg"])
    if MODELS[kind].smoothness:
        check_image_config(cfg)
    else:
        with pytest.raises(ConfigError, match="has no formula"):
            check_image_config(cfg)


def test_built_in_and_plugin_kinds_take_the_same_path() -> None:
    # a built-in module kind is a factory name like a plug-in's; model_entry returns the registry's entry
    assert model_entry("cnn") is MODELS["cnn"] and MODELS["cnn"].factory == "pfl_dist.models.cnn:paper_cnn"
    plugin = model_entry("pfl_dist.models.cnn:paper_cnn", head="fc2.")
    assert plugin.plugin and not MODELS["cnn"].plugin
    assert plugin.tasks == MODELS["cnn"].tasks == MODULE_TASKS
    assert plugin.num_params(MNIST_INPUT_SHAPE, 10) == MODELS["cnn"].num_params(MNIST_INPUT_SHAPE, 10)
    as_plugin = build_image_model("pfl_dist.models.cnn:paper_cnn", input_shape=MNIST_INPUT_SHAPE, num_classes=10,
                                  head="fc2.")
    built_in = build_image_model("cnn", input_shape=MNIST_INPUT_SHAPE, num_classes=10)
    assert isinstance(as_plugin, ModuleModel) and isinstance(built_in, ModuleModel)
    assert as_plugin.names == built_in.names and as_plugin.groups() == built_in.groups()
    assert torch.equal(as_plugin.init_params(3, dtype=torch.float64), built_in.init_params(3, dtype=torch.float64))
