"""Fixtures every remote-engine test module shares; each module makes its own ``remote`` (a RemoteHost) to use them."""

from __future__ import annotations

import os

import pytest

from testutils import PY311
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


@pytest.fixture
def remote_spec(remote, install_kernelspec, monkeypatch):
    """Install a PY311 kernelspec on the remote host's engine over SSH (this harness's ssh on PATH): a maker.

    Modules with other needs (images, transports) define their own ``remote_spec``, which wins over this one.
    """
    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    yield lambda **config: install_kernelspec(PY311, engine=remote.ssh_url, **config)
    import envpin_provisioner

    envpin_provisioner.reset_caches()
