"""`pfl_dist.run` inside a 2-rank torchrun job: the run dir and results of `torchrun -m
pfl_dist.train` with the same config, whether pfl_dist forms the process group or the caller did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import REPO, TINY, read_metrics, read_summary

pytestmark = pytest.mark.distributed

OVERRIDES = {**TINY, "algorithm.name": "fedavg", "algorithm.local_lr": 0.05}
WORKER = Path(__file__).with_name("api_worker.py")


def torchrun(tmp_path: Path, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


def api_job(tmp_path: Path, mode: str, out_dir: Path) -> list[dict[str, Any]]:
    overrides = tmp_path / f"{mode}.json"
    overrides.write_text(json.dumps({**OVERRIDES, "run.out_dir": str(out_dir)}))
    torchrun(tmp_path, str(WORKER), str(tmp_path / mode), mode, str(overrides))
    return [json.loads((tmp_path / f"{mode}.rank{rank}").read_text()) for rank in (0, 1)]


def without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "time"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(out_dir, the CLI's run dir moved out of it): one `torchrun -m pfl_dist.train` job."""
    tmp_path = tmp_path_factory.mktemp("api_cli")
    out_dir = tmp_path / "runs"
    torchrun(tmp_path, "-m", "pfl_dist.train", *(f"{k}={v}" for k, v in {**OVERRIDES, "run.out_dir": out_dir}.items()))
    (written,) = [p.parent for p in out_dir.glob("*/summary.json")]
    return out_dir, written.rename(tmp_path / written.name)  # the API must write the very same dir itself


@pytest.mark.parametrize("mode", ["torchrun", "caller"])
def test_api_in_a_torchrun_job_equals_the_cli(tmp_path: Path, cli_run: tuple[Path, Path], mode: str) -> None:
    api_out, cli_dir = cli_run
    shutil.rmtree(api_out, ignore_errors=True)  # the other mode's run
    ranks = api_job(tmp_path, mode, api_out)
    zero, one = ranks
    result = zero["results"][0]
    assert Path(result["run_dir"]) == api_out / cli_dir.name  # the same auto name: same identity, W = 2
    assert result["summary"] == read_summary(api_out / cli_dir.name)
    assert without_timings(result["summary"]) == without_timings(read_summary(cli_dir))
    assert result["summary"]["world_size"] == 2 and result["summary"]["backend"] == "gloo"
    assert [m["metrics"] for m in result["metrics"]] == [m["metrics"] for m in read_metrics(cli_dir)]
    final = Path("final") / "global.pt"
    assert (api_out / cli_dir.name / final).read_bytes() == (cli_dir / final).read_bytes()
    # rank 1 writes nothing: its own copy of the summary, the same but for timings, and no metrics
    assert one["results"][0]["run_dir"] == result["run_dir"] and one["results"][0]["metrics"] == []
    assert without_timings(one["results"][0]["summary"]) == without_timings(result["summary"])
    if mode == "caller":  # joined, not formed again, and left alive for the caller
        assert zero["group_alive"] and one["group_alive"] and zero["all_reduce"] == 3.0
    else:  # formed and destroyed per call, so a second call in the same job trains too
        assert not zero["group_alive"] and not one["group_alive"]
        second = zero["results"][1]
        assert second["run_dir"] != result["run_dir"] and second["summary"]["config"]["algorithm"]["local_lr"] == 0.02
        assert second["summary"]["num_rounds_completed"] == OVERRIDES["train.num_rounds"]
