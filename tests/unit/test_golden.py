"""Golden fixed-seed runs: every optimization must leave these float64 results bitwise unchanged.

The literals were produced by the engine before any performance work (commit 78da990) and must
never be regenerated to make a change pass: a float64 run that differs in the last bit is a
behaviour change, not an optimization. float32 runs are not pinned,
because float32 may trade rounding for speed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pfl_dist.checkpoint import StopRequest
from pfl_dist.config import load_config
from pfl_dist.data.synthetic import generate_client, generate_clients
from pfl_dist.runtime import init_runtime
from pfl_dist.train import run_session

# 8 clients, half of them sampled per round, so sampling, warm starts of clients that sat out,
# the envelope step and evaluation every 3 rounds are all exercised.
SMALL = ("data.num_clients=8", "data.samples_per_client=50", "data.R=1.5", "run.seed=3",
         "algorithm.num_local_steps=20", "algorithm.sample_fraction=0.5", "train.num_rounds=6",
         "train.eval_every=3", "train.dtype=float64")
# The paper's total-error shape (n=200, d=10, C=2, K=150, 10% sampling) on 100 clients.
PAPER = ("data.num_clients=100", "data.samples_per_client=200", "data.R=2.0", "run.seed=1",
         "algorithm.num_local_steps=150", "algorithm.sample_fraction=0.1", "algorithm.lam=0.25",
         "train.num_rounds=5", "train.eval_every=5", "train.dtype=float64")

SCENARIOS: dict[str, tuple[str, ...]] = {
    "fedclup": (*SMALL, "algorithm.name=fedclup", "algorithm.lam=0.5"),
    "fedavg": (*SMALL, "algorithm.name=fedavg", "algorithm.local_lr=0.05"),
    "fedprox": (*SMALL, "algorithm.name=fedprox", "algorithm.lam=0.5"),
    "local": (*SMALL, "algorithm.name=local", "algorithm.local_lr=0.05"),
    "fedclup_paper_shape": (*PAPER, "algorithm.name=fedclup"),
}

# scenario -> final metrics (keyed by tag: where each is measured), global_model_sha256, sha256 of
# the (m, P) local models, participation.update_counts_sha256
GOLDEN: dict[str, tuple[dict[str, float], str, str, str]] = {
    "fedclup": (
        {"eval/ITR": 10.402572358796334, "eval/ATR": 3.6426244801850074, "train/loss_personal": 0.37883501048506785,
         "train/loss_global": 2.569262910657382, "train/acc_personal": 0.8575, "train/acc_global": 0.48},
        "8ddfcb340da8b6298f2392077e05d3ff0d22ffb5a9e2d68e17bbc1e4c39fc0bc",
        "28088bbc092932b26fdbc413544dc5d6a5885fdb8fd0ed97eadb20bf35641b8c",
        "d6e6250ec66cb92bde4841478ba78ea0ae04d840c916273e5461fe143c540cc4",
    ),
    "fedavg": (
        {"eval/ITR": 9.39243064274432, "eval/ATR": 3.2690432739394732, "train/loss_personal": 0.25359520303334554,
         "train/loss_global": 1.0350436399391834, "train/acc_personal": 0.895, "train/acc_global": 0.55},
        "f28f01667a76e233fdeeb2953a9b1104a811f55dc08a10d82974f128287335f6",
        "2de6062672b96bc6a4d39633402def888c0ef5138b38c98affff59d6c06d6c33",
        "d6e6250ec66cb92bde4841478ba78ea0ae04d840c916273e5461fe143c540cc4",
    ),
    "fedprox": (
        {"eval/ITR": 10.079338041759897, "eval/ATR": 3.5015823612926935, "train/loss_personal": 0.3929949172583669,
         "train/loss_global": 1.7135084310784094, "train/acc_personal": 0.845, "train/acc_global": 0.5175},
        "4d4f78e45b9fe8c8dc7e246d91495b0d2bdc8b1c0337c02cf76edf8eb5cca6bf",
        "49f0f8fe4e9c211b2afdda1b7a84ce23715f52a84c5be13fc8eeee73b74db245",
        "d6e6250ec66cb92bde4841478ba78ea0ae04d840c916273e5461fe143c540cc4",
    ),
    "local": (
        {"eval/ITR": 9.854689110528884, "eval/ATR": 3.454121813735399, "train/loss_personal": 0.21089690927487176,
         "train/loss_global": 1.8890091177370767, "train/acc_personal": 0.915, "train/acc_global": 0.4825},
        "0cf7e9ac0da55bbc65d72ae37d2a79b6214c6224acd7f874c54831561e133777",
        "379d8e5eb57abd7863cd4c300bf1f401685c3a70c44a610a5e3026faa854cd85",
        "d6e6250ec66cb92bde4841478ba78ea0ae04d840c916273e5461fe143c540cc4",
    ),
    "fedclup_paper_shape": (
        {"eval/ITR": 20.34216620146192, "eval/ATR": 5.63999113598493, "train/loss_personal": 5.542010788534066,
         "train/loss_global": 4.787357571027413, "train/acc_personal": 0.5985, "train/acc_global": 0.52965},
        "44c69c7901c0d60ba5d830f2ea02852bee2f745d5b0f44dd63d4d6194aae0660",
        "42365ff134c4a4d6f987c2f3ae3b30dcd13d08beaa34652bad828a9cbda58459",
        "9dd89b01933676b549bf0e978f93e8077b4def6293084cba0a307cd412e98d63",
    ),
}

# sha256 of features, labels, scale and true model of clients 0-4 and 995-999 of a
# 1000-client federation (seed 2, n=200, d=10, C=2, R=2).
GOLDEN_DATA_SHA256 = "547ad3883d153ff24a9fb840aeddeb484cfc7b16b37e845f666e66c53c1ad4a7"


def train_golden(tmp_path: Path, overrides: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """One in-process run; -> (summary, sha256 of the (m, P) local models)."""
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=golden", *overrides])
    trainer = run_session(cfg, init_runtime(cfg), StopRequest())
    summary = trainer.summary
    local_sha = hashlib.sha256(trainer.local_models.contiguous().numpy().tobytes()).hexdigest()
    return summary, local_sha


def synthetic_data_sha256() -> str:
    digest = hashlib.sha256()
    for client_id in (*range(0, 5), *range(995, 1000)):
        client = generate_client(client_id, seed=2, num_clients=1000, num_samples=200, dim=10, num_classes=2, R=2.0)
        for array in (client.features, client.labels, client.scale, client.true_model):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden_run_is_bitwise_unchanged(tmp_path: Path, scenario: str) -> None:
    # Prepare
    final, global_sha, local_sha, counts_sha = GOLDEN[scenario]
    # Execute
    summary, got_local_sha = train_golden(tmp_path, SCENARIOS[scenario])
    # Assert: exact equality, float64 metrics included.
    assert summary["participation"]["update_counts_sha256"] == counts_sha
    assert summary["final"] == final
    assert summary["global_model_sha256"] == global_sha
    assert got_local_sha == local_sha


def test_synthetic_data_is_bitwise_unchanged() -> None:
    assert synthetic_data_sha256() == GOLDEN_DATA_SHA256


def _client_as_released(client_id: int, *, seed: int, num_clients: int, num_samples: int, dim: int, num_classes: int,
                        R: float) -> tuple[np.ndarray, ...]:
    """The one-client generator as the engine first shipped it (three draws, no blocks)."""
    rng = np.random.default_rng(client_id + seed * num_clients)
    true_model = rng.normal(0.0, R, size=(num_classes, dim))
    center = rng.normal(0.0, 1.0, size=dim)
    feature_std = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)
    features = center + rng.normal(size=(num_samples, dim)) * feature_std
    labels = np.argmax(features @ true_model.T, axis=1).astype(np.int64)
    scale = features.std(axis=0)
    return features / scale, labels, scale, true_model


@pytest.mark.parametrize(("num_clients", "num_samples", "dim", "num_classes", "R", "seed"),
                         [(1000, 200, 10, 2, 2.0, 0), (10, 200, 10, 2, 0.1, 1), (40, 37, 7, 5, 1.3, 4)])
def test_block_generation_is_the_released_generator_bit_for_bit(
    num_clients: int, num_samples: int, dim: int, num_classes: int, R: float, seed: int
) -> None:
    shape = {"seed": seed, "num_clients": num_clients, "num_samples": num_samples, "dim": dim,
             "num_classes": num_classes, "R": R}
    ids = range(max(0, num_clients - 40), num_clients)
    block = generate_clients(ids, **shape)
    for row, client_id in enumerate(ids):
        expected = _client_as_released(client_id, **shape)
        got = (block.features[row], block.labels[row], block.scale[row], block.true_models[row])
        for want, have in zip(expected, got, strict=True):
            assert want.dtype == have.dtype and want.tobytes() == have.tobytes()


def test_paper_generator_data_does_not_depend_on_R_but_a_shared_center_makes_it() -> None:
    """Why lam=auto cannot follow R on the paper's generator (docs/RESULTS.md §1), and the fix."""
    shape = {"seed": 0, "num_clients": 10, "num_samples": 200, "dim": 10, "num_classes": 2}
    small, large = (generate_clients(range(10), R=R, **shape) for R in (0.1, 3.0))
    assert np.array_equal(small.features, large.features) and np.array_equal(small.labels, large.labels)
    assert np.allclose(large.true_models, 30 * small.true_models)  # only the truth moves

    small, large = (generate_clients(range(10), R=R, center_scale=1.0, **shape) for R in (0.1, 3.0))
    assert np.array_equal(small.features, large.features)  # same X_k draws ...
    # ... but labels follow the clients' rules: nearly the shared rule at small R, not at large R.
    center = small.true_models.mean(axis=0)
    raw = small.features * small.scale[:, None, :]
    shared_rule = np.argmax(raw @ center.T, axis=2)
    agreement = [float(np.mean(block.labels == shared_rule)) for block in (small, large)]
    assert agreement[0] > 0.9 and agreement[1] < 0.8, agreement
