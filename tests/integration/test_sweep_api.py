"""`pfl_dist.sweep.run` end to end (one torchrun job): a sweep given as a mapping, overrides for every
point, results rows returned, and progress lines from inside the running points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pfl_dist.sweep
from pfl_dist.sweep import jobs
from tests.helpers import REPO, read_summary

pytestmark = [pytest.mark.integration, pytest.mark.distributed]
ROUNDS = 400


def test_sweep_run_from_python_with_overrides_and_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(jobs, "PROGRESS_S", 0.0)  # every new round line is shown
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = {"base": str(REPO / "configs" / "default.yaml"), "out_dir": str(tmp_path / "out"),
            "overrides": {"data.num_clients": 4, "data.samples_per_client": 40, "train.num_rounds": 50},
            "variants": {"fedavg": {"algorithm.name": "fedavg", "algorithm.local_lr": 0.05},
                         "clup": {"algorithm.name": "fedclup", "algorithm.lam": [0.5, 1.0]}},
            "launch": {"nproc_per_node": 1, "mode": "in_job"}}
    given = {"train.num_rounds": ROUNDS, "train.eval_every": 10, "algorithm.num_local_steps": 150}
    outcome = pfl_dist.sweep.run(spec, given)  # points of about a second: the sweep polls every 0.2 s
    assert (outcome.status, outcome.exit_code, outcome.failures) == ("ok", 0, {})
    assert sorted(row["name"] for row in outcome.rows) == ["clup__lam=0.5__seed=0", "clup__lam=1.0__seed=0",
                                                          "fedavg__seed=0"]
    for row in outcome.rows:  # the overrides reached every point, over the variants' and the file's values
        config = read_summary(outcome.out_dir / row["name"])["config"]
        assert (config["train"]["num_rounds"], config["algorithm"]["num_local_steps"]) == (ROUNDS, 150)
    out = capsys.readouterr().out
    progress = re.findall(rf"^ +\.\.\.  (\S+)  round +(\d+)/{ROUNDS} \| ", out, flags=re.MULTILINE)
    assert progress and {name for name, _ in progress} <= {row["name"] for row in outcome.rows}, out
    assert f"train.num_rounds={ROUNDS}" in out.splitlines()[0]  # the start line names the overrides
    assert (outcome.out_dir / "logs" / "job-0.out").read_text().count(f"round  {ROUNDS}/{ROUNDS} |") == 3
