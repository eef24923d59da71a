"""comm.downlink_codec (pfl_dist/exchange/downlink.py): what the clients receive of the server's
model. `none` is the run without the key, bit for bit; a codec's downlink bytes are its messages
(with their control words); every rank derives the same received model with no collective; the
received model is h + decode(encode(w_g - h)) with h the last received model (checked against
numpy); kill and resume with a downlink error-feedback codec is bitwise; qsgd:4 on Fashion-MNIST
logistic regression cuts the downlink at least 4x at the dense accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.downlink import Downlink, downlink_seed
from pfl_dist.exchange.spec import parse_codec
from pfl_dist.rundir import config_hash
from tests.helpers import crash_and_resume, global_weights, messages_sent, read_metrics, run_inprocess
from tests.unit.test_golden import SMALL  # 8 clients, half sampled, float64: the golden runs' shape

SHAPES = [torch.Size((6, 4)), torch.Size((4,))]  # P = 28
# Fashion-MNIST (offline copy), logistic regression, 10 of 20 clients a round, one local epoch
FASHION = ("data.kind=fashion_mnist", "data.num_partitions=40", "data.num_clients=20", "algorithm.name=fedavg",
           "algorithm.local_lr=0.01", "algorithm.batch_size=32", "algorithm.local_epochs=1",
           "algorithm.sample_fraction=0.5", "train.num_rounds=3", "train.eval_every=3")


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without what differs between two runs of one config (wall time, run dir)."""
    return {key: value for key, value in summary.items() if key not in ("time", "config")}


def model(seed: int, size: int = 28) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the config key ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    ("bogus", "comm.downlink_codec must be one of none, fp16"),
    ("topk:2", "comm.downlink_codec: the parameter of 'topk' is the fraction"),
    ("fp16:3", "comm.downlink_codec: codec 'fp16' takes no parameter"),
])
def test_bad_downlink_codec_is_one_line_naming_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [f"comm.downlink_codec={value}"])
    assert "\n" not in str(err.value)


def test_downlink_codec_is_recorded_spelled_out_and_enters_the_identity_unless_none() -> None:
    # Prepare
    plain = load_config(None, [])
    none = load_config(None, ["comm.downlink_codec=none"])
    qsgd = load_config(None, ["comm.downlink_codec=qsgd:4"])
    # Assert: none is the config without the key (same hash, same run dir); a codec is another run
    assert qsgd.comm.downlink_codec == "qsgd:4:512"
    assert config_hash(none.to_dict()) == config_hash(plain.to_dict())
    assert config_hash(qsgd.to_dict()) != config_hash(plain.to_dict())


# --- none is the run without it ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fedclup", "fedavg", "scaffold"])
def test_downlink_none_is_bitwise_the_run_without_the_key(tmp_path: Path, method: str) -> None:
    # Execute
    without = run_inprocess(tmp_path, *SMALL, f"algorithm.name={method}", name="without")
    none = run_inprocess(tmp_path, *SMALL, f"algorithm.name={method}", "comm.downlink_codec=none", name="none")
    # Assert: the same float64 w_g, metrics and bytes; the dense downlink is the downlink
    assert none["global_model_sha256"] == without["global_model_sha256"]
    assert comparable(none) == comparable(without)
    assert torch.equal(global_weights(tmp_path / "none"), global_weights(tmp_path / "without"))
    assert none["comm"]["downlink_bytes"] == none["comm"]["downlink_bytes_dense"] > 0


def test_a_downlink_codec_changes_what_clients_start_from(tmp_path: Path) -> None:
    # Execute: the same run with a coarse downlink
    dense = run_inprocess(tmp_path, *SMALL, "algorithm.name=fedavg", name="dense")
    coarse = run_inprocess(tmp_path, *SMALL, "algorithm.name=fedavg", "comm.downlink_codec=qsgd:1", name="coarse")
    # Assert: clients trained from another model, so w_g differs; the uplink is as dense as before
    assert coarse["global_model_sha256"] != dense["global_model_sha256"]
    assert coarse["comm"]["uplink_bytes"] == dense["comm"]["uplink_bytes"]


# --- bytes -------------------------------------------------------------------------------------


def test_fp16_downlink_halves_the_downlink_only(tmp_path: Path) -> None:
    # Execute: Fashion-MNIST logistic regression (P = 784 x 10 + 10 = 7850, float32)
    summary = run_inprocess(tmp_path, *FASHION, "comm.downlink_codec=fp16")
    comm = summary["comm"]
    # Assert: each sampled client receives one fp16 change and its float64 scale word; the uplink is dense
    messages = messages_sent(3, num_clients=20, sample_fraction=0.5)
    assert comm["downlink_bytes_dense"] == messages * 7850 * 4
    assert comm["downlink_bytes"] == messages * (7850 * 2 + 8)
    assert 1.8 <= comm["downlink_bytes_dense"] / comm["downlink_bytes"] <= 2.2
    assert comm["uplink_bytes"] == comm["uplink_bytes_dense"] == messages * 7850 * 4


def test_fp16_both_ways_halves_both_ways(tmp_path: Path) -> None:
    # Execute: a model large enough that the scale word does not count (Fashion-MNIST logreg, P = 7850)
    summary = run_inprocess(tmp_path, *FASHION, "comm.codec=fp16", "comm.downlink_codec=fp16")
    comm = summary["comm"]
    # Assert
    assert 1.8 <= comm["uplink_bytes_dense"] / comm["uplink_bytes"] <= 2.2
    assert 1.8 <= comm["downlink_bytes_dense"] / comm["downlink_bytes"] <= 2.2
    # metrics.jsonl carries both, as summary.json does
    last = read_metrics(tmp_path / "run")[-1]["comm"]
    assert last["downlink_bytes"] == comm["downlink_bytes"] and last["downlink_bytes_dense"] == comm[
        "downlink_bytes_dense"]


def test_qsgd4_downlink_cuts_the_downlink_4x_at_the_dense_accuracy(tmp_path: Path) -> None:
    # Execute: 3 rounds of FedAvg on Fashion-MNIST logistic regression, dense and qsgd:4 down
    dense = run_inprocess(tmp_path, *FASHION, name="dense")
    qsgd = run_inprocess(tmp_path, *FASHION, "comm.downlink_codec=qsgd:4", name="qsgd")
    # Assert
    assert dense["comm"]["downlink_bytes"] / qsgd["comm"]["downlink_bytes"] >= 4
    assert qsgd["comm"]["downlink_bytes_dense"] == dense["comm"]["downlink_bytes"]
    assert abs(qsgd["personal"]["acc_personal_mean"] - dense["personal"]["acc_personal_mean"]) <= 0.05
    assert qsgd["global_model_sha256"] != dense["global_model_sha256"]  # it did receive another model


# --- the received model ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["fp16", "bf16", "qsgd:4:8", "topk:0.2", "randk:0.3", "powersgd:1"])
def test_every_rank_derives_the_same_received_model(codec: str) -> None:
    # Prepare: two ranks' downlinks, built apart from the same run seed and initial model
    spec = parse_codec(codec, key="comm.downlink_codec")
    initial = model(0)
    ranks = [Downlink(spec, shapes=SHAPES, reference=initial, seed=7) for _ in range(2)]
    # Execute: three rounds of a moving w_g, each rank on its own
    received: list[list[torch.Tensor]] = [[], []]
    for round_idx in range(3):
        w_g = initial + (round_idx + 1) * 0.1 * model(round_idx + 1)
        for rank, downlink in enumerate(ranks):
            got = downlink.receive(round_idx, w_g)
            downlink.commit(got)
            received[rank].append(got)
    # Assert: bit for bit the same on both ranks, and not w_g itself (something was compressed)
    for mine, theirs in zip(*received, strict=True):
        assert torch.equal(mine, theirs)
    assert not torch.equal(received[0][-1], w_g)


def test_receive_is_pure_until_commit() -> None:
    # Prepare
    downlink = Downlink(parse_codec("topk:0.25"), shapes=SHAPES, reference=model(0), seed=1)
    w_g = model(0) + model(1)
    # Execute
    first = downlink.receive(0, w_g)
    again = downlink.receive(0, w_g)
    downlink.commit(first)
    after = downlink.receive(1, w_g)
    # Assert: a discarded round leaves h; once committed, what top-k left out goes next
    assert torch.equal(first, again)
    assert torch.count_nonzero(first - model(0)) == 7  # k = round(0.25 * 28)
    assert torch.count_nonzero(after - first) == 7 and float((w_g - after).abs().max()) < float(
        (w_g - first).abs().max())


def numpy_fp16_round(reference: np.ndarray, w_g: np.ndarray) -> np.ndarray:
    """h + decode(encode(w_g - h)) for fp16, written from its description: the change scaled by the
    power of two 2^e with 2^e max|change| <= 65504 / 2, rounded to float16, divided back."""
    change = w_g - reference
    bound = float(np.abs(change).max())
    scale = 2.0 ** math.floor(math.log2(65504.0 / 2 / bound)) if bound > 0 else 1.0
    message = (change * scale).astype(np.float16)
    return reference + message.astype(np.float64) / scale


def test_fp16_received_model_matches_numpy_over_rounds() -> None:
    # Prepare: w_g moving over 4 rounds, the reference scheme followed by hand in numpy
    downlink = Downlink(parse_codec("fp16"), shapes=SHAPES, reference=model(0), seed=0)
    h = model(0).numpy()
    for round_idx in range(4):
        w_g = model(0) + 10.0 ** -round_idx * model(round_idx + 10)
        # Execute
        got = downlink.receive(round_idx, w_g)
        downlink.commit(got)
        # Assert: exactly the numpy result; the reference h is the last received model, so the
        # error is that of fp16 on the change since then (not on the model)
        expected = numpy_fp16_round(h, w_g.numpy())
        np.testing.assert_array_equal(got.numpy(), expected)
        change = float(np.abs(w_g.numpy() - h).max())
        assert 0 < float(np.abs(expected - w_g.numpy()).max()) <= change * 2**-11
        h = expected


def test_qsgd_received_model_matches_numpy_with_the_downlink_stream() -> None:
    # Prepare: one bucket of 28, s = 4; the uniforms are those of the downlink's seed stream
    downlink = Downlink(parse_codec("qsgd:4:28"), shapes=SHAPES, reference=model(0), seed=5)
    w_g = model(0) + 0.3 * model(1)
    # Execute
    got = downlink.receive(2, w_g)
    # Assert: the QSGD paper's quantizer on w_g - h, written in numpy
    from pfl_dist.exchange.base import generator
    from pfl_dist.exchange.codecs import _QSGD_STREAM
    uniforms = torch.rand(28, dtype=torch.float64, generator=generator(downlink_seed(5), _QSGD_STREAM, 2, 0)).numpy()
    change = (w_g - model(0)).numpy()
    norm = np.linalg.norm(change)
    ratio = np.abs(change) / norm * 4
    level = np.floor(ratio) + (uniforms < ratio - np.floor(ratio))
    expected = model(0).numpy() + np.float64(np.float64(norm)) * np.sign(change) * level / 4
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-15)


# --- resume ---------------------------------------------------------------------------------------


def test_kill_and_resume_with_downlink_error_feedback_is_bitwise(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute: top-k down (its memory is the replicated h), crash at round index 3 of 6, resume
    overrides = (*SMALL, "algorithm.name=fedavg", "comm.downlink_codec=topk:0.1", "checkpoint.every=2")
    resumed = crash_and_resume(tmp_path, monkeypatch, *overrides, crash_round=3)
    reference = run_inprocess(tmp_path, *overrides, name="reference")  # already complete: its summary
    # Assert: the checkpoint holds h; the resumed run is the uninterrupted one, bit for bit
    shards = sorted((tmp_path / "run" / "ckpt").glob("round_*/shard_*.pt"))
    state = torch.load(shards[-1], weights_only=True)
    assert state["replicated"]["downlink"]["reference"].shape == (20,)  # P = 2 x 10
    assert resumed["resumed_from"] == [2]
    assert resumed["global_model_sha256"] == reference["global_model_sha256"]
    assert comparable({**resumed, "resumed_from": []}) == comparable(reference)
