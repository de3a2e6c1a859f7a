"""envpin_provisioner.remote.tls_kernel: the pieces of a TLS kernel's channel relay that need no engine.

The relay end to end (a real kernel on a real TLS engine) is tests/remote/test_tls_kernels.py; here: the
in-container relay script against a real unix socket, the server side's unframing of the exec's stream, and
the container's create arguments (no port, no bind mount, the package read-only).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest


def _echo_server(path: str) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_relay_script_joins_stdin_and_stdout_to_the_socket_and_ends_with_it(tmp_path):
    from envpin_provisioner.remote.tls_kernel import RELAY

    path = str(tmp_path / "k-1")
    relay = subprocess.Popen([sys.executable, "-I", "-c", RELAY, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # The socket appears only after the first bytes: the relay waits for it (bounded), then connects.
    relay.stdin.write(b"hello ")
    relay.stdin.flush()
    thread = _echo_server(path)
    assert relay.stdout.read(6) == b"HELLO "
    relay.stdin.write(b"\x00\xffbinary")
    relay.stdin.flush()
    assert relay.stdout.read(8) == b"\x00\xffBINARY"
    relay.stdin.close()  # the server's connection ends: so does the relay (and the kernel's side of it)
    assert relay.wait(timeout=10) == 0
    thread.join(5)


def test_the_relay_script_without_any_bytes_never_connects(tmp_path):
    from envpin_provisioner.remote.tls_kernel import RELAY

    done = subprocess.run(
        [sys.executable, "-I", "-c", RELAY, str(tmp_path / "none")], input=b"", capture_output=True, timeout=10
    )
    assert done.returncode == 0 and done.stdout == b""


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_the_server_side_unframes_stdout_and_passes_the_client_bytes_through():
    from envpin_provisioner.remote.tls_kernel import ChannelRelay

    local_server, local_client = socket.socketpair()
    remote_here, remote_engine = socket.socketpair()
    pump = threading.Thread(target=ChannelRelay._pump, args=(local_server, remote_here), daemon=True)
    pump.start()
    local_client.sendall(b"from-client")
    assert remote_engine.recv(100) == b"from-client"
    # A frame split across reads, a stderr frame (dropped), then two frames in one read.
    whole = _frame(1, b"abc") + _frame(2, b"noise") + _frame(1, b"def") + _frame(1, b"")
    remote_engine.sendall(whole[:5])
    remote_engine.sendall(whole[5:])
    received = b""
    while len(received) < 6:
        received += local_client.recv(100)
    assert received == b"abcdef"
    remote_engine.close()  # the exec ended (the kernel's socket closed): the pump returns (its caller closes both)
    pump.join(5)
    assert not pump.is_alive()
    for s in (local_server, local_client, remote_here):
        s.close()


def test_a_tls_kernels_container_mounts_nothing_of_either_machine_and_publishes_nothing(tmp_path):
    from envpin import names
    from envpin.host.images import ResolvedImage
    from envpin_provisioner.kernel.launch import KernelLaunch
    from envpin_provisioner.remote import tls_kernel

    image = ResolvedImage(reference="python:3.11-slim", id="sha256:" + "a" * 64, digest=None)
    info = {"transport": "ipc", "ip": str(tmp_path / "k"), "key": "secret-key", "signature_scheme": "hmac-sha256"}
    info.update({f"{ch}_port": n for n, ch in enumerate(("shell", "iopub", "stdin", "control", "hb"), 1)})
    launch = KernelLaunch(
        image=image, kernel_id="kid", connection_info=info, connection_file=str(tmp_path / "c.json"), cwd="/notebooks"
    )
    options = tls_kernel.container_options(launch, "envpin-pkg-0123", "tcp://gpu-box:2376")
    assert "ports" not in options
    assert options["environment"][names.REMOTE_ENGINE] == "tcp://gpu-box:2376"  # %use_image says where it runs
    assert options["working_dir"] == tls_kernel.WORK_DIR
    assert options["mounts"] == [
        {
            "Target": f"{names.CONTAINER_PYTHONPATH}/envpin",
            "Source": "envpin-pkg-0123",
            "Type": "volume",
            "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True},  # nothing of the image is copied into it
        }
    ]
    assert "secret-key" not in repr(options)
    inside = tls_kernel._in_container_info(info)
    assert b'"ip": "/tmp/envpin-channels/k"' in inside and b'"transport": "ipc"' in inside


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="posix")
def test_a_relays_local_sockets_are_the_servers_alone_and_go_when_it_closes(tmp_path):
    from envpin_provisioner.remote.tls_kernel import ChannelRelay

    sockets = {str(tmp_path / f"k-{n}"): f"/tmp/envpin-channels/k-{n}" for n in (1, 2)}
    relay = ChannelRelay(client=None, container_id="c" * 64, user="1000:1000", python="python3", sockets=sockets)
    relay.start()
    for path in sockets:
        assert os.stat(path).st_mode & 0o777 == 0o600
    relay.close()
    assert [p for p in sockets if os.path.exists(p)] == []
