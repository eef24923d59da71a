"""The trade-off's bytes say what they count: FL bytes (the default axis, the same for any world
size) and wire bytes named with the world size W; rows of different W are flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pfl_dist.sweep import codecs
from pfl_dist.sweep.results import Run
from pfl_dist.sweep.tradeoff import (
    build_curves,
    byte_axis,
    byte_series,
    markdown_table,
    tradeoff_rows,
    world_size_warning,
)

ROUNDS = (0, 2, 4)
MODEL_BYTES = 80  # 20 float32 parameters


def fake_run(path: Path, *, world_size: int, lam: float = 0.5, codec: str = "none") -> Run:
    """A finished 4-client run on `world_size` processes: per round 4 x 80 B up and down (FL), and
    the ring all-reduce's wire bytes 2(W-1)/W x payload per rank (0 on one process)."""
    wire_per_round = 2 * (world_size - 1) * 88  # the job total: W ranks x 2(W-1)/W x 88 B
    records = [{"round": r, "metrics": {"eval/ITR": 10.0 - r, "train/acc_personal": 0.5 + r / 10},
                "comm": {"wire_bytes_model": r * wire_per_round, "uplink_bytes": r * 4 * MODEL_BYTES,
                         "downlink_bytes": r * 4 * MODEL_BYTES, "uplink_bytes_dense": r * 4 * MODEL_BYTES,
                         "num_collectives": r}} for r in ROUNDS]
    config = {"run": {"seed": 0}, "data": {"kind": "synthetic", "R": 1.0, "num_clients": 4, "classes_per_client": 2},
              "algorithm": {"name": "fedclup", "lam": lam, "num_local_steps": 5, "batch_size": None},
              "train": {"num_rounds": ROUNDS[-1]}, "comm": {"codec": codec}}
    summary = {"config": config, "world_size": world_size, "final": records[-1]["metrics"],
               "comm": records[-1]["comm"], "time": {"wall_s": 1.0}, "num_rounds_completed": ROUNDS[-1]}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return Run(path)


def test_a_runs_byte_series_of_either_kind(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "w2", world_size=2)
    assert byte_series(run, "fl") == ([0, 2, 4], [0.0, 1280.0, 2560.0])
    assert byte_series(run, "wire") == ([0, 2, 4], [0.0, 352.0, 704.0])
    assert byte_series(run) == byte_series(run, "fl")  # the default axis


def test_the_default_axis_is_fl_bytes_and_wire_bytes_name_their_world_size(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "a", world_size=2), fake_run(tmp_path / "b", world_size=2, lam=0.1)]
    assert byte_axis(runs) == ("fl", "cumulative FL-equivalent training bytes (uplink + downlink)")
    kind, label = byte_axis(runs, "wire")
    assert kind == "wire" and "wire bytes (W=2)" in label
    assert world_size_warning(runs) is None


def test_a_table_shows_both_views_and_names_w(tmp_path: Path) -> None:
    # Prepare: two methods on 2 processes
    runs = [fake_run(tmp_path / "a", world_size=2), fake_run(tmp_path / "b", world_size=2, lam=0.1)]
    curves = build_curves(runs, metric="ITR", kind="fl")
    # Execute
    rows = tradeoff_rows(curves, metric="ITR", targets=[7.0])
    # Assert: FL totals and wire totals (named with W), bytes to target in the curves' kind
    assert rows[0]["total FL bytes"] == 2560.0 and rows[0]["total wire bytes (W=2)"] == 704.0
    assert rows[0]["FL bytes to eval/ITR <= 7"] == "2.56 KB (round 4)"
    assert rows[0]["final eval/ITR"] == 6.0  # named by where it was measured
    assert "W" not in rows[0]
    assert "| total FL bytes | total wire bytes (W=2) |" in markdown_table(rows)


def test_rows_of_different_world_sizes_are_flagged(tmp_path: Path) -> None:
    # Prepare: the same method on 1 and on 2 processes (a table over two sweeps' run dirs)
    runs = [fake_run(tmp_path / "one", world_size=1), fake_run(tmp_path / "two", world_size=2, lam=0.1)]
    # Execute
    rows = tradeoff_rows(build_curves(runs, metric="ITR", kind="wire"), metric="ITR", targets=[7.0])
    warning = world_size_warning(runs)
    # Assert: a W column, a header that says the wire bytes differ by W, and one warning line
    assert [row["W"] for row in rows] == ["1", "2"]
    assert rows[0]["total wire bytes (W=1, 2: differ by W)"] == 0.0
    assert rows[1]["total FL bytes"] == rows[0]["total FL bytes"]  # FL bytes do not depend on W
    assert warning is not None and "\n" not in warning and "W = 1, 2" in warning


def test_the_codec_table_names_the_world_size(tmp_path: Path) -> None:
    same = [fake_run(tmp_path / "none", world_size=2), fake_run(tmp_path / "fp16", world_size=2, codec="fp16")]
    rows = codecs.table_rows(same)
    assert "wire bytes (W=2)" in rows[0] and "wire bytes (W=2) to target" in rows[0] and "W" not in rows[0]
    mixed = codecs.table_rows([*same, fake_run(tmp_path / "topk", world_size=4, codec="topk")])
    assert [row["W"] for row in mixed] == [2, 2, 4]


@pytest.mark.parametrize("sizes", [(1, 2), (2, 2)])
def test_the_sweep_report_warns_only_when_world_sizes_differ(tmp_path: Path, sizes: tuple[int, int],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pfl_dist.sweep import plot

    for i, size in enumerate(sizes):
        fake_run(tmp_path / f"run{i}", world_size=size, lam=0.1 * (i + 1))
    assert plot.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert ("their wire bytes are not comparable" in err) == (sizes[0] != sizes[1])


def fake_pair_run(path: Path, *, seed: int, up: str, down: str, accs: list[float], per_round: int) -> Run:
    """A finished FedAvg run of one (uplink, downlink) pair on one seed: rounds 0, 2, 4 with the
    personal accuracies `accs` and `per_round` FL bytes up and as many down each round."""
    records = [{"round": r, "metrics": {"eval/acc_personal": a, "eval/acc_global": a / 2},
                "comm": {"wire_bytes_model": r * per_round, "uplink_bytes": r * per_round,
                         "downlink_bytes": r * per_round, "uplink_bytes_dense": r * 80, "downlink_bytes_dense": r * 80,
                         "num_collectives": r}} for r, a in zip(ROUNDS, accs, strict=True)]
    config = {"run": {"seed": seed}, "data": {"kind": "fashion_mnist", "num_clients": 4},
              "algorithm": {"name": "fedavg", "lam": 0.0}, "train": {"num_rounds": ROUNDS[-1]},
              "comm": {"codec": up, "downlink_codec": down}}
    summary = {"config": config, "world_size": 2, "final": records[-1]["metrics"], "comm": records[-1]["comm"],
               "time": {"wall_s": 1.0}, "num_rounds_completed": ROUNDS[-1]}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return Run(path)


def test_the_pair_table_gives_exact_totals_and_the_round_each_seed_reaches_the_target(tmp_path: Path) -> None:
    # dense finals 0.80, 0.90, 0.70 (mean 0.80, target 0.79); fp16's mean curve is 0.5, 0.8, 0.8
    dense = {0: [0.1, 0.8, 0.8], 1: [0.1, 0.6, 0.9], 2: [0.1, 0.5, 0.7]}
    half = {0: [0.1, 0.9, 0.9], 1: [0.1, 0.9, 0.9], 2: [0.1, 0.6, 0.6]}
    runs = [fake_pair_run(tmp_path / f"dense{s}", seed=s, up="none", down="none", accs=a, per_round=80)
            for s, a in dense.items()]
    runs += [fake_pair_run(tmp_path / f"fp16{s}", seed=s, up="fp16", down="fp16", accs=a, per_round=40)
             for s, a in half.items()]
    rows = {row["pair (up, down)"]: row for row in codecs.pair_rows(runs)}
    assert set(rows) == {"none", "fp16, down fp16"}
    assert rows["none"]["fashion_mnist total"] == "640 B (exact on every seed)"  # 4 rounds x 80 B x 2 directions
    assert rows["fp16, down fp16"]["fashion_mnist total"] == "320 B (exact on every seed)"
    assert rows["fp16, down fp16"]["fashion_mnist vs dense"] == "2.0x"
    # dense mean curve 0.1, 0.633, 0.8: first >= 0.79 at round 4; seed 0 at round 2, seed 1 at 4, seed 2 never
    assert rows["none"]["fashion_mnist FedAvg to target"] == "640 B (round 4); seeds 0, 1, 2: rounds 2, 4, –"
    # fp16 mean curve 0.1, 0.8, 0.8: round 2 (160 B); seeds 0 and 1 at round 2, seed 2 never
    assert rows["fp16, down fp16"]["fashion_mnist FedAvg to target"] == "160 B (round 2); seeds 0, 1, 2: rounds 2, 2, –"
