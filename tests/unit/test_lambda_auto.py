"""algorithm.lam = auto: the paper's rule, and a run that applies it after the warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pfl_dist.algorithms import theory_lambda
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from tests.helpers import run_inprocess


def test_rule_branches_meet_at_c() -> None:
    n, c = 200.0, 5.0
    boundary = n**-0.5
    assert theory_lambda(boundary, num_samples=n, c=c) == pytest.approx(c)
    assert theory_lambda(boundary * 1.0001, num_samples=n, c=c) == pytest.approx(c, rel=1e-3)
    assert theory_lambda(2.0, num_samples=n, c=c) == pytest.approx(5 / (200 * 4))  # heterogeneous: small lam
    assert theory_lambda(0.01, num_samples=n, c=c) == pytest.approx(5 / (200**0.5 * 0.01))  # similar: large lam
    assert theory_lambda(0.0, num_samples=n, c=c) > 1e9  # identical clients: FedAvg-like


AUTO_RUN = ("data.num_clients=6", "algorithm.lam=auto", "algorithm.num_local_steps=30", "train.num_rounds=10",
            "train.eval_every=5", "algorithm.lam_auto_warmup=0.3")


def test_auto_lambda_is_chosen_every_warmup_period_and_logged(tmp_path: Path) -> None:
    summary = run_inprocess(tmp_path, *AUTO_RUN)
    history = summary["lambda_auto_history"]
    assert [choice["round"] for choice in history] == [3, 6, 9]  # w = 3 rounds; not after the last round
    for choice in history:
        assert choice["num_samples"] == 200
        assert choice["lam"] == pytest.approx(theory_lambda(choice["R_hat"], num_samples=200, c=5.0))
    # Each estimate is taken under the lambda chosen before it, so they differ.
    assert len({choice["R_hat"] for choice in history}) == 3
    final = history[-1]
    assert summary["lambda_auto"] == final and summary["algorithm"]["lam"] == final["lam"]
    assert summary["algorithm"]["local_lr"] == pytest.approx(1 / (summary["algorithm"]["smoothness"] + final["lam"]))
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(p.step, p.value) for p in events.Scalars("lambda/lam")] == [
        (c["round"], pytest.approx(c["lam"])) for c in history]


def test_auto_lambda_without_refresh_is_chosen_once(tmp_path: Path) -> None:
    summary = run_inprocess(tmp_path, *AUTO_RUN, "algorithm.lam_auto_refresh=false")
    assert [choice["round"] for choice in summary["lambda_auto_history"]] == [3]
    assert summary["algorithm"]["lam"] == summary["lambda_auto"]["lam"]


def test_auto_lambda_is_only_for_fedclup() -> None:
    with pytest.raises(ConfigError, match="algorithm.lam 'auto' is only defined for fedclup, not fedavg"):
        load_config(None, ["algorithm.name=fedavg", "algorithm.lam=auto"])
