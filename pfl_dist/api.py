"""The Python API: `pfl_dist.run(config, overrides=None) -> RunResult` (docs/EXTENDING.md, "Python API").

One run in the calling process, on the path `python -m pfl_dist.train` takes (`pfl_dist.train.run`):
the same validation, the same one-line errors (raised as `PflError`s: `ConfigError` and the rest,
whose `str()` is the line the CLI prints), the same run dir and files. Where it runs:
- a plain process or a notebook: one process hosting every client, no process group (as the CLI);
- inside a torchrun job: torchrun's ranks, the group formed here and destroyed at the end;
- where a default process group already exists (made by Lightning, Ray Train, a Slurm wrapper):
  that group, joined as it is and left alive for its owner.
SIGTERM/SIGINT stop a run at an agreed round only when it is called from the main thread; from
another thread no signal handler is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pfl_dist.config import Config, apply_overrides, read_yaml
from pfl_dist.errors import ConfigError
from pfl_dist.runtime import existing_group, planned_rank_and_size

ConfigSource = str | Path | Mapping[str, Any] | Config


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, summary.json's content and metrics.jsonl's rows (one per
    evaluation). On the ranks other than 0, which write no files, `summary` is the rank's own copy
    of it (equal to rank 0's but for its timings) and `metrics` is empty."""

    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """Read a complete run dir (one that has summary.json)."""
        run_dir = Path(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics_path = run_dir / "metrics.jsonl"
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        return cls(run_dir=run_dir, summary=summary, metrics=[json.loads(line) for line in lines if line.strip()])


def build_config(config: ConfigSource | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A validated Config from a YAML path, a mapping in the YAML's shape or a Config (copied: the
    caller's is not changed), with `overrides` ({"algorithm.lam": 0.5, ...}) on top."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of section.key to values, got {type(overrides).__name__}")
    if isinstance(config, Config):
        raw: Mapping[str, Any] = config.to_dict()
    elif isinstance(config, (str, Path)):
        raw = read_yaml(config)
    elif config is None or isinstance(config, Mapping):
        raw = config or {}
    else:
        raise ConfigError(f"config must be a YAML path, a mapping or a pfl_dist.config.Config, "
                          f"got {type(config).__name__}")
    return apply_overrides(raw, overrides or {})


def run(config: ConfigSource | None = None, overrides: Mapping[str, Any] | None = None, *,
        overwrite: bool = False) -> RunResult:
    """Train one run in this process and return its result (see the module docstring). `overwrite`
    is the CLI's --overwrite. A run dir that already holds this config's complete run is not
    trained again: its result is returned."""
    from pfl_dist.train import run as run_training

    cfg = build_config(config, overrides)
    rank, _ = planned_rank_and_size()
    group_before = existing_group() is not None
    threads = torch.get_num_threads()
    try:
        summary = run_training(cfg, overwrite=overwrite)
    finally:
        torch.set_num_threads(threads)  # the run sizes torch's thread pool for itself (runtime.set_num_threads)
        if not group_before and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # a failed run leaves no group of its own behind (only torchrun's ranks)
    if rank == 0:
        return RunResult.load(cfg.run_dir)
    return RunResult(run_dir=cfg.run_dir, summary=json.loads(json.dumps(summary)), metrics=[])
