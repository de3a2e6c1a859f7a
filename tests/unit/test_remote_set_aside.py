"""A move over SSH sets the old kernel's socket names aside in ``R/sock``, a folder the kernel writes.

The scripts run here with ``sh`` in a folder laid out as a hostile kernel
leaves it: a link planted at a destination name, a link at a source name.
Nothing may be moved through a link (before the fix, ``mv`` moved the socket
into the folder a planted ``.old-k-1`` named).
"""

from __future__ import annotations

import os
import socket
import subprocess

from envpin_provisioner.remote import ssh_kernel


def _socket(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def _run(script: str, folder) -> None:
    subprocess.run(["sh", "-c", script], cwd=folder, check=True, timeout=10)


def test_set_aside_and_put_back_move_only_real_sockets_and_never_through_a_link(tmp_path):
    sock, outside = tmp_path / "sock", tmp_path / "outside"
    sock.mkdir()
    outside.mkdir()
    held = [_socket(sock / "k-1"), _socket(sock / "k-2"), _socket(outside / "elsewhere")]
    os.symlink(outside, sock / ".old-k-1")  # planted: "move k-1 into outside/"
    os.symlink(outside / "elsewhere", sock / "k-3")  # planted: a link that is a socket to [ -S ]
    try:
        _run(ssh_kernel.SET_ASIDE, sock)
        assert sorted(os.listdir(outside)) == ["elsewhere"]
        assert not os.path.islink(sock / ".old-k-1") and os.path.exists(sock / ".old-k-1")
        assert sorted(os.listdir(sock)) == [".old-k-1", ".old-k-2", "k-3"]
        os.symlink(outside, sock / "k-2")  # planted again, at a name put_back restores
        _run(ssh_kernel.PUT_BACK, sock)
        assert sorted(os.listdir(outside)) == ["elsewhere"]
        assert sorted(os.listdir(sock)) == ["k-1", "k-2", "k-3"]
        assert not os.path.islink(sock / "k-2") and os.path.islink(sock / "k-3")
    finally:
        for s in held:
            s.close()
