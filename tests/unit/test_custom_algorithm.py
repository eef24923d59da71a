"""The algorithm extension point: a plug-in `module:Class` (examples/custom_algorithm.py's FedAvgM)
goes through the same registry lookup as a built-in, its `algorithm.params` are validated in one
line, and its server momentum is checkpointed and resumed bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfl_dist.algorithms import Algorithm, algorithm_class
from pfl_dist.config import AlgorithmConfig, load_config
from pfl_dist.errors import ConfigError
from pfl_dist.methods import METHODS, keys_read, method_info
from pfl_dist.plugins import class_declaration, literal_call, source_path
from pfl_dist.rundir import config_hash, result_config
from pfl_dist.train import run
from tests.helpers import crash_and_resume, read_summary, write_learnable_mnist
from tests.unit.test_algorithm_references import (
    CLIENTS,
    LR,
    ROUNDS,
    clients,
    config,
    run_production,
)
from tests.unit.test_checkpoint import assert_same_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FEDAVGM = "custom_algorithm:FedAvgM"
TOL = 1e-10


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


# --- the registry: a plug-in goes through the built-ins lookup (built-ins: test_algorithm_registry.py)


def test_the_plugin_class_declares_the_facts_the_torch_free_side_reads() -> None:
    path = source_path("custom_algorithm")
    assert path == EXAMPLES / "custom_algorithm.py"
    args, kwargs = literal_call(class_declaration(path, "info")["FedAvgM"], where=FEDAVGM)
    info = method_info(FEDAVGM)
    assert (info.name, info.label, info.params) == (FEDAVGM, "FedAvgM", (("momentum", 0.0), ("server_lr", 1.0)))
    assert args == ["fedavgm", "FedAvgM"] and kwargs["params"] == info.params
    cls = algorithm_class(FEDAVGM)
    assert issubclass(cls, Algorithm) and cls.name == FEDAVGM and cls.info == info
    assert FEDAVGM not in METHODS and "fedavgm" not in METHODS  # no collision with a built-in
    cfg = load_config(None, [f"algorithm.name={FEDAVGM}"]).to_dict()
    assert keys_read(info, cfg)[-4:] == ["algorithm.params", "algorithm.client_weights", "comm.codec",
                                         "comm.downlink_codec"]


@pytest.mark.parametrize(("overrides", "message"), [
    ([f"algorithm.name={FEDAVGM}", "algorithm.params.momentun=0.9"],
     "unknown config key 'algorithm.params.momentun' (did you mean 'algorithm.params.momentum'?): "
     "custom_algorithm:FedAvgM has no such parameter (it takes momentum, server_lr)"),
    ([f"algorithm.name={FEDAVGM}", "algorithm.params.momentum=fast"], "algorithm.params.momentum must be float, "
                                                                       "got 'fast'"),
    (["algorithm.params.momentum=0.9"], "unknown config key 'algorithm.params.momentum': fedclup has no such "
                                        "parameter (it takes none)"),
    (["algorithm.name=custom_algorithm:FedAvgN"], "custom_algorithm.py has no class FedAvgN declaring "
                                                  "'info = MethodInfo(...)' in its body"),
    (["algorithm.name=no_such_module:FedAvgM"], "algorithm.name=no_such_module:FedAvgM: cannot find module "
                                                "no_such_module (is its folder on PYTHONPATH?)"),
    (["algorithm.name=fedavgm"], "algorithm.name 'fedavgm' is not a built-in method (did you mean 'fedavg'?)"),
    (["algorithm.params=3"], "algorithm.params must be dict, got 3"),
])
def test_a_bad_algorithm_name_or_param_is_one_config_error_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_plugin_param_out_of_range_is_refused_by_the_class_in_one_line() -> None:
    cfg = AlgorithmConfig(name=FEDAVGM, params={"momentum": 1.0})
    with pytest.raises(ConfigError, match=r"^algorithm.params.momentum must be in \[0, 1\), got 1.0$"):
        algorithm_class(FEDAVGM)(cfg, smoothness=1.0)


def test_a_plugin_run_dir_name_has_no_colon_and_its_summary_keeps_the_name(tmp_path: Path) -> None:
    # Prepare: run.name=auto
    overrides = [f"run.out_dir={tmp_path}", f"algorithm.name={FEDAVGM}", "data.num_clients=2",
                 "data.samples_per_client=20", "train.num_rounds=1"]
    cfg = load_config(None, overrides)
    # Execute
    run(cfg)
    # Assert: module.Class-<hash8>, the hash of the config as given; summary.json names the plug-in
    # as the config does; a built-in's run dir is <name>-<hash8> as before
    cfg.set_world_size(1)
    identity = cfg.identity()
    assert [p.name for p in tmp_path.iterdir()] == [f"custom_algorithm.FedAvgM-{config_hash(identity)[:8]}"]
    summary = read_summary(cfg.run_dir)
    assert summary["config"]["algorithm"]["name"] == summary["method"]["name"] == FEDAVGM
    fedavg = load_config(None, [f"run.out_dir={tmp_path}", "algorithm.name=fedavg"])
    fedavg.set_world_size(1)
    assert fedavg.run_dir.name == f"fedavg-{config_hash(fedavg.identity())[:8]}"


def test_params_enter_the_run_identity_and_keep_old_identities() -> None:
    base = load_config(None, [f"algorithm.name={FEDAVGM}"]).to_dict()
    moved = load_config(None, [f"algorithm.name={FEDAVGM}", "algorithm.params.momentum=0.9"]).to_dict()
    assert result_config(base)["algorithm.params"] == {"momentum": 0.0, "server_lr": 1.0}  # defaults filled in
    assert result_config(moved)["algorithm.params"]["momentum"] == 0.9
    assert "algorithm.params" not in result_config(load_config(None, ["algorithm.name=fedavg"]).to_dict())


# --- FedAvgM against FedAvg and against the paper's rule -----------------------------------------


def test_fedavgm_at_momentum_0_equals_fedavg(tmp_path: Path, mnist_dir: Path) -> None:
    fedavg = run_production(config(tmp_path / "a", mnist_dir, "fedavg"))
    plugin = run_production(config(tmp_path / "b", mnist_dir, FEDAVGM, "run.name=fedavgm"))
    assert (plugin.global_model - fedavg.global_model).abs().max() <= TOL
    assert plugin.summary["method"]["name"] == FEDAVGM and plugin.summary["method"]["label"] == "FedAvgM"


def softmax_gradient(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d/dw of the mean cross-entropy of softmax(x W + b), w = [W (784x10) flat, b (10)]."""
    logits = x @ w[:7840].reshape(784, 10) + w[7840:]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return np.concatenate([(x.T @ p).ravel(), p.sum(axis=0)])


def test_fedavgm_equals_a_numpy_reference_of_the_papers_rule(tmp_path: Path, mnist_dir: Path) -> None:
    # Prepare: Hsu et al. 2019: v <- beta v + (w_g - mean_i w_i); w_g <- w_g - eta_s v
    beta, server_lr = 0.9, 0.7
    cfg = config(tmp_path, mnist_dir, FEDAVGM, "run.name=fedavgm", f"algorithm.params.momentum={beta}",
                 f"algorithm.params.server_lr={server_lr}")
    # Execute
    trainer = run_production(cfg)
    cs = clients(cfg, cnn=False)
    w, v = trainer.task.init_model().numpy().copy(), None
    n = np.array([len(c.y) for c in cs], dtype=np.float64)
    for t in range(ROUNDS):
        local = []
        for c in cs:
            wi = w.copy()
            x, y = c.x.numpy(), c.y.numpy()
            for b in c.batches(cfg, t, 1):
                idx = b.numpy()
                wi = wi - LR * softmax_gradient(wi, x[idx], y[idx])
            local.append(wi)
        delta = w - sum(ni * wi for ni, wi in zip(n, local, strict=True)) / n.sum()
        v = delta if v is None else beta * v + delta
        w = w - server_lr * v
    # Assert
    assert len(cs) == CLIENTS
    assert np.abs(trainer.global_model.numpy() - w).max() <= TOL
    assert np.abs(trainer.algorithm.state_dict()["velocity"].numpy() - v).max() <= TOL


def test_fedavgm_at_momentum_0_9_differs_from_fedavg(tmp_path: Path, mnist_dir: Path) -> None:
    fedavg = run_production(config(tmp_path / "a", mnist_dir, "fedavg"))
    plugin = run_production(config(tmp_path / "b", mnist_dir, FEDAVGM, "run.name=fedavgm",
                                   "algorithm.params.momentum=0.9"))
    assert (plugin.global_model - fedavg.global_model).abs().max() > 1e-3


# --- the momentum buffer resumes bit for bit -----------------------------------------------------

RESUME = ("data.num_clients=6", "data.samples_per_client=60", "train.num_rounds=10", "train.eval_every=3",
          "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.5", "checkpoint.every=5",
          "train.dtype=float64", f"algorithm.name={FEDAVGM}", "algorithm.params.momentum=0.9")


def test_a_run_resumed_at_half_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the reference, then a run that crashes in round 6, after the checkpoint of round 5
    # Execute: the run again resumes
    summary = crash_and_resume(tmp_path, monkeypatch, *RESUME, crash_round=5)
    # Assert: the same bytes; the velocity came from the checkpoint (a zero buffer would differ)
    assert summary["resumed_from"] == [5]
    assert_same_run(tmp_path / "run", tmp_path / "reference")
