"""Single-process training runs (no process group): the method's limits. The paper's claims at the
paper's shape are slow runs in tests/integration/test_paper_shape.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pfl_dist.algorithms import FedAvgFT, LocalTrain
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.errors import ClientDivergenceError, NonFiniteMetricError
from pfl_dist.runtime import init_runtime
from pfl_dist.train import Trainer, run_session
from pfl_dist.train import main as train_main
from tests.helpers import REPO, make_client_diverge, read_metrics, read_summary, run_inprocess, run_main

SMALL = ("data.num_clients=6", "data.samples_per_client=80", "algorithm.num_local_steps=30", "train.num_rounds=8",
         "train.eval_every=4")


def train_models(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", *SMALL, *overrides])
    return run_session(cfg, init_runtime(cfg), StopRequest())


def test_lambda_zero_leaves_local_models_equal_to_pure_local_training(tmp_path: Path) -> None:
    fedclup = train_models(tmp_path / "a", "algorithm.name=fedclup", "algorithm.lam=0")
    local = train_models(tmp_path / "b", "algorithm.name=local", "algorithm.lam=0")
    assert fedclup.algorithm.local_lr == local.algorithm.local_lr
    assert torch.equal(fedclup.local_models, local.local_models)  # bitwise: w_g never enters
    assert fedclup.ledger.total[next(iter(fedclup.ledger.total))].num_collectives == 8


def test_huge_lambda_behaves_like_fedavg(tmp_path: Path) -> None:
    """As lam -> inf, FedCLUP's round is one GD step of size 1/L on the global loss, which is
    exactly FedAvg with one local step of lr 1/L (full participation)."""
    fedclup = train_models(tmp_path / "a", "algorithm.name=fedclup", "algorithm.lam=1e6", "train.dtype=float64")
    smoothness = fedclup.algorithm.smoothness
    fedavg = train_models(tmp_path / "b", "algorithm.name=fedavg", "algorithm.num_local_steps=1",
                          f"algorithm.local_lr={1 / smoothness}", "train.dtype=float64")
    moved = (fedavg.global_model - fedavg.task.init_model()).abs().max()
    diff = (fedclup.global_model - fedavg.global_model).abs().max()
    assert float(moved) > 0.1  # both really trained
    assert float(diff) < 1e-4 * float(moved)
    moderate = train_models(tmp_path / "c", "algorithm.name=fedclup", "algorithm.lam=1", "train.dtype=float64")
    assert float((moderate.global_model - fedavg.global_model).abs().max()) > 100 * float(diff)


def test_metrics_file_has_one_record_per_evaluated_round(tmp_path: Path) -> None:
    run_inprocess(tmp_path, *SMALL, "train.num_rounds=9", "train.eval_every=4")
    records = read_metrics(tmp_path / "run")
    assert [r["round"] for r in records] == [0, 4, 8, 9]
    assert records[0]["comm"]["uplink_bytes"] == 0
    assert records[-1]["comm"]["uplink_bytes"] == 9 * 6 * 80
    assert {"eval/ITR", "eval/ATR", "train/acc_personal", "train/acc_global", "train/loss_personal",
            "train/loss_global"} <= set(records[-1]["metrics"])


def test_divergence_names_round_and_client(tmp_path: Path) -> None:
    result = run_main("--config", str(REPO / "configs/default.yaml"), f"run.out_dir={tmp_path}",
                     "algorithm.local_lr=1e30", "train.num_rounds=3")
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("pfl_dist: error: round 1: client 0 diverged")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*/summary.json"))


def test_ditto_at_lambda_200_with_default_steps_trains(tmp_path: Path) -> None:
    # Execute: personal_lr auto is 1/(L + lam) (it was 1/L, which diverged in round 1: issue 21)
    summary = run_inprocess(tmp_path, *SMALL, "algorithm.name=ditto", "algorithm.lam=200")
    # Assert
    first, algo = read_metrics(tmp_path / "run")[0]["metrics"], summary["algorithm"]
    assert algo["personal_lr"] == pytest.approx(1 / (algo["smoothness"] + 200))
    assert summary["final"]["loss_personal"] < 0.2 * first["train/loss_personal"]
    assert summary["final"]["acc_personal"] > 0.7


def test_local_training_names_its_own_diverged_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: LocalTrain has no per-round collective; make client 4's model NaN in round 2
    make_client_diverge(monkeypatch, LocalTrain, round_idx=1, row=4)
    # Execute / Assert: the rank that hosts it names it (every rank prints its own line)
    with pytest.raises(ClientDivergenceError, match=r"^round 2: client 4 diverged: the model it sends is non-finite; "
                                                    r"lower algorithm.local_lr$") as raised:
        train_models(tmp_path, "algorithm.name=local")
    assert raised.value.rank_specific and raised.value.exit_code == 3


def test_a_non_finite_fine_tuned_model_names_personal_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: FedAvg-FT personalizes at evaluation, with algorithm.personal_lr
    def personal_models(*args: object, **kwargs: object) -> torch.Tensor:
        return torch.full((6, 20), float("nan"))

    monkeypatch.setattr(FedAvgFT, "personal_models", personal_models)
    # Execute / Assert
    with pytest.raises(NonFiniteMetricError, match=r"^round 0: metric \w+ is nan \(non-finite\); check data.R, "
                                                   r"data.center_scale, algorithm.local_lr and algorithm.personal_lr$"):
        train_models(tmp_path, "algorithm.name=fedavg_ft")


@pytest.mark.parametrize("name", ["fedclup", "fedavg", "fedprox", "local"])
def test_every_algorithm_learns(tmp_path: Path, name: str) -> None:
    summary = run_inprocess(tmp_path, *SMALL, f"algorithm.name={name}")
    first = read_metrics(tmp_path / "run")[0]["metrics"]
    assert summary["final"]["loss_personal"] < 0.5 * first["train/loss_personal"]
    assert summary["final"]["acc_personal"] > 0.85


def test_two_runs_with_different_lambda_and_no_run_name_keep_both_results(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """run.name=auto (the default) names the run dir <method>-<config hash>: the README's commands
    no longer overwrite each other, and the same command again trains nothing."""
    base = ["--config", str(REPO / "configs/default.yaml"), f"run.out_dir={tmp_path}", "train.num_rounds=3",
            "data.num_clients=2"]
    assert train_main([*base, "algorithm.lam=0.1"]) == 0
    assert train_main([*base, "algorithm.lam=0.2"]) == 0
    summaries = {p.parent.name: read_summary(p.parent) for p in tmp_path.glob("*/summary.json")}
    assert sorted(s["config"]["algorithm"]["lam"] for s in summaries.values()) == [0.1, 0.2]
    assert all(name.startswith("fedclup-") and len(name) == len("fedclup-") + 8 for name in summaries)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train_main([*base, "algorithm.lam=0.2"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
