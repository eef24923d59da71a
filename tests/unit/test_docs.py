"""What README.md and docs/ state about the code, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from pfl_dist.methods import METHODS

REPO = Path(__file__).resolve().parents[2]


def read_doc(name: str) -> str:
    """A doc's text with its line breaks folded into spaces (sentences wrap anywhere)."""
    return " ".join((REPO / name).read_text().split())


def listed_labels(text: str) -> set[str]:
    """'FedCLUP, FedProx, pFedMe and Ditto' -> the four labels."""
    return {label.strip() for label in re.split(r",| and ", text) if label.strip()}


def test_the_docs_name_every_method_that_shows_lambda_and_no_other() -> None:
    # Prepare: the methods whose updates use lambda, by the label the docs use
    expected = {info.label for info in METHODS.values() if info.uses_lam}
    readme, architecture = read_doc("README.md"), read_doc("docs/ARCHITECTURE.md")
    # Execute: the lists in README's TensorBoard paragraph and ARCHITECTURE's metric paragraph
    in_readme = re.search(r"lambda is shown only for the methods whose updates use it: ([^)]*)\)", readme)
    in_architecture = re.search(r"Which methods show lambda \(`MethodInfo.uses_lam` in `pfl_dist/methods.py`: "
                                r"([^)]*)\)", architecture)
    # Assert
    assert in_readme is not None and in_architecture is not None
    assert listed_labels(in_readme.group(1)) == expected
    assert listed_labels(in_architecture.group(1)) == expected
