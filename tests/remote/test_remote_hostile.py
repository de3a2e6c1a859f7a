"""A hostile look at remote kernels over SSH, from inside a real kernel on the other machine (issue 28).

Each test is one property a kernel's code (the notebook's author, or a
package it installed) might try to break, checked from where that code runs:

* another kernel's channels: the other kernel's socket folder on the remote
  host is not visible in this kernel's container, and the only unix sockets
  in its network namespace are its own channels';
* the SSH connection: the master's control socket and the forwarded sockets
  are in a 0700 folder of the server's user on the server's machine (another
  local user cannot drive the master), the master forwards only towards the
  remote host (``-L``; no ``-R``, so nothing over there can open a connection
  back through it), and each kernel's folder on the remote host is 0700;
* envpin's package volume: read-only in the kernel (a kernel cannot change the
  code every later kernel on that engine imports);
* the key: the connection file in the container is the kernel user's, 0600,
  and the kernel does not run as root there.
"""

from __future__ import annotations

import os
import stat

import pytest

from testutils import PY311, containers
from testutils.kernels import kernel, run, run_json
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rhhost", images=[PY311]) as host:
        yield host


def _socket_folder(container) -> str:
    """The kernel's socket folder on the remote host: its one bind mount that is not its working folder."""
    binds = [m["Source"] for m in container.attrs["Mounts"] if m["Type"] == "bind" and m["Source"].endswith("/sock")]
    assert len(binds) == 1, container.attrs["Mounts"]
    return binds[0]


async def test_a_kernel_cannot_see_or_reach_another_kernels_channels(admin, remote_spec, notebook_dir):
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km_a, kc_a), kernel(name, cwd=notebook_dir) as (km_b, kc_b):
        folder_a = _socket_folder(containers(admin, kernel=km_a.kernel_id)[0])
        folder_b = _socket_folder(containers(admin, kernel=km_b.kernel_id)[0])
        assert folder_a != folder_b
        seen = await run_json(
            kc_a,
            f"{{'b': __import__('os').path.exists({folder_b!r}), 'b_parent': __import__('os').path.exists("
            f"{os.path.dirname(folder_b)!r}), 'a': sorted(__import__('os').listdir({folder_a!r}))}}",
        )
        assert seen["b"] is False and seen["b_parent"] is False
        assert seen["a"] and all(n.startswith("k-") for n in seen["a"]), seen  # its own five channels
        # Every named unix socket in the kernel's network namespace is one of its own channels.
        named = await run_json(
            kc_a,
            "[line.split()[-1] for line in open('/proc/net/unix').read().splitlines()[1:]"
            " if len(line.split()) > 7 and line.split()[-1].startswith('/')]",
        )
        assert named and all(path.startswith(folder_a + "/") for path in named), named
        # Connecting to the other kernel's heartbeat path from this one fails: there is nothing there.
        res = await run(
            kc_a,
            "import socket, glob\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({folder_b + '/k-1'!r})\nexcept OSError as e:\n    print('refused', type(e).__name__)",
        )
        assert "refused FileNotFoundError" in res["stdout"], res


async def test_the_ssh_connection_is_private_and_forwards_one_way(remote, admin, remote_spec, notebook_dir):
    from envpin.host import ssh_tunnel

    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        master = ssh_tunnel.known(remote.ssh_url)
        assert master is not None and master.pid is not None
        folder = os.stat(master.folder)
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        assert stat.S_ISSOCK(os.stat(master.control).st_mode)
        channel_sockets = [
            f"{km.ip}-{getattr(km, f'{ch}_port')}" for ch in ("shell", "iopub", "stdin", "control", "hb")
        ]
        for path in channel_sockets:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 == 0, path
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o077 == 0, path
        argv = open(f"/proc/{master.pid}/cmdline", "rb").read().split(b"\0")
        assert b"-R" not in argv and not any(a.startswith(b"RemoteForward") for a in argv), argv
        assert b"ForwardAgent=no" in argv
        # Nothing of the server's side exists in the kernel's container: not the master's folder, not the channels'.
        seen = await run_json(
            kc,
            f"[__import__('os').path.exists(p) for p in {[master.folder, master.control, os.path.dirname(km.ip)]!r}]",
        )
        assert seen == [False, False, False]
        # The kernel's folder on the remote host is the SSH user's and closed to other users there.
        folder_r = os.path.dirname(_socket_folder(containers(admin, kernel=km.kernel_id)[0]))
        done = remote.run(["stat", "-c", "%a %U", folder_r, f"{folder_r}/sock"], capture_output=True, text=True)
        assert done.stdout.split("\n")[:2] == ["700 envpin-remote", "700 envpin-remote"], done.stdout


async def test_the_package_volume_is_read_only_in_the_kernel(admin, remote_spec, notebook_dir):
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        res = await run(
            kc,
            "import envpin, errno, os\n"
            "d = os.path.dirname(envpin.__file__)\n"
            "for attempt in (lambda: open(os.path.join(d, '__init__.py'), 'a'),\n"
            "                lambda: open(os.path.join(d, 'planted.py'), 'w'),\n"
            "                lambda: os.rename(os.path.join(d, 'names.py'), os.path.join(d, 'n.py'))):\n"
            "    try:\n"
            "        attempt()\n"
            "        print('WROTE')\n"
            "    except OSError as e:\n"
            "        print('refused', errno.errorcode[e.errno])\n"
            "print('dir', d)\n"
            "print('read-only mount', bool(os.statvfs(d).f_flag & os.ST_RDONLY))",
        )
        assert res["status"] == "ok", res
        assert "WROTE" not in res["stdout"] and res["stdout"].count("refused") == 3, res["stdout"]
        # Read-only as a mount, not only by file modes: a new file and a rename are refused with EROFS too.
        assert "read-only mount True" in res["stdout"] and res["stdout"].count("refused EROFS") >= 2, res["stdout"]
        container = containers(admin, kernel=km.kernel_id)[0]
        volume = [m for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        assert len(volume) == 1 and volume[0]["RW"] is False
        assert res["stdout"].split("dir ")[1].split()[0] == volume[0]["Destination"]


async def test_the_key_is_the_kernel_users_alone_and_the_kernel_is_not_root(remote, remote_spec, notebook_dir):
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        seen = await run_json(
            kc,
            "(lambda os, st: {'uid': os.getuid(), 'mode': st.S_IMODE(os.stat('/tmp/envpin-kernel.json').st_mode),"
            " 'owner': os.stat('/tmp/envpin-kernel.json').st_uid})(__import__('os'), __import__('stat'))",
        )
        done = remote.run(["id", "-u", "envpin-remote"], capture_output=True, text=True)
        assert seen == {"uid": int(done.stdout), "mode": 0o600, "owner": int(done.stdout)}
        assert seen["uid"] != 0
