"""The numbers README.md and docs/RESULTS.md show are what the documented commands print: the
`make run-default` output block (README) and the quick sweep's trade-off table (RESULTS §5).
Each command is run for real, as documented (its ledger bytes are deterministic, and so are
its metrics on a given machine); only the wall-clock columns are left out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pfl_dist.launch import TORCHRUN_ENV
from tests.helpers import REPO

pytestmark = pytest.mark.distributed

ENV = {**os.environ, **TORCHRUN_ENV, "OMP_NUM_THREADS": "1"}
_MS = re.compile(r" \| [0-9.]+ ms/round$")  # the round line's wall-clock part


def readme_block() -> list[str]:
    """The lines of README's `make run-default` output block."""
    text = (REPO / "README.md").read_text()
    start = text.index("`make run-default` runs")
    block = text[text.index("```\n", start) + 4:]
    return block[:block.index("```")].splitlines()


def markdown_rows(lines: list[str]) -> list[dict[str, str]]:
    """The rows of the first markdown table in `lines`, by header."""
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
            for row in table[2:]]


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_readme_shows_what_make_run_default_prints(tmp_path: Path) -> None:
    # Prepare: the documented block, and `make run-default`'s command (NPROC=4) into a scratch dir
    documented = readme_block()
    nproc = re.search(r"^NPROC\s*\?=\s*(\d+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert nproc is not None
    # Execute
    printed = run([sys.executable, "-m", "pfl_dist.launch", f"--nproc-per-node={nproc.group(1)}", "--config",
                   "configs/default.yaml", f"run.out_dir={tmp_path}"]).splitlines()
    # Assert: the last round line (but its milliseconds), the final metrics, the bytes, the run dir
    last_round = next(line for line in documented if line.startswith("round "))
    assert _MS.sub("", last_round) in [_MS.sub("", line) for line in printed]
    for prefix in ("final: ", "training bytes: "):
        assert next(line for line in documented if line.startswith(prefix)) in printed
    run_dir = next(line for line in documented if line.startswith("run dir: ")).split()[2]
    assert f"run dir: {tmp_path / Path(run_dir).name}  (summary.json, metrics.jsonl)" in printed


def test_results_section_5_shows_what_the_quick_sweep_prints(tmp_path: Path) -> None:
    # Prepare: RESULTS §5's table (every column but the wall-clock ones)
    text = (REPO / "docs" / "RESULTS.md").read_text()
    section = text[text.index("## 5. The quick sweep"):text.index("## 6.")]
    documented = markdown_rows(section.splitlines())
    # Execute: `make run`'s command into a scratch dir
    printed = markdown_rows(run([sys.executable, "-m", "pfl_dist.sweep", "configs/sweeps/quick.yaml",
                                 "--out-dir", str(tmp_path)]).splitlines())
    # Assert: the same rows, cell for cell, in the documented columns
    assert len(documented) == len(printed) == 7
    columns = list(documented[0])
    assert [[row[c] for c in columns] for row in printed] == [[row[c] for c in columns] for row in documented]
