"""data.kind client_files: the reference CSV layout read exactly, and one FedCLUP round checked
against an independent numpy round written from docs/METHOD.md §2 (float64)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.runtime import init_runtime
from pfl_dist.tasks.client_files import ClientFilesTask
from pfl_dist.train import run_session
from tests.data_fixtures import write_reference_csv_clients

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "fedclup_csv_sample"
CPU = torch.device("cpu")


def _task(directory: Path, *overrides: str, clients: range) -> ClientFilesTask:
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={directory}", *overrides])
    return ClientFilesTask(cfg, client_ids=clients, device=CPU, dtype=torch.float64)


def _numpy_scale(x: np.ndarray) -> np.ndarray:
    std = np.sqrt(((x - x.mean(axis=0)) ** 2).mean(axis=0))  # population std, as StandardScaler
    return np.where(std == 0, 1.0, std)


def flip_labels(data: Path, rows_per_client: Sequence[Sequence[int]], out: Path) -> Path:
    """A copy of the reference CSV clients in `data` with the 0/1 labels of the given rows of each
    client flipped (row numbers in the client's file)."""
    out.mkdir()
    for k, rows in enumerate(rows_per_client):
        lines = (data / f"{k + 1}_client_data.csv").read_text().splitlines()
        for row in rows:
            features, label = lines[row].rsplit(",", 1)
            lines[row] = f"{features},{1.0 - float(label)!r}"
        (out / f"{k + 1}_client_data.csv").write_text("\n".join(lines) + "\n")
    return out


def run_folder(tmp_path: Path, name: str, folder: Path, args: Sequence[str]) -> dict[str, Any]:
    """The summary of one in-process run on the client files in `folder`."""
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"run.name={name}", f"data.data_dir={folder}", *args])
    return run_session(cfg, init_runtime(cfg), StopRequest()).summary


def test_reads_the_reference_codes_own_files() -> None:
    # Prepare: the 3-client sample written by the authors' generator.
    task = _task(SAMPLE, "data.num_clients=3", clients=range(3))
    truths = np.load(SAMPLE / "local_true_model.npy")
    for k in range(3):
        table = np.loadtxt(SAMPLE / f"{k + 1}_client_data.csv", delimiter=",")
        x, y = table[:, :10], table[:, 10]
        # Assert: labels, scale and scaled features are the files' (StandardScaler(with_mean=False)).
        assert task.counts[k] == 20
        assert np.array_equal(task.labels[k].numpy(), y.astype(np.int64))
        assert np.allclose(task.scale[k].numpy(), _numpy_scale(x), rtol=1e-14, atol=0)
        assert np.allclose(task.features[k].numpy(), x / _numpy_scale(x), rtol=1e-14, atol=0)
        assert np.array_equal(task.arrays[k].features, x)
        # The true models as W_k^T (d, C).
        assert np.array_equal(task.true_models[k].numpy(), truths[k].T)
    assert np.allclose(truths.mean(axis=0), np.load(SAMPLE / "global_true_model.npy"))


def test_scaling_can_be_turned_off_and_a_rank_reads_only_its_clients(tmp_path: Path) -> None:
    write_reference_csv_clients(tmp_path, num_clients=10)
    task = _task(tmp_path, "data.num_clients=10", "data.scale_features=false", clients=range(4, 7))
    (tmp_path / "1_client_data.csv").rename(tmp_path / "moved.csv")  # client 1 is not this rank's
    again = _task(tmp_path, "data.num_clients=10", "data.scale_features=false", clients=range(4, 7))
    for i, k in enumerate(range(4, 7)):
        table = np.loadtxt(tmp_path / f"{k + 1}_client_data.csv", delimiter=",")
        assert np.array_equal(task.features[i].numpy(), table[:, :10])
        assert np.array_equal(again.features[i].numpy(), table[:, :10])
        assert torch.equal(task.scale[i], torch.ones(10, dtype=torch.float64))


def _numpy_fedclup_round(directory: Path, *, num_clients: int, init: np.ndarray, lam: float,
                         num_steps: int) -> tuple[list[np.ndarray], np.ndarray, float]:
    """docs/METHOD.md §2, one client at a time: K steps w <- w - eta (grad L_k(w) + lam (w - w_g)) on
    the mean softmax cross-entropy of the scaled features, eta = 1/(L + lam), then
    w_g <- w_g - gamma lam (w_g - sum n_k w_k / sum n_k) with gamma = 1/lam + 1/L."""
    clients = []
    for k in range(num_clients):
        table = np.loadtxt(directory / f"{k + 1}_client_data.csv", delimiter=",")
        x = table[:, :-1] / _numpy_scale(table[:, :-1])
        clients.append((x, table[:, -1].astype(int)))
    smoothness = max(np.linalg.eigvalsh(x.T @ x / (4 * len(x)))[-1] for x, _ in clients)
    eta, gamma = 1 / (smoothness + lam), 1 / lam + 1 / smoothness
    w_global = init.copy()
    local = []
    for x, y in clients:
        w = w_global.copy()
        onehot = np.eye(init.shape[1])[y]
        for _ in range(num_steps):
            logits = x @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            w = w - eta * (x.T @ (p - onehot) / len(x) + lam * (w - w_global))
        local.append(w)
    counts = np.array([len(x) for x, _ in clients], dtype=float)
    average = sum(n * w for n, w in zip(counts, local, strict=True)) / counts.sum()
    return local, w_global - gamma * lam * (w_global - average), smoothness


def test_first_round_equals_a_numpy_round_from_the_files(tmp_path: Path) -> None:
    # Prepare: 10 clients in the reference layout and an initial model (d, C).
    data = write_reference_csv_clients(tmp_path / "data", num_clients=10, num_samples=30)
    init = np.random.default_rng(5).standard_normal((10, 2))
    np.save(tmp_path / "init.npy", init)
    lam, steps = 0.5, 20
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={data}", "data.num_clients=10",
                             f"model.init_file={tmp_path / 'init.npy'}", f"algorithm.lam={lam}",
                             f"algorithm.num_local_steps={steps}", "train.num_rounds=1", "train.dtype=float64",
                             f"run.out_dir={tmp_path / 'runs'}", "run.name=one"])
    # Execute: the engine's round 1, and the independent numpy round.
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    local, w_global, smoothness = _numpy_fedclup_round(data, num_clients=10, init=init, lam=lam, num_steps=steps)
    # Assert: every local model, w_g and the smoothness L agree to 1e-10.
    assert trainer.algorithm.smoothness == pytest.approx(smoothness, rel=1e-12)
    engine_local = trainer.local_models.view(10, 10, 2).numpy()
    assert np.abs(engine_local - np.stack(local)).max() < 1e-10
    assert np.abs(trainer.global_model.view(10, 2).numpy() - w_global).max() < 1e-10
    # ITR/ATR against the given true models (the reference's definitions).
    truths = np.load(data / "local_true_model.npy")
    scales = [_numpy_scale(np.loadtxt(data / f"{k + 1}_client_data.csv", delimiter=",")[:, :-1]) for k in range(10)]
    itr = np.mean([np.linalg.norm(local[k] / scales[k][:, None] - truths[k].T) for k in range(10)])
    atr = np.linalg.norm(w_global - truths.mean(axis=0).T)
    final = trainer.summary["final"]
    assert final["eval/ITR"] == pytest.approx(itr, abs=1e-10) and final["eval/ATR"] == pytest.approx(atr, abs=1e-10)


def test_npz_clients_with_different_sample_counts(tmp_path: Path) -> None:
    # Prepare: 3 NPZ clients of 5, 9 and 14 samples (the padded solver and masked metrics).
    rng = np.random.default_rng(1)
    arrays = []
    for k, n in enumerate((5, 9, 14)):
        x, y = rng.standard_normal((n, 4)), rng.integers(0, 3, size=n)
        np.savez(tmp_path / f"{k + 1}_client_data.npz", X=x, y=y)
        arrays.append((x, y))
    overrides = ("data.num_clients=3", "data.dim=4", "data.num_classes=3")
    # Execute
    task = _task(tmp_path, *overrides, clients=range(3))
    scaled = _task(tmp_path, *overrides, "data.scale_features=true", clients=range(3))
    # Assert: unscaled by default for NPZ, the counts and padding as in the files.
    assert task.counts == [5, 9, 14] and task.sample_counts.tolist() == [5.0, 9.0, 14.0]
    for k, (x, y) in enumerate(arrays):
        assert np.array_equal(task.features[k, : len(x)].numpy(), x)
        assert np.array_equal(task.labels[k, : len(y)].numpy(), y)
        assert np.allclose(scaled.features[k, : len(x)].numpy(), x / _numpy_scale(x), rtol=1e-14, atol=0)
    # Metrics of one shared model = per-client numpy sums over the real samples only.
    w = torch.from_numpy(rng.standard_normal(12))
    sums = task.metric_sums(w.expand(3, -1).clone(), w)
    losses = []
    for x, y in arrays:
        logits = x @ w.numpy().reshape(4, 3)
        losses.append(np.sum(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]))
    assert float(sums["loss_personal_sum"]) == pytest.approx(sum(losses), rel=1e-12)
    assert float(sums["loss_global_sum"]) == pytest.approx(sum(losses), rel=1e-12)
    assert "ITR_sum" not in sums  # no true models in the directory


# --- data.test_fraction: held-out rows ---------------------------------------------------------


def test_the_held_out_split_is_per_client_and_the_same_for_any_world_size(tmp_path: Path) -> None:
    # Prepare: 5 clients of 30 rows, 20% held out
    data = write_reference_csv_clients(tmp_path / "data", num_clients=5, num_samples=30)
    args = ("data.num_clients=5", "data.test_fraction=0.2")
    # Execute: one process hosting all five, and the blocks of 2 ranks (3 + 2 clients)
    one = _task(data, *args, clients=range(5))
    two = [_task(data, *args, clients=range(0, 3)), _task(data, *args, clients=range(3, 5))]
    # Assert: 6 of 30 rows held out per client, the same rows whoever hosts the client, and they
    # differ between clients (each client draws its own); the metrics are named eval/
    held_out = [rows.tolist() for rows in one.test_rows]
    assert held_out == [rows.tolist() for task in two for rows in task.test_rows]
    assert all(len(rows) == 6 for rows in held_out) and len({tuple(rows) for rows in held_out}) == 5
    assert one.counts == [24] * 5 and one.eval_counts == [6] * 5
    assert one.metrics_measured_on == "eval"
    assert _task(data, "data.num_clients=5", clients=range(5)).metrics_measured_on == "train"  # auto: no split


def test_the_held_out_rows_are_not_trained_on_and_are_what_the_metrics_measure(tmp_path: Path) -> None:
    # Prepare: the same clients twice; in the second copy every held-out row has its label flipped
    data = write_reference_csv_clients(tmp_path / "data", num_clients=4, num_samples=25)
    args = ("data.kind=client_files", "data.num_clients=4", "data.test_fraction=0.2", "train.num_rounds=3",
            "train.eval_every=1", "algorithm.num_local_steps=10", "train.dtype=float64")
    held_out = _task(data, "data.num_clients=4", "data.test_fraction=0.2", clients=range(4)).test_rows
    flipped = flip_labels(data, held_out, tmp_path / "flipped")
    # Execute
    kept, changed = run_folder(tmp_path, "kept", data, args), run_folder(tmp_path, "flipped", flipped, args)
    # Assert: training never saw those rows (the same models, bit for bit); the accuracies measured
    # on them flip (a + a' = 1), and are named eval/ in summary.json and metrics.jsonl
    assert kept["global_model_sha256"] == changed["global_model_sha256"]
    assert kept["final"]["eval/acc_personal"] + changed["final"]["eval/acc_personal"] == pytest.approx(1.0)
    assert not any(key.startswith("train/") for key in kept["final"])
    records = [line for line in (tmp_path / "kept" / "metrics.jsonl").read_text().splitlines() if line]
    assert all('"eval/acc_personal"' in line and '"train/' not in line for line in records)


def test_too_few_rows_to_hold_some_out_is_one_line(tmp_path: Path) -> None:
    from pfl_dist.errors import DataError
    from pfl_dist.tasks import preflight

    data = write_reference_csv_clients(tmp_path / "data", num_clients=2, num_samples=1)
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={data}", "data.num_clients=2",
                             "data.test_fraction=0.2"])
    with pytest.raises(DataError, match=r"^data.test_fraction=0.2: client 1 has 1 row\(s\), too few to hold a test "):
        preflight(cfg)


# --- data.val_fraction: validation rows ----------------------------------------------------------


def test_validation_rows_come_out_of_the_training_rows_the_same_for_any_world_size(tmp_path: Path) -> None:
    # Prepare: 5 clients of 30 rows, 20% held out for test, 25% of the other 24 for validation
    data = write_reference_csv_clients(tmp_path / "data", num_clients=5, num_samples=30)
    args = ("data.num_clients=5", "data.test_fraction=0.2", "data.val_fraction=0.25")
    # Execute: one process hosting all five, and the blocks of 2 ranks (3 + 2 clients)
    one = _task(data, *args, clients=range(5))
    two = [_task(data, *args, clients=range(0, 3)), _task(data, *args, clients=range(3, 5))]
    plain = _task(data, "data.num_clients=5", "data.test_fraction=0.2", clients=range(5))
    # Assert: 6 validation rows per client, the same whoever hosts it, disjoint from the test rows,
    # which are the same as without validation rows; 18 rows train
    val = [rows.tolist() for rows in one.val_row_numbers]
    assert val == [rows.tolist() for task in two for rows in task.val_row_numbers]
    assert [rows.tolist() for rows in one.test_rows] == [rows.tolist() for rows in plain.test_rows]
    for rows, test in zip(val, one.test_rows, strict=True):
        assert len(rows) == 6 and not set(rows) & set(test.tolist())
    assert one.counts == [18] * 5 and one.eval_counts == [6] * 5 and one.val_rows is not None
    assert one.val_rows[2] == [6] * 5 and plain.val_rows is None


def test_validation_rows_are_not_trained_on_and_are_what_the_val_metrics_measure(tmp_path: Path) -> None:
    # Prepare: the same clients twice; in the second copy every validation row has its label flipped
    data = write_reference_csv_clients(tmp_path / "data", num_clients=4, num_samples=25)
    split = ("data.num_clients=4", "data.test_fraction=0.2", "data.val_fraction=0.2")
    args = ("data.kind=client_files", *split, "train.num_rounds=3", "train.eval_every=1",
            "algorithm.num_local_steps=10", "train.dtype=float64")
    val_rows = _task(data, *split, clients=range(4)).val_row_numbers
    flipped = flip_labels(data, val_rows, tmp_path / "flipped")
    # Execute
    kept, changed = run_folder(tmp_path, "kept", data, args), run_folder(tmp_path, "flipped", flipped, args)
    # Assert: training never saw those rows (the same models, bit for bit, and test metrics); the
    # validation accuracies measured on them flip (a + a' = 1)
    assert kept["global_model_sha256"] == changed["global_model_sha256"]
    assert kept["final"]["eval/acc_personal"] == changed["final"]["eval/acc_personal"]
    assert kept["final"]["val/acc_personal"] + changed["final"]["val/acc_personal"] == pytest.approx(1.0)
    assert kept["final"]["val/loss_personal"] != changed["final"]["val/loss_personal"]


def test_too_few_training_rows_to_hold_validation_rows_out_is_one_line(tmp_path: Path) -> None:
    from pfl_dist.errors import DataError
    from pfl_dist.tasks import preflight

    data = write_reference_csv_clients(tmp_path / "data", num_clients=2, num_samples=2)
    cfg = load_config(None, ["data.kind=client_files", f"data.data_dir={data}", "data.num_clients=2",
                             "data.test_fraction=0.2", "data.val_fraction=0.5"])
    with pytest.raises(DataError, match=r"^data.val_fraction=0.5: client 1 has 1 training row\(s\), too few to hold "
                                        "validation rows out and still train$"):
        preflight(cfg)
