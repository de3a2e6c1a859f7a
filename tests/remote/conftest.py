"""Fixtures every remote-engine test module shares; each module makes its own ``remote`` (a RemoteHost) to use them."""

from __future__ import annotations

import pytest

from testutils.remote_host import exposed_listeners


@pytest.fixture
def admin(remote):
    """A Docker client of the remote host's own engine (its unix socket), to see what is on it from the outside."""
    client = remote.docker_client("admin")
    yield client
    client.close()


@pytest.fixture(scope="module")
def before_listeners():
    """This machine's listeners on non-loopback addresses before the module's remote host started."""
    return exposed_listeners()
