"""docs/EXTENDING.md, "## A model": every example in it runs. The factory is examples/mlp.py's code
and builds through the plug-in wrapper; the documented commands train (shrunk to one round of two
clients); the documented registry entry, added as a built-in, works with no other change."""

from __future__ import annotations

import importlib
import math
import shlex
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfl_dist.config import load_config
from pfl_dist.data.images import MNIST_CLASSES, MNIST_INPUT_SHAPE
from pfl_dist.models import MODELS, MODULE_TASKS, ModelEntry
from pfl_dist.models.module import ModuleModel
from pfl_dist.tasks.images import build_image_model
from tests.helpers import HAS_FASHION, REPO, extending_blocks, read_summary, run_cli
from tests.unit import test_model_registry as registry_tests


def test_the_documented_factory_is_examples_mlp_and_builds() -> None:
    (factory_code, _entry_code) = extending_blocks("A model", "python")
    example = (REPO / "examples" / "mlp.py").read_text()
    assert factory_code in example  # the doc shows the shipped file's code
    namespace: dict[str, object] = {}
    exec(compile(example, "examples/mlp.py", "exec"), namespace)  # noqa: S102 (the repo's own example)
    model = ModuleModel(namespace["mlp"], kind="mlp:mlp", input_shape=MNIST_INPUT_SHAPE,  # type: ignore[arg-type]
                        num_classes=MNIST_CLASSES, head="fc2.")
    assert model.num_params == 784 * 64 + 64 + 64 * 10 + 10 and model.vectorize


@pytest.mark.skipif(not HAS_FASHION, reason="Debian package dataset-fashion-mnist not installed (make install)")
@pytest.mark.parametrize("line", extending_blocks("A model", "sh")[0].strip().splitlines())
def test_the_documented_commands_train(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, python, dash_m, module, *args = shlex.split(line)
    assert (env, python, dash_m, module) == ("PYTHONPATH=examples", "python", "-m", "pfl_dist.train")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "examples"))
    shrink = [f"run.out_dir={tmp_path}", "data.num_clients=2", "train.num_rounds=1", "train.eval_every=1",
              "algorithm.local_epochs=1"]
    result = run_cli(*args, *shrink, timeout=300)
    assert result.returncode == 0, result.stderr
    name = next(arg.split("=", 1)[1] for arg in args if arg.startswith("run.name="))
    summary = read_summary(tmp_path / name)
    assert summary["config"]["model"]["kind"] == "mlp:mlp"
    assert summary["comm"]["uplink_bytes"] > 0


@pytest.fixture
def mlp_as_builtin_module() -> Iterator[None]:
    """examples/mlp.py as if it were the file pfl_dist/models/mlp.py."""
    module = types.ModuleType("pfl_dist.models.mlp")
    exec(compile((REPO / "examples" / "mlp.py").read_text(), "pfl_dist/models/mlp.py", "exec"),  # noqa: S102
         module.__dict__)
    sys.modules["pfl_dist.models.mlp"] = module
    yield
    sys.modules.pop("pfl_dist.models.mlp", None)
    importlib.invalidate_caches()


def test_the_documented_builtin_entry_is_all_a_builtin_model_needs(mlp_as_builtin_module: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the documented MODELS entry, added to the registry
    (_factory_code, entry_code) = extending_blocks("A model", "python")
    entries = eval("{" + entry_code + "}", {"ModelEntry": ModelEntry, "MODULE_TASKS": MODULE_TASKS,  # noqa: S307
                                            "math": math})
    monkeypatch.setitem(MODELS, "mlp", entries["mlp"])
    # Execute: configs and models of the new kind
    fedrep = load_config(None, ["data.kind=mnist", "model.kind=mlp", "algorithm.name=fedrep",
                                "algorithm.local_lr=0.1"])
    model = build_image_model(fedrep.model.kind, input_shape=MNIST_INPUT_SHAPE, num_classes=MNIST_CLASSES)
    # Assert: accepted for images (FedRep with its head), refused elsewhere, and the registry's
    # agreement test holds for it
    assert isinstance(model, ModuleModel) and model.groups() is not None
    with pytest.raises(Exception, match="model.kind 'mlp' does not apply to data.kind 'synthetic'"):
        load_config(None, ["model.kind=mlp"])
    registry_tests.test_declared_sizes_heads_and_factories_are_the_built_models("mlp")
