"""FedAdam (pfl_dist/algorithms/adaptive.py) against a numpy reference written from Reddi et al.
2021, Algorithm 2, and its server moments resumed bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfl_dist.algorithms import algorithm_class
from pfl_dist.config import AlgorithmConfig
from pfl_dist.errors import ConfigError
from tests.helpers import crash_and_resume, write_learnable_mnist
from tests.unit.test_algorithm_references import CLIENTS, LR, ROUNDS, TOL, clients, config, run_production
from tests.unit.test_checkpoint import assert_same_run
from tests.unit.test_custom_algorithm import softmax_gradient


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_mnist(tmp_path_factory.mktemp("mnist"))


def test_fedadam_equals_a_numpy_reference_of_the_papers_algorithm_2(tmp_path: Path, mnist_dir: Path) -> None:
    # Prepare: Delta = mean_i w_i - x; m, v: Adam's moments (v_{-1} = tau^2); x += eta m / (sqrt(v) + tau)
    eta, beta1, beta2, tau = 0.3, 0.8, 0.95, 0.01
    cfg = config(tmp_path, mnist_dir, "fedadam", f"algorithm.params.server_lr={eta}",
                 f"algorithm.params.beta1={beta1}", f"algorithm.params.beta2={beta2}", f"algorithm.params.tau={tau}")
    # Execute
    trainer = run_production(cfg)
    cs = clients(cfg, cnn=False)
    x = trainer.task.init_model().numpy().copy()
    m, v = np.zeros_like(x), np.full_like(x, tau**2)
    for t in range(ROUNDS):
        local = []
        for c in cs:
            wi = x.copy()
            for b in c.batches(cfg, t, 1):
                idx = b.numpy()
                wi = wi - LR * softmax_gradient(wi, c.x.numpy()[idx], c.y.numpy()[idx])
            local.append(wi)
        delta = np.mean(local, axis=0) - x
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2
        x = x + eta * m / (np.sqrt(v) + tau)
    # Assert
    assert len(cs) == CLIENTS
    assert np.abs(trainer.global_model.numpy() - x).max() <= TOL
    assert np.abs(trainer.algorithm.state_dict()["moments"].numpy() - np.stack([m, v])).max() <= TOL
    assert trainer.algorithm.describe()["client_weights"] == "uniform"


@pytest.mark.parametrize(("params", "message"), [({"beta1": 1.0}, r"algorithm.params.beta1 must be in \[0, 1\)"),
                                                 ({"tau": 0.0}, "algorithm.params.tau must be > 0")])
def test_a_param_out_of_range_is_one_line(params: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}, got "):
        algorithm_class("fedadam")(AlgorithmConfig(name="fedadam", params=params), smoothness=1.0)


RESUME = ("data.num_clients=6", "data.samples_per_client=60", "train.num_rounds=10", "train.eval_every=3",
          "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.5", "checkpoint.every=5",
          "train.dtype=float64", "algorithm.name=fedadam")


def test_a_run_resumed_at_half_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = crash_and_resume(tmp_path, monkeypatch, *RESUME, crash_round=5)
    assert summary["resumed_from"] == [5]
    assert_same_run(tmp_path / "run", tmp_path / "reference")  # zeroed moments would differ
