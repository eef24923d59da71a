"""`pfl_dist.run` (pfl_dist/api.py): the CLI's run path from Python, in a plain process, from a
thread, and inside a process group the caller made (the torchrun case: tests/distributed/test_api.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

import pfl_dist
from pfl_dist.config import load_config
from pfl_dist.errors import ConfigError
from tests.helpers import REPO, TINY, read_metrics, read_summary, run_cli

TINY_OVERRIDES = {**TINY, "algorithm.name": "fedavg", "algorithm.local_lr": 0.05}


def tiny(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {**TINY_OVERRIDES, "run.out_dir": str(tmp_path), **more}


def without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "time"}


def test_import_is_torch_free() -> None:
    """The launcher and the sweep driver import pfl_dist without torch: run is imported on first use."""
    code = "import sys, pfl_dist, pfl_dist.sweep; assert 'torch' not in sys.modules; print(pfl_dist.run.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pfl_dist.api"


def test_plain_process_run_equals_the_cli_run(tmp_path: Path) -> None:
    """Same run dir (run.name=auto), same summary but for timings, same metrics, bitwise-equal
    final/global.pt as `python -m pfl_dist.train` with the same config."""
    overrides = tiny(tmp_path / "cli")
    cli = run_cli(*(f"{k}={v}" for k, v in overrides.items()))
    assert cli.returncode == 0, cli.stderr
    cli_dir = next(p for p in (tmp_path / "cli").iterdir() if p.is_dir())
    cli_global = (cli_dir / "final" / "global.pt").read_bytes()
    cli_summary = read_summary(cli_dir)
    import shutil

    shutil.rmtree(tmp_path / "cli")  # the API must write the very same dir itself
    result = pfl_dist.run(None, overrides)
    assert isinstance(result, pfl_dist.RunResult)
    assert result.run_dir == cli_dir and result.run_dir.name.startswith("fedavg-")
    assert result.summary == read_summary(cli_dir)
    assert without_timings(result.summary) == without_timings(cli_summary)
    assert result.summary["world_size"] == 1 and result.summary["num_rounds_completed"] == 4
    assert result.metrics == read_metrics(cli_dir) and [m["round"] for m in result.metrics] == [0, 2, 4]
    assert [m["metrics"] for m in result.metrics] == [m["metrics"] for m in read_metrics(cli_dir)]
    assert (cli_dir / "final" / "global.pt").read_bytes() == cli_global
    assert not dist.is_initialized()


def test_yaml_path_mapping_and_config_give_one_run_dir(tmp_path: Path) -> None:
    """A YAML path, a mapping in the YAML's shape and a Config are the same config; overrides
    (a mapping of dotted keys) go on top of each, and a complete run is returned, not retrained."""
    mapping: dict[str, Any] = {}
    for key, value in tiny(tmp_path).items():
        section, name = key.split(".")
        mapping.setdefault(section, {})[name] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(mapping))
    first = pfl_dist.run(mapping)
    mtime = (first.run_dir / "summary.json").stat().st_mtime_ns
    assert pfl_dist.run(path).run_dir == first.run_dir
    cfg = load_config(path)
    assert pfl_dist.run(cfg).summary == first.summary
    assert (first.run_dir / "summary.json").stat().st_mtime_ns == mtime  # already complete: nothing retrained
    other = pfl_dist.run(path, {"algorithm.local_lr": 0.02, "run.name": "lr002"})
    assert other.run_dir == tmp_path / "lr002"
    assert other.summary["config"]["algorithm"]["local_lr"] == 0.02
    assert other.summary["final"] != first.summary["final"]
    assert cfg.to_dict()["run"]["name"] == "auto"  # the caller's Config is not changed


@pytest.mark.parametrize(("config", "overrides", "message"), [
    (None, {"algorithm.lamb": 0.5}, "unknown config key 'algorithm.lamb' (did you mean 'algorithm.lam'?)"),
    (None, {"algorithm": 0.5}, "override 'algorithm=0.5' must look like section.key=value"),
    (None, {"train.num_rounds": "many"}, "train.num_rounds must be int, got 'many'"),
    ({"algorithm": {"lamb": 1}}, None, "unknown config key 'algorithm.lamb' (did you mean 'algorithm.lam'?)"),
    (["algorithm.lam=1"], None, "config must be a YAML path, a mapping or a pfl_dist.config.Config, got list"),
    (None, ["algorithm.lam=1"], "overrides must be a mapping of section.key to values, got list"),
])
def test_bad_input_raises_the_clis_one_line(tmp_path: Path, config: Any, overrides: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        pfl_dist.run(config, {"run.out_dir": str(tmp_path / "out"), **(overrides or {})}
                     if isinstance(overrides, dict) or overrides is None else overrides)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()  # nothing half-written
    if isinstance(overrides, dict) and overrides.keys() == {"algorithm.lamb"}:
        cli = run_cli("algorithm.lamb=0.5", f"run.out_dir={tmp_path / 'out'}")
        assert (cli.returncode, cli.stderr.strip()) == (2, f"pfl_dist: error: {message}")


def test_missing_yaml_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        pfl_dist.run(tmp_path / "missing.yaml")


def test_existing_process_group_is_joined_and_left_alive(tmp_path: Path) -> None:
    """A group the caller made (as Lightning or Ray Train do) is used, not formed again, and it
    outlives the run; the results equal a run without any group but for the backend named."""
    plain = pfl_dist.run(None, tiny(tmp_path, **{"run.name": "plain"}))
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        group = dist.group.WORLD
        joined = pfl_dist.run(None, tiny(tmp_path, **{"run.name": "joined"}))
        assert dist.is_initialized() and dist.group.WORLD is group  # still the caller's
        ones = torch.ones(2)
        dist.all_reduce(ones)  # still usable
        assert ones.tolist() == [1.0, 1.0]
        with pytest.raises(ConfigError, match="^comm.backend is 'nccl' but the existing process group uses gloo; "):
            pfl_dist.run(None, tiny(tmp_path, **{"run.name": "nccl", "comm.backend": "nccl"}))
        assert dist.is_initialized()  # a refused run leaves the caller's group alone
    finally:
        dist.destroy_process_group()
    assert joined.summary["backend"] == "gloo" and plain.summary["backend"] is None
    assert not (tmp_path / "nccl").exists()
    assert joined.summary["final"] == plain.summary["final"]
    assert joined.summary["global_model_sha256"] == plain.summary["global_model_sha256"]


def test_runs_from_a_thread_without_touching_signal_handlers(tmp_path: Path) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    results: list[Any] = []

    def target() -> None:
        try:
            results.append(pfl_dist.run(None, tiny(tmp_path)))
        except BaseException as err:  # noqa: BLE001 - shown by the assertion below
            results.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=120)
    assert len(results) == 1 and isinstance(results[0], pfl_dist.RunResult), results
    assert results[0].summary["num_rounds_completed"] == 4
    assert signal.getsignal(signal.SIGTERM) is before


def test_thread_count_is_given_back(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        wanted = torch.get_num_threads()
        pfl_dist.run(None, tiny(tmp_path))  # the synthetic task caps its own runs at 1 thread
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(threads)


def test_result_load_reads_what_the_run_wrote(tmp_path: Path) -> None:
    result = pfl_dist.run(None, tiny(tmp_path))
    loaded = pfl_dist.RunResult.load(result.run_dir)
    assert loaded == result
    assert json.loads((result.run_dir / "summary.json").read_text()) == loaded.summary


def test_the_extending_example_runs(tmp_path: Path) -> None:
    """docs/EXTENDING.md's "Python API" code block, run as written (in a fresh directory)."""
    text = (REPO / "docs" / "EXTENDING.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    run_dir = next(line for line in lines if line.startswith("runs/api_example/fedavg-"))
    assert run_dir.endswith("[0, 2, 4]")
    assert lines[-1] == "unknown config key 'algorithm.lamb' (did you mean 'algorithm.lam'?)"
    summary = read_summary(tmp_path / run_dir.split()[0])
    assert summary["config"]["algorithm"]["sample_fraction"] == 0.5
    assert float(run_dir.split()[1]) == summary["final"]["eval/ITR"]
