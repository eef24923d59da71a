"""Content fingerprints of the user files a run reads (pfl_dist/inputs.py) and the identity they
enter (pfl_dist/rundir.py), without training: which files are hashed, that configs without user
files keep the hash they had before fingerprints, and the sweep's view of a changed data file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pfl_dist import inputs
from pfl_dist.config import SECTIONS, Config, load_config
from pfl_dist.rundir import LATER_KEYS, changed_keys, config_hash, result_config
from pfl_dist.sweep import cli as sweep
from pfl_dist.sweep.spec import load_sweep
from tests.data_fixtures import write_cifar10, write_leaf
from tests.helpers import REPO, write_sweep
from tests.unit.test_sweep import fake_run

SAMPLE = REPO / "tests" / "data" / "fedclup_csv_sample"
CLIENT_FILES = ("data.kind=client_files", "data.dim=10", "data.num_classes=2")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def at_one_process(cfg: Config) -> Config:
    cfg.set_world_size(1)
    return cfg


def edit_csv(path: Path) -> None:
    """Change one feature value of the first sample (same size, other contents)."""
    lines = path.read_text().splitlines()
    fields = lines[0].split(",")
    fields[0] = fields[0].replace(fields[0][-1], "7" if fields[0][-1] != "7" else "3")
    lines[0] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


# --- configs without user files: config and world size only -----------------------------------
# Literal hashes, so that an accidental change of the identity shows. They changed when the world
# size entered the identity (a run on 2 processes is another run than on 1: its wire bytes differ)
# and data.test_fraction became 'auto' (a held-out split for client_files too).

IDENTITY_HASHES = {
    ((), 1): "9515255e4b1dadd5c728969b6f10ce6cc0f1c0b83313ee5147358274a312c2cf",
    ((), 2): "497294f0f3c009ddff9527884e36b7af651c90322be39b5f3b7c5af13aaa8ce3",
    (("data.R=0.3", "train.num_rounds=7", "algorithm.lam=0.2"), 1):
        "1eaf66bf35f7d2cd83d75d97719d6fa13c62dbe16f3543d7c85b8f5aa307dbac",
    (("data.kind=mnist5k", "model.kind=logreg", "algorithm.batch_size=20"), 2):
        "6be681cc4bba5a0f8d25b995a1546245207d50ee77a2a3f18b825a646e66a3fb",
}


@pytest.mark.parametrize(("overrides", "world_size"), list(IDENTITY_HASHES))
def test_a_config_without_user_files_is_identified_by_its_config_and_world_size(overrides: tuple[str, ...],
                                                                                world_size: int) -> None:
    cfg = load_config(None, overrides)
    cfg.set_world_size(world_size)
    assert cfg.inputs == {}
    assert cfg.identity() == {**cfg.to_dict(), "launch": {"world_size": world_size}}  # no inputs section
    assert config_hash(cfg.identity()) == IDENTITY_HASHES[(overrides, world_size)]
    assert cfg.run_dir.name == f"fedclup-{IDENTITY_HASHES[(overrides, world_size)][:8]}"


def test_shipped_image_configs_keep_their_hash() -> None:
    cfg = load_config(REPO / "configs" / "fmnist_logreg.yaml")
    cfg.set_world_size(10)
    assert cfg.inputs == {}
    assert config_hash(cfg.identity()) == "b8b03c415c933ac52e524a63b774dfd82c7cd78dabff6156fdc7693287f6d66d"


def earlier(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as a run made before LATER_KEYS existed recorded it."""
    return {name: {key: value for key, value in values.items() if f"{name}.{key}" not in LATER_KEYS}
            if isinstance(values, dict) else values for name, values in config.items()}


def test_keys_added_later_are_left_out_at_their_earlier_value_unless_the_method_changed() -> None:
    # Prepare
    fedavg, uniform = at_one_process(load_config(None, ["algorithm.name=fedavg"])), at_one_process(load_config(None, [
        "algorithm.name=fedavg", "algorithm.client_weights=uniform"]))
    # Assert: LATER_KEYS holds the defaults; at them FedAvg's identity is a run's from before them
    defaults = {f"{name}.{f.name}": f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                for name, section in SECTIONS.items() for f in dataclasses.fields(section)}
    assert {key: defaults[key] for key in LATER_KEYS} == LATER_KEYS
    assert config_hash(fedavg.identity()) == config_hash(earlier(fedavg.identity()))
    assert changed_keys(result_config(earlier(fedavg.identity())), result_config(uniform.identity())) == [
        "algorithm.client_weights was 'auto', now 'uniform'"]
    # ... while pFedMe, Ditto and SCAFFOLD runs from before the keys are other runs (their rules changed)
    for method, key in (("pfedme", "algorithm.inner_warm_start"), ("ditto", "algorithm.client_weights"),
                        ("scaffold", "algorithm.client_weights")):
        cfg = at_one_process(load_config(None, [f"algorithm.name={method}"]))
        assert config_hash(cfg.identity()) != config_hash(earlier(cfg.identity()))
        assert changed_keys(result_config(earlier(cfg.identity())), result_config(cfg.identity())) == [
            f"{method}'s results changed in pfl_dist since that run ({key}, now {LATER_KEYS[key]!r})"]


def test_a_qsgd_run_from_before_bucketed_norms_is_another_config_while_other_codecs_keep_their_hash() -> None:
    # A qsgd run made before issue 25 recorded its short string: one norm per update, other results
    for short in ("qsgd", "qsgd:4", "qsgd:2"):
        cfg = at_one_process(load_config(None, [f"comm.codec={short}"]))
        full = cfg.comm.codec
        assert full == f"qsgd:{short.partition(':')[2] or 4}:512"
        before = {**cfg.identity(), "comm": {**cfg.identity()["comm"], "codec": short}}
        assert config_hash(before) != config_hash(cfg.identity())
        assert cfg.run_dir.name == f"fedclup-{config_hash(cfg.identity())[:8]}"
        assert changed_keys(result_config(before), result_config(cfg.identity())) == [
            f"comm.codec={short} gives other results in pfl_dist since that run (now recorded as {full})"]
    # the spelled-out string is the same run as the short one today
    assert load_config(None, ["comm.codec=qsgd:4:512"]).comm.codec == load_config(None, ["comm.codec=qsgd"]).comm.codec
    # the codecs whose results did not change keep their string, so their runs keep their hash and dir
    for text in ("none", "fp16", "topk", "randk:0.1", "powersgd"):
        assert load_config(None, [f"comm.codec={text}"]).comm.codec == text


# --- which files ------------------------------------------------------------------------------


def test_client_files_hash_exactly_the_files_the_task_reads(tmp_path: Path) -> None:
    data = shutil.copytree(SAMPLE, tmp_path / "data")
    cfg = at_one_process(load_config(None, [*CLIENT_FILES, f"data.data_dir={data}", "data.num_clients=2"]))
    record = cfg.inputs["data.data_dir"]
    # clients 1 and 2 and the true models; not client 3, global_true_model.npy or README.md
    assert list(record.files) == ["1_client_data.csv", "2_client_data.csv", "local_true_model.npy"]
    assert record.files["2_client_data.csv"] == f"{(data / '2_client_data.csv').stat().st_size} " \
                                                f"{sha256(data / '2_client_data.csv')}"
    manifest = "".join(f"{name}\t{entry}\n" for name, entry in record.files.items())
    assert record.digest == hashlib.sha256(manifest.encode()).hexdigest()
    assert set(cfg.identity()["inputs"]) == {"data.data_dir"}
    # A file the run does not read changes nothing; one it reads changes the identity.
    for unread in ("3_client_data.csv", "global_true_model.npy", "README.md"):
        (data / unread).write_text("edited\n")
    again = at_one_process(load_config(None, [*CLIENT_FILES, f"data.data_dir={data}", "data.num_clients=2"]))
    assert config_hash(again.identity()) == config_hash(cfg.identity())
    edit_csv(data / "2_client_data.csv")
    edited = at_one_process(load_config(None, [*CLIENT_FILES, f"data.data_dir={data}", "data.num_clients=2"]))
    assert edited.inputs["data.data_dir"].files["1_client_data.csv"] == record.files["1_client_data.csv"]
    assert config_hash(edited.identity()) != config_hash(cfg.identity())
    assert edited.run_dir != cfg.run_dir  # run.name=auto: another run dir


def test_leaf_and_cifar10_hash_their_json_and_batches_only(tmp_path: Path) -> None:
    write_leaf(tmp_path / "leaf", num_writers=6, num_files=2)
    (tmp_path / "leaf" / "train" / "notes.txt").write_text("not read\n")
    leaf = load_config(None, ["data.kind=leaf", f"data.data_dir={tmp_path / 'leaf'}", "model.kind=logreg",
                              "algorithm.batch_size=4"]).inputs["data.data_dir"]
    assert list(leaf.files) == sorted(f"{split}/all_data_{f}_niid_0_keep_0_{split}_9.json"
                                      for split in ("train", "test") for f in range(2))
    write_cifar10(tmp_path / "cifar", per_batch=4, test=4)
    (tmp_path / "cifar" / "batches.meta").write_bytes(b"not read")
    cifar = load_config(None, ["data.kind=cifar10", f"data.data_dir={tmp_path / 'cifar'}", "model.kind=logreg",
                               "algorithm.batch_size=4"]).inputs["data.data_dir"]
    assert list(cifar.files) == [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    assert cifar.files["test_batch"].split(" ")[1] == sha256(tmp_path / "cifar" / "test_batch")


def test_the_file_names_are_the_readers_own() -> None:
    from pfl_dist.data import cifar, client_files

    assert (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH) == inputs.CIFAR10_FILES
    assert inputs.TRUE_MODELS == client_files.TRUE_MODELS and inputs.CLIENT_FORMATS == client_files.FORMATS


def test_init_file_record_is_the_files_sha256(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((10, 2)))
    cfg = at_one_process(load_config(None, [f"model.init_file={tmp_path / 'w.npy'}"]))
    assert inputs.digests(cfg.inputs) == {"model.init_file": sha256(tmp_path / "w.npy")}
    old = config_hash(cfg.identity())
    np.save(tmp_path / "w.npy", np.ones((10, 2)))
    changed = at_one_process(load_config(None, [f"model.init_file={tmp_path / 'w.npy'}"]))
    [line] = changed_keys(result_config(cfg.identity()), result_config(changed.identity()))
    assert line == (f"model.init_file contents changed (sha256 {cfg.inputs['model.init_file'].digest[:12]}.. -> "
                    f"{sha256(tmp_path / 'w.npy')[:12]}..)")
    assert config_hash(changed.identity()) != old


def test_missing_and_unreadable_files_are_recorded_not_raised(tmp_path: Path) -> None:
    cfg = load_config(None, [*CLIENT_FILES, f"data.data_dir={tmp_path / 'absent'}", "data.num_clients=2",
                             f"model.init_file={tmp_path / 'absent.npy'}"])
    assert cfg.inputs["model.init_file"].digest == "missing"
    assert cfg.inputs["data.data_dir"].files == {"1_client_data.csv": "missing", "2_client_data.csv": "missing"}
    (tmp_path / "folder.npy").mkdir()  # a folder where the file should be
    folder = load_config(None, [f"model.init_file={tmp_path / 'folder.npy'}"])
    assert folder.inputs["model.init_file"].digest.startswith("unreadable (")


def test_a_changed_path_is_named_before_the_contents() -> None:
    saved = {"model.init_file": "a.npy", "inputs.model.init_file": "1" * 64}
    current = {"model.init_file": "b.npy", "inputs.model.init_file": "2" * 64}
    assert changed_keys(saved, current)[0] == "model.init_file was 'a.npy', now 'b.npy'"
    assert changed_keys({}, {"inputs.data.data_dir": "2" * 64}) == [
        "data.data_dir contents were not recorded by that run (it predates content fingerprints), "
        "now sha256 222222222222.."]


# --- the sweep driver's view ------------------------------------------------------------------


def test_a_sweep_point_whose_data_file_changed_is_pending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = shutil.copytree(SAMPLE, tmp_path / "data")
    overrides = {"data.kind": "client_files", "data.data_dir": str(data), "data.num_clients": 3, "data.dim": 10,
                 "data.num_classes": 2, "train.num_rounds": 2}
    path = write_sweep(tmp_path / "sweep.yaml", overrides=overrides, grid={"algorithm.lam": [0.1, 0.5]})
    for point in load_sweep(path).points:
        fake_run(point.cfg.run_dir, config=point.cfg.to_dict())
        summary = json.loads((point.cfg.run_dir / "summary.json").read_text())
        summary["inputs"] = inputs.digests(point.cfg.inputs)
        (point.cfg.run_dir / "summary.json").write_text(json.dumps(summary))
    assert sweep.main([str(path), "--dry-run", "--mode", "per_point"]) == 0
    assert "2 points valid, 0 to run, 2 complete" in capsys.readouterr().out
    assert len(sweep.collect(load_sweep(path))) == 2
    old = inputs.digests(load_sweep(path).points[0].cfg.inputs)["data.data_dir"]
    edit_csv(data / "3_client_data.csv")
    new = inputs.digests(load_sweep(path).points[0].cfg.inputs)["data.data_dir"]
    assert sweep.main([str(path), "--dry-run", "--mode", "per_point"]) == 0
    out = capsys.readouterr().out
    assert (f"pending lam=0.1__seed=0  (config changed: data.data_dir contents changed (sha256 {old[:12]}.. -> "
            f"{new[:12]}..))") in out
    assert "2 points valid, 2 to run, 0 complete" in out
    assert sweep.collect(load_sweep(path)) == []  # results.csv keeps no row of the old data
