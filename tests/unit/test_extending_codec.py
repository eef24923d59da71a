"""docs/EXTENDING.md, "## A codec": every example in it runs. The plug-in code is
examples/custom_codec.py's; the documented commands train (shrunk) with exact bytes; the plug-in
matches a numpy reference of its paper's compressor; a bad plug-in is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pfl_dist
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from pfl_dist.exchange.base import Codec, GatherLayout, RoundInput
from pfl_dist.exchange.spec import ALL_GATHER, parse_codec, plugin_entry
from pfl_dist.methods import INCREMENT
from pfl_dist.sampling import sample_clients
from tests.helpers import REPO, extending_blocks
from tests.unit.test_codecs import ThreadGroup
from tests.unit.test_extending_algorithm import train_documented_plugin, without_docstrings

SHRINK = ("data.num_clients=4", "train.num_rounds=2", "train.eval_every=2")
PLUGIN = "custom_codec:ScaledSign"


@pytest.fixture
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    plugin_entry.cache_clear()


def test_the_documented_plugin_is_examples_custom_codec() -> None:
    (code,) = extending_blocks("A codec", "python", "As a plug-in")
    assert without_docstrings(code) == without_docstrings((REPO / "examples" / "custom_codec.py").read_text())


@pytest.mark.parametrize("line", extending_blocks("A codec", "sh", "As a plug-in")[0].strip().splitlines())
def test_the_documented_plugin_commands_train_with_exact_bytes(line: str, tmp_path: Path) -> None:
    # Execute: the command as documented, from the repo, shrunk and written under tmp_path
    _, run_dir = train_documented_plugin(line, SHRINK, tmp_path)
    # Assert: recorded as named; uplink = messages x (4 + ceil(P / 8)) for the float32 model
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["comm"]["codec"] == PLUGIN
    final = torch.load(run_dir / "final" / "global.pt", weights_only=True)
    num_params = sum(t.numel() for t in final.values())
    messages = sum(len(sample_clients(t, seed=0, num_clients=4, sample_fraction=1.0)) for t in range(2))
    assert summary["comm"]["uplink_bytes"] == messages * (4 + math.ceil(num_params / 8))
    assert summary["comm"]["uplink_bytes_dense"] == messages * 4 * num_params
    assert summary["comm"]["all_gather_num_collectives"] == 2  # its transport: one all_gather a round
    assert all(math.isfinite(value) for value in summary["final"].values() if isinstance(value, float))


def test_the_plugin_serves_the_downlink_with_exact_bytes(examples_importable: None, tmp_path: Path) -> None:
    # Execute: the example as the downlink codec, the uplink dense
    result = pfl_dist.run(None, {"comm.downlink_codec": PLUGIN, "data.num_clients": 4, "train.num_rounds": 2,
                                 "train.eval_every": 2, "run.out_dir": str(tmp_path)})
    # Assert: every sampled client receives one message of 4 + ceil(P / 8) bytes a round
    num_params = sum(t.numel() for t in torch.load(result.run_dir / "final" / "global.pt", weights_only=True).values())
    messages = sum(len(sample_clients(t, seed=0, num_clients=4, sample_fraction=1.0)) for t in range(2))
    assert result.summary["config"]["comm"]["downlink_codec"] == PLUGIN
    assert result.summary["comm"]["downlink_bytes"] == messages * (4 + math.ceil(num_params / 8))
    assert result.summary["comm"]["downlink_bytes_dense"] == result.summary["comm"]["uplink_bytes"] \
        == messages * 4 * num_params


def reference_scaled_sign(v: np.ndarray, weight: float) -> tuple[bytes, np.ndarray]:
    """Karimireddy et al. 2019's C(v) = (||v||_1 / P) sign(v) (sign(0) = +), weighted, as the
    example's message (a float64 scale word, then one bit per coordinate, least significant
    first) and its decoded vector."""
    scale = np.float64(weight * np.abs(v).mean())
    bits = (v >= 0).astype(np.uint8)
    return scale.tobytes() + np.packbits(bits, bitorder="little").tobytes(), np.where(bits == 1, scale, -scale)


def test_the_plugin_matches_the_papers_compressor_and_keeps_u_minus_c_of_u(examples_importable: None) -> None:
    # Prepare
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(3, 21, generator=generator, dtype=torch.float64)
    updates[2, 4] = 0.0
    counts = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    weights = counts / counts.sum()
    codec = Codec(parse_codec(PLUGIN), shapes=[torch.Size((21,))], num_local_clients=3, dtype=torch.float64,
                  device=torch.device("cpu"), seed=0, message=INCREMENT)
    assert parse_codec(PLUGIN).entry.transport == ALL_GATHER and parse_codec(PLUGIN).entry.error_feedback
    # Execute: its encode, and two rounds through its transport with error feedback
    messages = codec.compressor.encode(updates, round_idx=0, clients=torch.arange(3), weights=weights)
    memory = torch.zeros_like(updates)
    for round_idx in range(2):
        got = codec.aggregate(RoundInput(round_idx=round_idx, updates=updates, weights=weights, rows=torch.arange(3),
                                         client_ids=torch.arange(3), control=torch.zeros(0),
                                         weight_total=float(counts.sum()), layout=GatherLayout((3,))),
                              ThreadGroup(1).wire(0))
        # Assert: the reference's bytes and mean; e <- u - C(u)
        corrected = updates + memory
        sent = [reference_scaled_sign(u.numpy(), 1.0)[1] for u in corrected]
        expected = sum(float(w) * s for w, s in zip(weights, sent, strict=True))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-15, atol=1e-15)
        memory = corrected - torch.tensor(np.stack(sent))
        assert torch.allclose(codec.client_state()["codec_residual"], memory, rtol=0, atol=1e-15)
    for row, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        message, _ = reference_scaled_sign(update.numpy(), float(weight))
        got_message = messages[row].numpy().tobytes()
        assert got_message[8:] == message[8:]  # the sign bits, exactly
        # the scale word to the last bit or two (numpy and torch sum |v_j| in another order)
        assert np.frombuffer(got_message[:8]) == pytest.approx(np.frombuffer(message[:8]), rel=1e-15)
    assert codec.message_bytes() == 8 + math.ceil(21 / 8) == messages.shape[1]


@pytest.mark.parametrize(("source", "message"), [
    ("class Codec:\n    pass\n",
     "comm.codec=bad_codec:Codec: {path} has no class Codec declaring 'codec = CodecInfo(...)' in its body"),
    ("class Codec:\n    codec = CodecInfo(transport='broadcast')\n",
     "comm.codec=bad_codec:Codec: its codec = CodecInfo(...) is not valid: transport must be one of all_reduce, "
     "all_gather, got 'broadcast'"),
    ("class Codec:\n    codec = CodecInfo(transport=TRANSPORT)\n",
     "comm.codec=bad_codec:Codec: the declaration must use literal values only")])
def test_a_bad_codec_plugin_is_one_config_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                                     message: str) -> None:
    (tmp_path / "bad_codec.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry.cache_clear()
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["comm.codec=bad_codec:Codec"])
    assert str(raised.value) == message.format(path=tmp_path / "bad_codec.py")
    with pytest.raises(ConfigError, match=r"^comm.codec=missing_module:Codec: cannot find module missing_module"):
        load_config(None, ["comm.codec=missing_module:Codec"])


def test_a_plugin_that_is_not_the_compressor_its_transport_carries_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "summing_codec.py").write_text(
        "from pfl_dist.exchange.codecs import TopK\nfrom pfl_dist.exchange.spec import CodecInfo\n\n\n"
        "class Sparse(TopK):\n    codec = CodecInfo(transport='all_reduce')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry.cache_clear()
    spec = parse_codec("summing_codec:Sparse")
    with pytest.raises(ConfigError, match=r"^comm.codec=summing_codec:Sparse: summing_codec:Sparse is not a "
                                          r"SummingCompressor .* which its transport all_reduce needs$"):
        Codec(spec, shapes=[torch.Size((4,))], num_local_clients=1, dtype=torch.float64, device=torch.device("cpu"),
              seed=0, message=INCREMENT)


def test_a_plugin_whose_imported_declaration_differs_from_its_source_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The config check read error_feedback=False from the source; the class changes it on import
    (tmp_path / "shifty_codec.py").write_text(
        "from pfl_dist.exchange.codecs import TopK\nfrom pfl_dist.exchange.spec import CodecInfo\n\n\n"
        "class Sparse(TopK):\n    codec = CodecInfo(transport='all_gather')\n\n\n"
        "Sparse.codec = CodecInfo(transport='all_gather', error_feedback=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry.cache_clear()
    spec = parse_codec("shifty_codec:Sparse")
    assert not spec.entry.error_feedback
    with pytest.raises(ConfigError, match=r"^comm.codec=shifty_codec:Sparse: its imported codec declaration "
                                          r".* is not the one read from its source \(all_gather, "
                                          r"error_feedback=False\)$"):
        Codec(spec, shapes=[torch.Size((4,))], num_local_clients=1, dtype=torch.float64, device=torch.device("cpu"),
              seed=0, message=INCREMENT)
