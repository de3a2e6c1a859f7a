"""The unit tier: pure logic, no engine.  It points DOCKER_HOST at nothing itself, so a test that reached
for an engine fails at once instead of quietly using whatever engine the machine has."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_engine(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # the discard port: nothing answers
    from envpin.host import docker_client

    docker_client.reset()
    yield
    docker_client.reset()
