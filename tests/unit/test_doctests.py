"""The examples in docstrings are run: a doc that shows a result the code no longer gives fails here.

Every module of both packages whose source shows an example (``>>>``) is
found by reading the files, so an example added anywhere runs without a list
to keep up to date (and a module moved keeps its examples running).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGES = ("envpin", "envpin_provisioner")


def modules_with_examples() -> list[str]:
    """The dotted names of the modules of :data:`PACKAGES` whose source contains a ``>>>`` example."""
    found = []
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in sorted(root.rglob("*.py")):
            if ">>> " not in path.read_text(encoding="utf-8"):
                continue
            parts = path.relative_to(root).with_suffix("").parts
            found.append(".".join((package, *parts[: -1 if parts[-1] == "__init__" else None])))
    return found


MODULES = modules_with_examples()


def test_the_examples_are_found():
    # An empty list would make the parametrized test below vanish instead of fail.
    assert any(name.split(".")[-1] == "references" for name in MODULES), MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
