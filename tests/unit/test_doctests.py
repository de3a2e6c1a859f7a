"""The examples in docstrings are run: a doc that shows a result the code no longer gives fails here."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["envpin.images.references"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
