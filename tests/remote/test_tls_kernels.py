"""Kernels on another machine's engine over TCP+TLS (issue 28), against the RemoteHost harness.

The engine is reached only at ``tcp://ADDR:2376`` with the client certificate
(``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``); nothing of that machine but the
engine API is used.  The kernel's channels ride that same TLS connection
(``envpin_provisioner.remote.tls_kernel``): no port is published, and the
wire between the two machines, captured here, never shows a byte of a cell's
output in the clear.  One RemoteHost serves the module; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid

import pytest

from testutils import PY311, containers
from testutils.kernels import PROBE, execute_until_running, kernel, run, run_json
from testutils.remote_host import RemoteHost, exposed_listeners, listener_owners, tcp_listeners

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhtls", images=[PY311]) as host:
        yield host


@pytest.fixture
def tls_spec(remote, install_kernelspec, monkeypatch):
    """A kernelspec for the TLS engine; the client's certificates from the environment, as the docker CLI's."""
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(remote.cert_path))

    def make(**config):
        return install_kernelspec(PY311, engine=remote.tcp_url, **config)

    yield make
    import envpin_provisioner

    envpin_provisioner.reset_caches()


class Capture:
    """Every frame on this machine's end of the link to the remote host (AF_PACKET), while it runs."""

    def __init__(self, interface: str) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self._sock.bind((interface, 0))
        self._sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self._sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return b"".join(self.frames)

    def tcp_ports(self) -> set[tuple[int, int]]:
        """(source port, destination port) of every IPv4 TCP segment captured."""
        out = set()
        for frame in self.frames:
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            ihl = (frame[14] & 0x0F) * 4
            tcp = frame[14 + ihl :]
            out.add((int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")))
        return out


def _processes_naming(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


async def test_kernel_runs_on_the_tls_engine_with_its_channels_inside_tls(
    remote, admin, docker_client, tls_spec, notebook_dir, before_listeners
):
    name = tls_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        found = containers(admin, kernel=km.kernel_id)
        assert len(found) == 1, found
        container = found[0]
        assert containers(docker_client, kernel=km.kernel_id) == []  # not on this machine's engine
        assert probe["dockerenv"] is True and probe["python"] == [3, 11]
        assert probe["hostname"] == container.attrs["Config"]["Hostname"]
        assert probe["image_id"] == admin.images.get(PY311).id == container.attrs["Image"]
        assert probe["cwd"] == "/tmp/envpin-work"
        # No mount of a path of either machine: only envpin's package, a read-only volume there; no port.
        assert [(m["Type"], m["RW"]) for m in container.attrs["Mounts"]] == [("volume", False)]
        assert container.attrs["Mounts"][0]["Name"].startswith("envpin-pkg-")
        assert not container.attrs["HostConfig"].get("PortBindings")
        assert (await run(kc, "%load_ext envpin"))["status"] == "ok"

        # What crosses the wire is TLS to the engine's port only: a marker printed by a cell never shows.
        marker = f"envpin-clear-{uuid.uuid4().hex}"
        capture = Capture(remote.veth)
        try:
            res = await run(kc, f"print({marker[:6]!r} + {marker[6:]!r})")
        finally:
            wire = capture.stop()
        assert res["status"] == "ok" and marker in res["stdout"], res
        assert capture.frames, "nothing was captured on the link"
        assert marker.encode() not in wire
        ports = capture.tcp_ports()
        assert ports and all(2376 in pair for pair in ports), ports

        # The key: in no command line (here, or the relays' execs there), environment or label.
        key = km.session.key.decode()
        container.reload()
        assert key not in repr(container.attrs["Config"]) + repr(container.attrs["HostConfig"])
        execs = [admin.api.exec_inspect(e) for e in container.attrs.get("ExecIDs") or []]
        assert execs, "the channels are carried by execs"
        assert all(key not in repr(e["ProcessConfig"]) for e in execs)
        assert _processes_naming(key) == []
        new = exposed_listeners() - before_listeners
        assert not new, f"new listeners on this machine: {listener_owners(new)}"
        assert tcp_listeners(remote.pid) == {(remote.address, 22), (remote.address, 2376)}
        channel_dir = os.path.dirname(km.connection_file)
    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
    assert not os.path.exists(channel_dir)  # the relay's sockets went with the kernel's channel folder


async def test_interrupt_restart_and_shutdown(remote, admin, tls_spec, notebook_dir):
    name = tls_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        cid = containers(admin, kernel=km.kernel_id)[0].id
        msg_id = await execute_until_running(kc, "import time; time.sleep(60)")
        started = time.monotonic()
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - started < 10
        await run(kc, "x = 41")
        await asyncio.wait_for(km.restart_kernel(), 40)
        await kc.wait_for_ready(timeout=30)
        found = containers(admin, kernel=km.kernel_id)
        assert len(found) == 1 and found[0].id != cid
        assert (await run(kc, "x"))["ename"] == "NameError"
        assert (await run_json(kc, "1 + 1")) == 2
    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []


async def test_remote_root_is_refused_over_tls(remote, admin, tls_spec, notebook_dir):
    name = tls_spec(remote_root="/srv/work")
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?s)remote_root=.*needs an engine reached over SSH.*ssh://"):
        async with kernel(name, cwd=notebook_dir):
            pass
    assert time.monotonic() - started < 20
    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
