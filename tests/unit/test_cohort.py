"""Evaluation on a cohort (train.eval_clients): the cohort rule, the run identity, and a run's
metrics and standard errors against a numpy reference computed from per-client accuracies."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfl_dist import sampling
from pfl_dist.algorithms import Algorithm
from pfl_dist.algorithms.classic import FedAvg
from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.synthetic import generate_client
from pfl_dist.evaluation import (
    HISTOGRAM_BINS,
    accuracy_moments,
    cohort_distribution,
    ratio_moments,
    ratio_standard_error,
)
from pfl_dist.methods import METHODS
from pfl_dist.rundir import changed_keys, config_hash, result_config
from pfl_dist.runtime import init_runtime
from pfl_dist.sampling import (
    AUTO_COHORT,
    EVAL_ALL_UP_TO,
    client_block,
    eval_cohort,
    eval_cohort_size,
    participation_counts,
)
from pfl_dist.train import Trainer, run_session
from tests.faults import scalar_points
from tests.helpers import crash_and_resume, read_metrics, read_summary

M, N = 30, 12
RUN = (f"data.num_clients={M}", "data.samples_per_client=40", "data.R=1.5", "run.seed=5",
       "algorithm.name=fedclup", "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.5",
       "train.num_rounds=4", "train.eval_every=2", "train.dtype=float64")


def hosted(rank: int, world_size: int, cohort: np.ndarray, num_clients: int) -> list[int]:
    """The cohort members rank `rank` hosts (its clients' ids), as the Trainer picks its rows."""
    block = client_block(rank, world_size=world_size, num_clients=num_clients)
    return [int(c) for c in cohort if block.start <= c < block.stop]


@pytest.mark.parametrize(("num_clients", "size", "seed"), [(30, 12, 5), (1000, 100, 0), (7, 6, 3), (10**8, 1000, 9)])
def test_cohort_is_the_same_for_world_sizes_1_to_4_and_has_no_duplicates(num_clients: int, size: int,
                                                                          seed: int) -> None:
    cohort = eval_cohort(seed=seed, num_clients=num_clients, size=size)
    assert len(cohort) == size and len(np.unique(cohort)) == size and np.all(np.diff(cohort) > 0)
    assert cohort[0] >= 0 and cohort[-1] < num_clients
    for world_size in (1, 2, 3, 4):  # each rank evaluates the members it hosts: together, the cohort
        members = [c for rank in range(world_size) for c in hosted(rank, world_size, cohort, num_clients)]
        assert members == cohort.tolist()
    assert np.array_equal(cohort, eval_cohort(seed=seed, num_clients=num_clients, size=size))
    assert not np.array_equal(cohort, eval_cohort(seed=seed + 1, num_clients=num_clients, size=size))


def test_cohort_size_rule() -> None:
    assert eval_cohort_size("all", 10**8) is None
    assert eval_cohort_size("auto", EVAL_ALL_UP_TO) is None  # every run from before the key
    assert eval_cohort_size("auto", EVAL_ALL_UP_TO + 1) == AUTO_COHORT
    assert eval_cohort_size(12, 30) == 12
    assert eval_cohort_size(30, 30) is None and eval_cohort_size(31, 30) is None  # N >= m: every client


def test_the_key_enters_the_identity_only_when_it_changes_results() -> None:
    def hashed(*overrides: str) -> str:
        return config_hash(load_config(None, [f"data.num_clients={M}", *overrides]).to_dict())

    def without_key(*overrides: str) -> str:  # the config of a run made before the key existed
        config = load_config(None, [f"data.num_clients={M}", *overrides]).to_dict()
        del config["train"]["eval_clients"]
        return config_hash(config)

    before = without_key()
    assert hashed() == hashed("train.eval_clients=all") == hashed(f"train.eval_clients={M}") == before
    assert hashed(f"train.eval_clients={N}") != before
    saved = result_config(load_config(None, [f"data.num_clients={M}"]).to_dict())
    now = result_config(load_config(None, [f"data.num_clients={M}", f"train.eval_clients={N}"]).to_dict())
    assert changed_keys(saved, now) == [f"train.eval_clients was 'auto', now {N}"]
    big = f"data.num_clients={EVAL_ALL_UP_TO + 1}"
    assert hashed(big) != without_key(big) == hashed(big, "train.eval_clients=all")  # auto is a cohort there


def per_client_accuracy(trainer: Trainer) -> np.ndarray:
    """(m,) each client's accuracy of its personal model on its own samples, in numpy, from the
    released one-client generator and the models' named tensors."""
    cfg = trainer.cfg
    data = cfg.data
    accuracy = []
    for client_id, model in enumerate(trainer.local_models):
        client = generate_client(client_id, seed=cfg.run.seed, num_clients=data.num_clients,
                                 num_samples=data.samples_per_client, dim=data.dim, num_classes=data.num_classes,
                                 R=data.R)
        named = {k: v.numpy() for k, v in trainer.task.model_state_dict(model).items()}
        logits = client.features @ named["weight"] + named.get("bias", 0.0)
        accuracy.append(np.mean(np.argmax(logits, axis=1) == client.labels))
    return np.array(accuracy)


def train(tmp_path: Path, *overrides: str, name: str) -> tuple[dict[str, Any], Trainer]:
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", *RUN, *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    return trainer.summary, trainer


def test_cohort_metrics_are_the_mean_and_standard_error_of_its_clients(tmp_path: Path) -> None:
    # Execute
    summary, trainer = train(tmp_path, f"train.eval_clients={N}", name="cohort")
    # Assert: the reference, from every client's accuracy in numpy, restricted to the cohort
    accuracy = per_client_accuracy(trainer)
    cohort = eval_cohort(seed=5, num_clients=M, size=N)
    members = accuracy[cohort]
    mean = members.mean()
    se = members.std(ddof=1) / math.sqrt(N) * math.sqrt(1 - N / M)  # without replacement: the FPC
    assert summary["evaluation"] == {"clients": N, "cohort": True}
    final = summary["final"]
    assert final["train/acc_personal"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
    assert final["train/acc_personal_se"] == pytest.approx(se, rel=1e-12, abs=1e-15)
    assert se > 0 and abs(accuracy.mean() - mean) > 1e-6  # the cohort is not the federation
    personal = dict(summary["personal"])
    assert abs(personal.pop("acc_personal_p10") - np.quantile(members, 0.1)) <= 1 / HISTOGRAM_BINS
    assert personal == pytest.approx({"acc_personal_mean": mean, "acc_personal_std": members.std()}, rel=1e-12)
    # every evaluation of metrics.jsonl and TensorBoard carries the standard errors, next to the metric's tag
    records = read_metrics(tmp_path / "cohort")
    for record in records:
        assert {"train/acc_personal_se", "train/loss_personal_se", "eval/ITR_se"} <= set(record["metrics"])
    points = scalar_points(tmp_path / "cohort")
    assert [step for step, _ in points["train/acc_personal_se"]] == [r["round"] for r in records] == [0, 2, 4]
    assert points["train/acc_personal_se"][-1][1] == pytest.approx(se, rel=1e-6)  # stored as float32


def test_cohort_of_every_client_is_the_evaluation_of_all(tmp_path: Path) -> None:
    everyone, _ = train(tmp_path, "train.eval_clients=all", name="all")
    clamped, _ = train(tmp_path, f"train.eval_clients={M + 5}", name="clamped")
    assert clamped["final"] == everyone["final"] and clamped["personal"] == everyone["personal"]
    assert not any(tag.endswith("_se") for tag in everyone["final"])
    assert everyone["evaluation"] == clamped["evaluation"] == {"clients": M, "cohort": False}
    # participation: a cohort run reports the schedule's counts, checked against the ones it kept
    cohort, _ = train(tmp_path, f"train.eval_clients={N}", name="cohort")
    assert cohort["participation"] == everyone["participation"]
    assert everyone["participation"]["update_counts"] == participation_counts(
        seed=5, num_clients=M, sample_fraction=0.5, num_rounds=4).tolist()


def test_a_resumed_cohort_run_is_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resumed = crash_and_resume(tmp_path, monkeypatch, *RUN, f"train.eval_clients={N}", "checkpoint.every=1",
                               crash_round=3)
    reference = read_metrics(tmp_path / "reference")
    assert read_metrics(tmp_path / "run")[-1]["metrics"] == reference[-1]["metrics"]
    assert resumed["resumed_from"] == [3] and "train/acc_personal_se" in resumed["final"]


def test_a_cohort_sends_no_per_client_vector(tmp_path: Path) -> None:
    """The round-0 evaluation's telemetry bytes with a cohort do not grow with the federation."""
    def evaluation_bytes(num_clients: int, eval_clients: str) -> int:
        name = f"m{num_clients}_{eval_clients}"
        train(tmp_path, f"data.num_clients={num_clients}", f"train.eval_clients={eval_clients}", name=name)
        return int(read_metrics(tmp_path / name)[0]["comm_telemetry"]["payload_bytes"])

    assert evaluation_bytes(30, "10") == evaluation_bytes(60, "10")
    assert evaluation_bytes(30, "all") < evaluation_bytes(60, "all")  # two m-vectors: 16 bytes per client

    def run_bytes(num_clients: int, eval_clients: str) -> int:  # every evaluation, the final one included
        return int(read_summary(tmp_path / f"m{num_clients}_{eval_clients}")["comm_telemetry"]["payload_bytes"])

    assert run_bytes(30, "10") == run_bytes(60, "10")
    assert run_bytes(60, "all") - run_bytes(30, "all") > 8 * 30  # ... and the final update counts, m more


def test_a_cohort_run_refuses_update_counts_that_the_schedule_did_not_give(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that lets a cohort run report the schedule's counts can fail."""
    monkeypatch.setattr(Trainer, "_scheduled_update_counts",
                        lambda self: torch.zeros(self.cfg.data.num_clients, dtype=torch.long))
    with pytest.raises(RuntimeError, match="clients' local update counts differ from the sampling schedule's"):
        train(tmp_path, f"train.eval_clients={N}", name="bad")


@pytest.mark.parametrize("seed", range(5))
def test_cohort_distribution_p10_is_within_one_bin_and_mean_std_are_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 60, size=200).astype(float)  # some clients without samples
    correct = np.floor(samples * rng.beta(5, 2, size=200))
    parts = [torch.tensor(np.stack([correct[i::3], samples[i::3]])) for i in range(3)]  # three ranks' clients
    block = sum(accuracy_moments(p) for p in parts)
    accuracy = correct[samples > 0] / samples[samples > 0]
    got = cohort_distribution(block)
    assert abs(got["acc_personal_p10"] - np.quantile(accuracy, 0.1)) <= 1 / HISTOGRAM_BINS
    assert got["acc_personal_mean"] == pytest.approx(accuracy.mean(), rel=1e-12)
    assert got["acc_personal_std"] == pytest.approx(accuracy.std(), rel=1e-12)


def test_ratio_standard_error_is_the_ratio_estimators_for_unequal_counts() -> None:
    rng = np.random.default_rng(0)
    v = rng.integers(1, 50, size=20).astype(float)
    u = np.floor(v * rng.uniform(size=20))
    ratio = u.sum() / v.sum()
    expected = math.sqrt((1 - 20 / 100) * np.sum((u - ratio * v) ** 2) / 19 / 20) / v.mean()
    got = ratio_standard_error(ratio_moments(torch.tensor(np.stack([u, v]))), population=100)
    assert got == pytest.approx(expected, rel=1e-12)


LAM_AUTO = (f"data.num_clients={M}", "data.samples_per_client=40", "algorithm.name=fedclup", "algorithm.lam=auto",
            "algorithm.num_local_steps=10", "algorithm.sample_fraction=0.2", "train.num_rounds=2",
            "algorithm.lam_auto_warmup=0.9", "train.dtype=float64")  # w = 2 rounds: chosen once, after the last


def heterogeneity(trainer: Trainer, clients: np.ndarray) -> float:
    """numpy: mean ||w_i - w_g|| over the trained clients among `clients` (the state after the last round)."""
    models = trainer.local_models.numpy()[clients]
    trained = trainer.update_counts.numpy()[clients] > 0
    return float(np.mean(np.linalg.norm(models[trained] - trainer.global_model.numpy(), axis=1)))


@pytest.mark.parametrize(("seed", "size", "members_trained"), [(5, 10, True), (5, 3, False)])
def test_lambda_auto_uses_the_cohorts_statistic(tmp_path: Path, seed: int, size: int, members_trained: bool) -> None:
    # Prepare: in the second case no cohort member was sampled in the two rounds
    cohort = eval_cohort(seed=seed, num_clients=M, size=size)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=run", f"run.seed={seed}", *LAM_AUTO,
                             f"train.eval_clients={size}"])
    # Execute
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    # Assert: R_hat over the cohort's trained members, or over every trained client when it has none
    assert bool(np.any(trainer.update_counts.numpy()[cohort] > 0)) == members_trained
    choice = trainer.summary["lambda_auto"]
    everyone = heterogeneity(trainer, np.arange(M))
    if members_trained:
        assert choice["R_hat"] == pytest.approx(heterogeneity(trainer, cohort), rel=1e-12)
        assert abs(choice["R_hat"] - everyone) > 1e-6
    else:
        assert choice["R_hat"] == pytest.approx(everyone, rel=1e-12)


@pytest.mark.parametrize("name", [n for n, info in METHODS.items() if not info.parameter_groups])
def test_every_method_evaluates_only_its_cohort_members_models(tmp_path: Path, name: str) -> None:
    # Prepare: a trained run of the method on a cohort
    _, trainer = train(tmp_path, f"algorithm.name={name}", f"train.eval_clients={N}", name=name)
    model = trainer.evaluation_model()
    # Execute: the members' models alone (their state rows; FedAvg-FT fine-tunes only them)
    got = trainer._evaluated_models(model, 4)
    # Assert: the members' rows of every client's personal models
    everyone = trainer.algorithm.personal_models(trainer.task, trainer.client_state, model, 4)
    assert trainer.cohort_rows is not None and got.shape == (N, everyone.shape[1])
    torch.testing.assert_close(got, everyone[trainer.cohort_rows], rtol=1e-12, atol=1e-12)


def test_a_plug_in_personal_models_without_rows_still_evaluates_a_cohort(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    reference, _ = train(tmp_path, "algorithm.name=fedavg", f"train.eval_clients={N}", name="reference")

    def personal_models(self: Algorithm, task: Any, state: Any, global_model: torch.Tensor,
                        round_idx: int) -> torch.Tensor:  # the signature before cohorts: every row
        assert len(state["local_models"]) == M
        return state["local_models"]

    monkeypatch.setattr(FedAvg, "personal_models", personal_models)
    old, _ = train(tmp_path, "algorithm.name=fedavg", f"train.eval_clients={N}", name="old")
    assert old["final"] == reference["final"]


def test_auto_evaluates_a_cohort_above_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the thresholds scaled down, so that M clients are "many"
    monkeypatch.setattr(sampling, "EVAL_ALL_UP_TO", M - 1)
    monkeypatch.setattr(sampling, "AUTO_COHORT", 5)
    # Execute: the default, auto
    summary, trainer = train(tmp_path, name="auto")
    # Assert: a cohort of AUTO_COHORT, with standard errors, and a run identity of its own
    assert summary["evaluation"] == {"clients": 5, "cohort": True} and trainer.cohort_rows is not None
    assert "train/acc_personal_se" in summary["final"]
    assert len(trainer.cohort_rows) == 5
    auto, everyone = (load_config(None, [*RUN, f"train.eval_clients={v}"]).to_dict() for v in ("auto", "all"))
    assert config_hash(auto) != config_hash(everyone)
