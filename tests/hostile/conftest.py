"""Fixtures of the hostile cases: a folder with results that must survive every case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hostile.hostile import existing_results


@pytest.fixture(scope="session")
def _results_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results_template")
    existing_results(root)
    return root


@pytest.fixture
def results(_results_template: Path, tmp_path: Path) -> Path:
    """tmp_path/root: a copy of `existing_results` (out/prev, a finished run, and look-alike files
    next to out/). -> the root; its out dir is root / 'out'."""
    root = tmp_path / "root"
    shutil.copytree(_results_template, root, symlinks=True)
    return root
