"""What a run shows in TensorBoard, metrics.jsonl and results.csv: lambda only for the methods
that use it, and every metric named by where it is measured."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from pfl_dist.sweep.results import find_runs, write_results_csv
from tests.helpers import read_metrics, read_summary, run_inprocess, write_learnable_mnist

SMALL = ("data.num_clients=4", "data.samples_per_client=40", "algorithm.num_local_steps=5", "train.num_rounds=2",
         "train.eval_every=1")
METHODS = {"fedavg": ("algorithm.name=fedavg",), "local": ("algorithm.name=local",),
           "fedclup": ("algorithm.name=fedclup", "algorithm.lam=0.2"),
           "fedprox": ("algorithm.name=fedprox", "algorithm.lam=0.3")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in METHODS.items():
        run_inprocess(root, *SMALL, *overrides, name=name)  # lam stays at its default 0.5 for fedavg/local
    return root


def logged_hparams(run_dir: Path) -> dict[str, Any]:
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams = data.session_start_info.hparams  # name -> google.protobuf.Value
                    return {key: getattr(value, str(value.WhichOneof("kind"))) for key, value in hparams.items()}
    raise AssertionError(f"no hparams in {run_dir}")


def test_hparams_show_lambda_only_where_it_is_used(runs: Path) -> None:
    shown = {name: logged_hparams(runs / name) for name in METHODS}
    assert shown["fedclup"]["lam"] == pytest.approx(0.2) and shown["fedprox"]["lam"] == pytest.approx(0.3)
    for name in ("fedavg", "local"):
        assert "lam" not in shown[name] and "lam_auto" not in shown[name], shown[name]
        assert shown[name]["method"] == name


def test_results_csv_shows_lambda_only_where_it_is_used(runs: Path) -> None:
    write_results_csv(runs / "results.csv", find_runs(runs, list(METHODS)))
    with open(runs / "results.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert (rows["fedclup"]["lam"], rows["fedclup"]["label"]) == ("0.2", "FedCLUP λ=0.2")
    assert (rows["fedprox"]["lam"], rows["fedprox"]["label"]) == ("0.3", "FedProx μ=0.3")
    for name, label in (("fedavg", "FedAvg"), ("local", "LocalTrain")):
        assert (rows[name]["lam"], rows[name]["lam_used"], rows[name]["label"]) == ("", "", label)


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return set(events.Tags()["scalars"])


def test_synthetic_metrics_are_named_train_except_the_distances_to_the_truth(runs: Path) -> None:
    """Synthetic accuracies and losses are measured on the clients' training samples."""
    records = read_metrics(runs / "fedclup")
    data_metrics = {"loss_personal", "loss_global", "acc_personal", "acc_global"}
    expected = {f"train/{m}" for m in data_metrics} | {"eval/ITR", "eval/ATR"}
    assert all(set(r["metrics"]) == expected for r in records)
    tags = scalar_tags(runs / "fedclup")
    assert expected <= tags and not {f"eval/{m}" for m in data_metrics} & tags
    # the trade-off curves: one per metric, named by axis, metric and method
    assert {f"1_tradeoff_fl_bytes/{m}/fedclup" for m in ("ITR", "ATR", "acc_personal", "acc_global")} <= tags
    summary = read_summary(runs / "fedclup")
    assert records[-1]["metrics"]["eval/ITR"] == summary["final"]["eval/ITR"]
    assert records[-1]["metrics"]["train/loss_personal"] == summary["final"]["train/loss_personal"]


def test_image_metrics_are_named_eval(tmp_path: Path) -> None:
    """Image losses and accuracies are measured on test splits: every metric is eval/."""
    (tmp_path / "mnist").mkdir()
    data = write_learnable_mnist(tmp_path / "mnist", num_train=3000, num_test=100)
    run_inprocess(tmp_path, "data.kind=mnist", f"data.data_dir={data}", "data.num_partitions=30", "data.num_clients=2",
                  "model.kind=logreg", "train.num_rounds=1", "algorithm.local_epochs=1", "algorithm.batch_size=32",
                  "algorithm.local_lr=0.01", "algorithm.global_lr=1/lam")
    records = read_metrics(tmp_path / "run")
    names = set(records[-1]["metrics"])
    assert {"eval/loss_personal", "eval/loss_global", "eval/acc_personal", "eval/acc_global"} <= names
    assert all(name.startswith("eval/") for name in names)
    assert not any(tag.startswith("train/") for tag in scalar_tags(tmp_path / "run"))


def test_results_csv_records_the_settings_each_method_read(runs: Path, tmp_path: Path) -> None:
    """Full-batch runs record their steps K, minibatch runs their epochs and batch size; step sizes
    are the numbers the algorithm used, not 'auto'; a family method's own keys and the codec (with
    its parameter, up and down) appear where they are read, and nowhere else."""
    # Prepare: Ditto with minibatch SGD, top-k up and qsgd down on the CSV sample, beside the synthetic GD runs
    data = ("data.kind=client_files", "data.data_dir=tests/data/fedclup_csv_sample", "data.num_clients=3",
            "data.dim=10", "data.num_classes=2", "train.num_rounds=2", "algorithm.batch_size=8",
            "algorithm.local_epochs=2", "algorithm.local_lr=0.05", "comm.codec=topk", "comm.downlink_codec=qsgd:4")
    ditto = run_inprocess(runs, *data, "algorithm.name=ditto", "algorithm.lam=0.1", name="ditto")
    names = [*METHODS, "ditto"]
    # Execute
    write_results_csv(runs / "results.csv", find_runs(runs, names))
    with open(runs / "results.csv", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    # Assert: the schedule each run used
    clup = read_summary(runs / "fedclup")
    assert (rows["fedclup"]["num_local_steps"], rows["fedclup"]["local_epochs"], rows["fedclup"]["batch_size"]) == (
        "5", "", "")
    assert (rows["ditto"]["num_local_steps"], rows["ditto"]["local_epochs"], rows["ditto"]["batch_size"]) == (
        "", "2", "8")
    # the resolved step sizes (local_lr: auto = 1/(L + lam) for FedCLUP; Ditto's personal_lr: auto)
    assert float(rows["fedclup"]["local_lr"]) == clup["algorithm"]["local_lr"] > 0
    assert float(rows["fedclup"]["global_step_factor"]) == clup["algorithm"]["global_step_factor"]
    assert float(rows["ditto"]["personal_lr"]) == ditto["algorithm"]["personal_lr"]
    assert ditto["algorithm"]["personal_lr"] == pytest.approx(1 / (1 / 0.05 + 0.1))  # auto: 1/(L + lam), L = 1/eta
    # the family's own keys only where read; the codec with its parameter only where something is sent
    assert (rows["ditto"]["personal_epochs"], rows["ditto"]["inner_steps"], rows["ditto"]["beta"]) == ("1", "", "")
    assert (rows["fedclup"]["personal_lr"], rows["fedclup"]["personal_epochs"]) == ("", "")
    assert (rows["ditto"]["codec"], rows["fedavg"]["codec"], rows["local"]["codec"]) == ("topk:0.01", "none", "")
    assert (rows["ditto"]["downlink_codec"], rows["fedavg"]["downlink_codec"], rows["local"]["downlink_codec"]) == (
        "qsgd:4:512", "none", "")
    assert rows["fedavg"]["global_step_factor"] == "" and rows["ditto"]["R"] == "" and rows["fedavg"]["R"] == "1.0"
    # the server's weighting as resolved (auto -> the method's paper), only where there is a server mean
    assert (rows["fedavg"]["client_weights"], rows["local"]["client_weights"]) == ("samples", "")
