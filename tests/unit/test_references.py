"""envpin.images.references: the one parser of image references (a registry's port is not a tag)."""

from __future__ import annotations

import pytest

from envpin.images import references


@pytest.mark.parametrize(
    "reference, repository",
    [
        ("localhost:5000/img", "localhost:5000/img"),  # the port is not a tag
        ("localhost:5000/img:1.2", "localhost:5000/img"),
        ("registry.example.com/ml/py@sha256:" + "a" * 64, "registry.example.com/ml/py"),
        ("python:3.11-slim", "python"),
    ],
)
def test_the_repository_of_a_reference(reference, repository):
    assert references.repository(reference) == repository
