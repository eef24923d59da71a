"""pfl_dist.sweep.family: the table reads what each run recorded (method facts, the per-client
distribution, bytes) and finds the uplink bytes at which a run first reaches the target."""

from __future__ import annotations

import json
from pathlib import Path

from pfl_dist.methods import METHODS
from pfl_dist.sweep.family import main, table_rows
from pfl_dist.sweep.results import Run
from tests.figures import UNIT_TICK, Saved, data_axes, overlapping, shown_tick_labels


def write_run(directory: Path, method: str, curve: list[tuple[int, float]], *, global_acc: float) -> Run:
    """A finished run dir: accuracy `curve` as (cumulative uplink bytes, acc_personal) per evaluation."""
    directory.mkdir(parents=True)
    config = {"algorithm": {"name": method, "lam": 0.5}, "run": {"seed": 0}}
    records = [{"round": 2 * i, "metrics": {"acc_personal": acc, "acc_global": global_acc},
                "comm": {"uplink_bytes": up, "downlink_bytes": up}} for i, (up, acc) in enumerate(curve)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"config": config, "method": METHODS[method].to_dict(),
               "final": {"acc_personal": curve[-1][1], "acc_global": global_acc},
               "personal": {"acc_personal_mean": 0.8, "acc_personal_p10": 0.6, "acc_personal_std": 0.1},
               "comm": {"uplink_bytes": curve[-1][0], "downlink_bytes": curve[-1][0]}, "time": {"wall_s": 1.0}}
    (directory / "summary.json").write_text(json.dumps(summary))
    return Run(directory)


def test_bytes_to_target_and_the_methods_own_facts(tmp_path: Path) -> None:
    # Prepare: FedAvg reaches 0.95 x 0.9 = 0.855 at its second evaluation; FedRep never;
    # LocalTrain sends nothing and reaches it at once.
    runs = [write_run(tmp_path / "fedavg", "fedavg", [(0, 0.1), (100, 0.7), (200, 0.86), (300, 0.9)], global_acc=0.5),
            write_run(tmp_path / "fedrep", "fedrep", [(0, 0.1), (50, 0.5), (100, 0.8)], global_acc=0.1),
            write_run(tmp_path / "local", "local", [(0, 0.1), (0, 0.88)], global_acc=0.2)]
    # Execute
    rows, target = table_rows(runs, fraction=0.95)
    # Assert
    assert target == 0.95 * 0.9
    by_method = {row["method"]: row for row in rows}
    assert by_method["FedAvg"]["uplink_bytes_to_target"] == 200
    assert by_method["FedRep"]["uplink_bytes_to_target"] is None
    assert by_method["LocalTrain"]["uplink_bytes_to_target"] == 0
    assert by_method["FedRep"]["acc_global"] is None  # no global model: not reported
    assert by_method["FedAvg"]["acc_global"] == 0.5
    assert main([str(tmp_path)]) == 0
    table = (tmp_path / "family_table.md").read_text()
    assert "| FedRep | 0.800 |" in table and "never" in table
    assert (tmp_path / "family.png").stat().st_size > 0


def test_family_figure_ticks_bytes_in_units_without_overlap(tmp_path: Path, drawn: list[Saved]) -> None:
    # Prepare: the published family run's byte range (17 MB to 337 MB of uplink; SCAFFOLD twice the rest)
    for method, scale in (("fedavg", 1), ("ditto", 1), ("scaffold", 2)):
        write_run(tmp_path / method, method, [(int(scale * 1.69e7 * t), 0.4 + t / 20) for t in range(1, 11)],
                  global_acc=0.4)
    write_run(tmp_path / "local", "local", [(0, 0.5), (0, 0.8)], global_acc=0.2)
    # Execute
    assert main([str(tmp_path)]) == 0
    # Assert
    (saved,) = drawn
    (ax,) = data_axes(saved.figure)
    labels = shown_tick_labels(saved.figure, ax, "x")
    assert len(labels) >= 3 and all(UNIT_TICK.match(label.get_text()) for label in labels), \
        [label.get_text() for label in labels]
    assert any(label.get_text().endswith(" MB") for label in labels)
    assert not overlapping(saved.figure, labels)
