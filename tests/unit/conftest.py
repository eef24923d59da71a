"""Fixtures of the unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from matplotlib.figure import Figure

from tests.figures import Saved


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Saved]:
    """Every figure saved while the test runs, in order (to a path or to a buffer), with its dpi."""
    saved: list[Saved] = []
    real_savefig = Figure.savefig

    def savefig(fig: Figure, target: Any, **kwargs: Any) -> None:
        saved.append(Saved(fig, kwargs.get("dpi")))
        real_savefig(fig, target, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved
