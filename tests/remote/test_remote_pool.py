"""The warm pool on another machine's engine (issue 28), over SSH and over TCP+TLS, against the RemoteHost harness.

A pooled kernel there is the cold one, started sooner: it runs in the image on
the remote engine, in a container that waited in the pool (its id was the
pool's), and the pool refills.  The key reaches the taken container only
inside it (``put_archive``).  Shutting the kernels down and stopping the
server (the pools' exit hook) leaves nothing on either engine, nor a folder
on the remote host.  A kernel that wrecks its own hand-over folder learns
nothing of the next kernel's key.  Every wait is bounded.
"""

from __future__ import annotations

import os

import pytest

from testutils import PY311, async_wait_for, containers
from testutils.kernels import PROBE, kernel, run, run_json
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(150),
]


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rhpool", images=[PY311]) as host:
        yield host


@pytest.fixture
def pools():
    """Each test starts and ends with no warm container of this process (the server's exit hook empties them)."""
    from envpin_provisioner.warm import pool

    pool._remove_at_exit()
    yield pool.pools
    pool._remove_at_exit()
    import envpin_provisioner

    envpin_provisioner.reset_caches()


@pytest.fixture(params=["ssh", "tls"])
def pooled_spec(request, remote, install_kernelspec, monkeypatch, pools):
    """A pool_size=1 kernelspec for the remote engine, over SSH or over TLS; (name, kind, engine address)."""
    if request.param == "ssh":
        monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
        url = remote.ssh_url
    else:
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(remote.cert_path))
        url = remote.tcp_url
    name = install_kernelspec(PY311, name=f"rpool-{request.param}", engine=url, pool_size=1)
    return name, request.param, url


def _ready_remote(pools, url: str) -> list:
    from envpin_provisioner.remote.remote_pool import RemoteWarm

    return [w for w in pools.waiting() if isinstance(w, RemoteWarm) and w.url == url]


def _leftover_folders(remote) -> list[str]:
    done = remote.run(["sh", "-c", "ls -d /tmp/envpin-* 2>/dev/null || true"], capture_output=True, text=True)
    return done.stdout.split()


async def _assert_nothing_left(remote, admin, docker_client, local_before: set[str], kind: str, url: str) -> None:
    """After the server's exit hook: nothing on either engine, no folder over there, no ssh process or socket here.

    A refill cancelled midway by the drain still ends its creation, then removes what it made (in a worker
    thread): that is waited for, bounded.
    """
    from envpin.host import ssh_tunnel

    def settled() -> bool:
        master = ssh_tunnel.known(url)
        return (
            not admin.containers.list(all=True, ignore_removed=True)
            and not _leftover_folders(remote)
            and (master is None or master.pid is None)
        )

    await async_wait_for(settled, timeout=30, what="the remote pool's containers and folders to go")
    assert _leftover_folders(remote) == []
    assert {c.id for c in containers(docker_client)} <= local_before  # nothing new on this machine's engine
    if kind == "ssh":
        master = ssh_tunnel.known(url)
        assert master is not None and master.pid is None  # the last user of that host let go: no ssh process
        assert os.listdir(master.folder) == []  # no forwarded socket left here


async def test_a_pooled_kernel_on_the_remote_engine_is_the_cold_one_and_the_pool_refills(
    remote, admin, docker_client, pooled_spec, pools, notebook_dir
):
    name, kind, url = pooled_spec
    local_before = {c.id for c in containers(docker_client)}
    async with kernel(name, cwd=notebook_dir) as (km1, kc1):  # cold itself: it fills the pool
        cold = await run_json(kc1, PROBE)
        (waiting,) = await async_wait_for(lambda: _ready_remote(pools, url), timeout=60, what="the remote pool")
        assert waiting.container.id in {
            c.id for c in admin.containers.list(filters={"label": "envpin.role=pool"}, ignore_removed=True)
        }
        assert containers(docker_client, role="pool") == [] or all(
            c.id != waiting.container.id for c in containers(docker_client, role="pool")
        )  # made on the remote engine, not here
        async with kernel(name, cwd=notebook_dir) as (km2, kc2):
            assert km2.provisioner.started_warm
            probe = await run_json(kc2, PROBE)
            env = await run_json(kc2, "dict(__import__('os').environ)")
            (taken,) = containers(admin, kernel=km2.kernel_id)
            assert taken.id == waiting.container.id, "the second kernel took the pool's container"
            assert containers(docker_client, kernel=km2.kernel_id) == []
            assert probe["dockerenv"] is True and probe["python"] == [3, 11]
            assert probe["image_id"] == admin.images.get(PY311).id == taken.attrs["Image"]
            assert probe["hostname"] == taken.attrs["Config"]["Hostname"]
            assert env["ENVPIN_REMOTE_ENGINE"] == url
            assert probe["cwd"] == ("/tmp/envpin-work" if kind == "tls" else probe["cwd"])
            if kind == "ssh":  # its scratch folder over there, as a cold kernel's
                assert probe["cwd"].startswith("/tmp/envpin-") and probe["cwd"] != cold["cwd"]
            # The key: in no command line, environment or label of the container.
            key = km2.session.key.decode()
            assert key not in repr(taken.attrs["Config"]) + repr(taken.attrs["HostConfig"])
            assert key not in repr(env)
            # Its connection file stays in the hand-over folder, and the empty go (the message and marker are gone).
            handoff = "sorted(__import__('os').listdir('/tmp/envpin-handoff'))"
            assert await run_json(kc2, handoff) == ["go", "kernel.json"]
            assert (await run(kc2, "%load_ext envpin"))["status"] == "ok"
            # %use_image reaches the server: the control folder a pooled container makes when it becomes the
            # kernel is relayed as a cold kernel's (without it, the magic waits 10 s and says nobody answered).
            control = "__import__('os').path.isdir(__import__('os').environ['ENVPIN_CONTROL_DIR'])"
            assert await run_json(kc2, control) is True
            pinned = await run(kc2, f"%use_image {PY311}", timeout=60)
            assert pinned["status"] == "ok" and f"pinned to {PY311}" in pinned["stdout"], pinned
            assert (notebook_dir / ".envpin.json").exists()  # the server answered: it wrote the pin, here
            # The pool refills with a new container; the taken one is never handed out again.
            (refill,) = await async_wait_for(lambda: _ready_remote(pools, url), timeout=60, what="the refill")
            assert refill.container.id != taken.id
    assert containers(admin, role="pool")  # the refilled container waits for the next start (the folder lingers)
    pools_module = __import__("envpin_provisioner.warm.pool", fromlist=["_remove_at_exit"])
    pools_module._remove_at_exit()  # the server stops
    await _assert_nothing_left(remote, admin, docker_client, local_before, kind, url)


async def test_a_kernel_that_wrecks_its_hand_over_folder_gets_no_other_kernel_s_key(
    remote, admin, docker_client, pooled_spec, pools, notebook_dir
):
    name, kind, url = pooled_spec
    local_before = {c.id for c in containers(docker_client)}
    async with kernel(name, cwd=notebook_dir):  # fills the pool
        await async_wait_for(lambda: _ready_remote(pools, url), timeout=60, what="the remote pool")
        async with kernel(name, cwd=notebook_dir) as (km_a, kc_a):
            assert km_a.provisioner.started_warm
            # Kernel A writes junk where its waiting process looked and replaces its files.
            wreck = (
                "import os\n"
                "d = '/tmp/envpin-handoff'\n"
                "open(os.path.join(d, 'message.json'), 'w').write('{\"argv\": [\"-c\", \"junk\"]}')\n"
                "open(os.path.join(d, 'go'), 'w').write('junk')\n"
                "os.replace(os.path.join(d, 'kernel.json'), os.path.join(d, 'old.json'))\n"
                "os.symlink('/proc/1/environ', os.path.join(d, 'kernel.json'))\n"
                "os.symlink('/', os.path.join(d, 'waiting'))\n"
            )
            assert (await run(kc_a, wreck))["status"] == "ok"
            await async_wait_for(lambda: _ready_remote(pools, url), timeout=60, what="the refill")
            async with kernel(name, cwd=notebook_dir) as (km_b, kc_b):
                assert km_b.provisioner.started_warm
                assert (await run_json(kc_b, "6 * 7")) == 42
                key_b = km_b.session.key.decode()
                (container_b,) = containers(admin, kernel=km_b.kernel_id)
                (container_a,) = containers(admin, kernel=km_a.kernel_id)
                assert container_a.id != container_b.id
                # Everything A can read (its folders, the temporary folders, its socket folder) never holds B's key.
                scan = (
                    "import os\n"
                    "found = []\n"
                    "for top in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd(), os.path.expanduser('~')):\n"
                    "    for folder, dirs, files in os.walk(top):\n"
                    "        for f in files:\n"
                    "            p = os.path.join(folder, f)\n"
                    "            try:\n"
                    "                found.append(open(p, 'rb').read(1 << 20).decode(errors='replace'))\n"
                    "            except OSError:\n"
                    "                pass\n"
                    "print(len(found))\n"
                    # (the key is sent reversed: the cell's text lands in A's own history file, which is scanned)
                    f"print({key_b[::-1]!r}[::-1] in ''.join(found))\n"
                )
                res = await run(kc_a, scan)
                assert res["status"] == "ok", res
                count, seen = res["stdout"].split()
                assert int(count) >= 1 and seen == "False", res["stdout"]
                assert (await run_json(kc_a, "1 + 1")) == 2  # A is still a working kernel
    __import__("envpin_provisioner.warm.pool", fromlist=["_remove_at_exit"])._remove_at_exit()
    await _assert_nothing_left(remote, admin, docker_client, local_before, kind, url)


def test_gc_collects_a_killed_servers_pool_containers_and_their_folders(
    remote, admin, install_kernelspec, server, monkeypatch
):
    """A Jupyter server killed while its remote pool waits: ``envpin gc --engine ssh://...`` (another process)
    removes the pool's containers on that engine and their folders on that host, with the kernel's."""
    import shutil
    import signal
    import subprocess
    import sys

    from testutils import wait_for

    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    name = install_kernelspec(PY311, name="rpool-gc", engine=remote.ssh_url, pool_size=1)
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    assert srv.execute(kid, "print(1)")[0] == "ok"
    (waiting,) = wait_for(lambda: containers(admin, role="pool", running=True), timeout=60, what="the remote pool")
    assert len(_leftover_folders(remote)) == 2  # the kernel's folder and the pool container's own
    masters = _ssh_children(srv.proc.pid)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", "gc", "--engine", remote.ssh_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert waiting.short_id in out.stdout and "removed 2 kernel folder(s)" in out.stdout, out.stdout
        assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
        assert _leftover_folders(remote) == []
    finally:
        for pid, control in masters:  # what a killed server leaves on this machine (docs/guide/remote.md, Limits)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(os.path.dirname(control), ignore_errors=True)


def _ssh_children(pid: int) -> list[tuple[int, str]]:
    """(pid, control socket) of the ``ssh -M`` processes whose parent is ``pid`` (as test_ssh_kernels')."""
    found = []
    for child in os.listdir("/proc"):
        if not child.isdigit():
            continue
        try:
            stat = open(f"/proc/{child}/stat").read()
            argv = open(f"/proc/{child}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"-M" in argv and b"-S" in argv:
            found.append((int(child), argv[argv.index(b"-S") + 1].decode()))
    return found
