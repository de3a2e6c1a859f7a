"""The unit tier: pure logic, no engine.  It points DOCKER_HOST at nothing itself, so a test that reached
for an engine fails at once instead of quietly using whatever engine the machine has (whichever conftest
runs it: this tier never asks for the ``docker_client`` fixture)."""

from __future__ import annotations

import pytest

from testutils import no_engine


@pytest.fixture(autouse=True)
def no_engine_here(monkeypatch):
    with no_engine(monkeypatch):
        yield
