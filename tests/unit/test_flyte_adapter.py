"""envpin.adapters.flyte_adapter, offline: the image names Flyte gets."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "reference, flyte",
    [
        ("py", "py:latest"),
        ("localhost:5000/py", "localhost:5000/py:latest"),
        ("py:1", "py:1"),
        ("p@sha256:x", "p@sha256:x"),
    ],
)
def test_flyte_images_always_carry_a_tag(reference, flyte):
    from envpin.images.references import with_tag

    assert with_tag(reference) == flyte
