"""A hostile kernel on a TLS engine against the server's channel relays (issue 28, review 'hostile28').

Each of the server's channel connections is carried by an ``exec`` in the
kernel's container (``tls_kernel.ChannelRelay``): the relay process runs as
the kernel's user, so the kernel can stop it (SIGSTOP), and then nothing
reads what the server sends.  The server must not hang nor keep a thread per
frozen relay: the kernel's shutdown ends in seconds, its relay threads with it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from testutils import PY311, async_wait_for, containers, wait_for
from testutils.kernels import run_json
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rhtls", images=[PY311]) as host:
        yield host


@pytest.fixture
def tls_spec(remote, install_kernelspec, monkeypatch):
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(remote.cert_path))
    yield lambda **config: install_kernelspec(PY311, engine=remote.tcp_url, **config)
    import envpin_provisioner

    envpin_provisioner.reset_caches()


#: Run in the kernel: SIGSTOP every channel relay of its container (an exec whose command line holds the RELAY).
FREEZE = (
    "(lambda os, signal: [os.kill(int(p), signal.SIGSTOP) for p in os.listdir('/proc') if p.isdigit()"
    " and int(p) != os.getpid() and b'socket.AF_UNIX' in open(f'/proc/{p}/cmdline', 'rb').read()])"
    "(__import__('os'), __import__('signal'))"
)


def _relay_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "envpin-tls-relay" and t.is_alive())


async def test_a_kernel_that_freezes_its_relays_cannot_hang_the_server(remote, tls_spec, notebook_dir):
    from jupyter_client.manager import AsyncKernelManager

    admin = remote.docker_client("admin")
    name = tls_spec()
    km = AsyncKernelManager(kernel_name=name)
    await asyncio.wait_for(km.start_kernel(cwd=str(notebook_dir), env=dict(os.environ)), 60)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        assert (await run_json(kc, "1")) == 1
        assert _relay_threads() >= 4
        kc.execute(FREEZE)  # its reply never comes: the relays that would carry it are stopped
        (container,) = containers(admin, kernel=km.kernel_id)

        def frozen_relays():
            top = container.top(ps_args="-o pid,stat,args")
            return [p for p in top["Processes"] if p[1].startswith("T") and "import os,socket,sys" in p[2]]

        # The test's premise: the relays are stopped (the cell stops them as it runs; no reply says when).
        await async_wait_for(lambda: len(frozen_relays()) >= 4, 30, "the kernel to stop its relays")
        # The event loop still turns while every relay is frozen: 20 ticks of 50 ms take about a second.
        started = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.05)
        assert time.monotonic() - started < 3
        # The server sends more than a frozen relay's pipes hold: nothing of it may block the loop either.
        for _ in range(200):
            kc.execute("x = '" + "y" * 60000 + "'")
        started = time.monotonic()
        await asyncio.wait_for(km.shutdown_kernel(now=False), 60)
        assert time.monotonic() - started < 30
    finally:
        kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    assert containers(admin, role="kernel") == []
    # Seconds: the relay's close shuts down both sockets of each connection.  It used to leave the engine's side to
    # the engine, and a thread blocked sending to a frozen relay's exec outlived the kernel by over 20 s (CI, once).
    wait_for(lambda: _relay_threads() == 0, 5, "the relay threads of the frozen kernel to end")
    admin.close()


async def test_a_frozen_tls_engine_is_reported_in_seconds(remote, tls_spec, notebook_dir):
    """The engine's process stopped (SIGSTOP: its TCP port still accepts, nothing answers): no hang, one paragraph.

    Was: the HTTP library's ``ReadTimeout(...)`` itself (``engine.call`` explained only refused connections).
    """
    from jupyter_client.manager import AsyncKernelManager

    name = tls_spec()
    km = AsyncKernelManager(kernel_name=name)
    await asyncio.wait_for(km.start_kernel(cwd=str(notebook_dir), env=dict(os.environ)), 60)
    pid = remote.run(["cat", "/run/docker.pid"], as_user=False, capture_output=True, text=True).stdout.strip()
    try:
        remote.run(["kill", "-STOP", pid], as_user=False)
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(km.restart_kernel(), 90)
        took = time.monotonic() - started
        message = str(failed.value)
        flat = " ".join(message.split())
        # Bounded by the API timeout (docker_client.API_TIMEOUT, 30 s), and said in one paragraph naming the engine.
        assert took < 45, (took, message)
        assert remote.tcp_url in flat and "answer" in flat and "\n\n" not in message.strip(), repr(failed.value)
    finally:
        remote.run(["kill", "-CONT", pid], as_user=False)
        if km.has_kernel:
            await asyncio.wait_for(km.shutdown_kernel(now=True), 60)
