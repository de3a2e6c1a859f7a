"""Kernels on another machine's engine over SSH (issue 28), against the RemoteHost harness.

The remote host is a real second engine on its own address, reached only
through its sshd with a key; it does not see this machine's checkout, venv or
notebook folders.  Each test checks from both engines: the kernel's container
exists on the remote one only, and nothing is left on either afterwards (no
container, no volume but envpin's package volume, no forward, no folder over
there, no ssh process here).  One RemoteHost serves the module; every wait is
bounded, and each test stays well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from testutils import DEMO, PY311, containers, wait_for
from testutils.kernels import JOB_PROBE, PROBE, execute_until_running, kernel, run, run_json
from testutils.remote_host import RemoteHost, exposed_listeners, listener_owners, tcp_listeners

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhssh", images=[PY311]) as host:
        yield host


@pytest.fixture
def ssh_path(remote, monkeypatch):
    """OpenSSH reads the harness's config through its ``bin/ssh`` (first on PATH), as a user's ~/.ssh/config."""
    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    yield
    import envpin_provisioner

    envpin_provisioner.reset_caches()  # this process's clients and SSH masters: the next test connects anew


@pytest.fixture
def remote_spec(remote, install_kernelspec, ssh_path):
    def make(**config):
        return install_kernelspec(PY311, engine=remote.ssh_url, **config)

    return make


async def _iopub_back(kc, timeout: float = 20) -> None:
    """Wait until the client's iopub connection delivers again (after its link was cut or the kernel restarted).

    Shell and iopub reconnect separately; a cell sent before iopub is back runs, but its output is published
    to nobody.  A kernel_info request's status message on iopub says it is back.
    """
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        end = min(deadline, time.monotonic() + 1)
        while time.monotonic() < end:
            try:
                msg = await kc.get_iopub_msg(timeout=0.2)
            except (queue.Empty, asyncio.TimeoutError):
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return
    raise AssertionError(f"the kernel's iopub did not come back within {timeout:.0f}s")


def _remote_kernels(admin, km):
    return containers(admin, kernel=km.kernel_id)


def _leftover_folders(remote) -> list[str]:
    done = remote.run(["sh", "-c", "ls -d /tmp/envpin-* 2>/dev/null || true"], capture_output=True, text=True)
    return done.stdout.split()


def _processes_naming(text: str) -> list[str]:
    """Command lines of this machine's processes that contain ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _assert_nothing_left(remote, admin, url: str, volumes_before: set[str]) -> None:
    """No container, folder or new volume over there (the package volume aside); no ssh or forward here."""
    from envpin.host import ssh_tunnel

    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
    assert _leftover_folders(remote) == []
    new_volumes = {v.name for v in admin.volumes.list()} - volumes_before
    assert all(name.startswith("envpin-pkg-") for name in new_volumes), new_volumes
    master = ssh_tunnel.known(url)
    assert master is not None
    assert master.pid is None  # the last kernel of that host let go: its ssh process ended
    assert _processes_naming(master.control) == []
    assert os.listdir(master.folder) == []  # no forwarded socket, no control socket


async def test_kernel_runs_on_the_remote_engine_only(
    remote, admin, docker_client, remote_spec, notebook_dir, before_listeners
):
    volumes_before = {v.name for v in admin.volumes.list()}
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        found = _remote_kernels(admin, km)
        assert len(found) == 1, found
        container = found[0]
        assert containers(docker_client, kernel=km.kernel_id) == []  # not on this machine's engine
        assert probe["dockerenv"] is True and probe["python"] == [3, 11]
        assert probe["hostname"] == container.attrs["Config"]["Hostname"]
        assert probe["image_id"] == admin.images.get(PY311).id == container.attrs["Image"]
        # Nothing of this machine is mounted there: bind sources are the remote host's, envpin is a read-only volume.
        for mount in container.attrs["Mounts"]:
            assert mount["Type"] in ("bind", "volume"), mount
            if mount["Type"] == "bind":
                assert mount["Source"].startswith("/tmp/envpin-"), mount
            else:
                assert mount["Name"].startswith("envpin-pkg-") and mount["RW"] is False, mount
        # The kernel's working folder is a scratch folder over there, not the notebook folder here.
        assert probe["cwd"] != str(notebook_dir) and probe["cwd"].startswith("/tmp/envpin-")
        assert (await run(kc, "open('made-there.txt', 'w').write('hi')"))["status"] == "ok"
        assert not (notebook_dir / "made-there.txt").exists()
        # The key is in no command line, environment or label (there, or here).
        key = km.session.key.decode()
        assert key not in repr(container.attrs["Config"]) + repr(container.attrs["HostConfig"])
        assert _processes_naming(key) == []
        # %load_ext envpin works: its package comes from the volume.
        res = await run(kc, "%load_ext envpin")
        assert res["status"] == "ok", res
        # A job runs in the image, over there: a worker process of the kernel's own container (no engine access).
        job = await run_json(kc, f"__import__('envpin').submit({JOB_PROBE}).result(timeout=60)", timeout=90)
        assert job["python"].startswith("3.11.") and job["dockerenv"] is True, job
        assert job["image_id"] == container.attrs["Image"] and job["hostname"] == probe["hostname"], job
        # %use_image of its own image pins (moves to other images: test_remote_moves).
        assert (await run(kc, f"%use_image {PY311}"))["status"] == "ok"
        assert (await run_json(kc, PROBE))["python"] == [3, 11]  # it stayed
        # Channels and engine go through SSH: no new listener on a non-loopback address on either side.
        new = exposed_listeners() - before_listeners
        assert not new, f"new listeners on this machine: {listener_owners(new)}"
        assert tcp_listeners(remote.pid) == {(remote.address, 22), (remote.address, 2376)}
    _assert_nothing_left(remote, admin, remote.ssh_url, volumes_before)


def test_the_readme_setup_lines_check_the_image_on_the_engine_they_name(remote, admin, ssh_path, jupyter_env):
    """README's lines, `envpin kernelspec install --image IMG --config engine=ssh://...` and `envpin doctor`, for
    an image only that machine has: the install checked it on this machine's engine and refused it ("not on this
    Docker engine"); the doctor probed it there too, with envpin's package bind-mounted from a path of this
    machine (which the other engine does not have)."""
    only_there = "envpin-test/only-on-rhssh:1"
    made = admin.containers.create(PY311, command=["true"])  # an image id of its own, not a tag of a local one
    made.commit(repository="envpin-test/only-on-rhssh", tag="1")
    made.remove()

    def envpin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", *args], capture_output=True, text=True, timeout=120
        )

    try:
        out = envpin("kernelspec", "install", "--user", "--image", only_there, "--name", "box",
                     "--config", f"engine={remote.ssh_url}")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"image {only_there} is on the engine at {remote.ssh_url}" in out.stdout, out.stdout
        # The doctor checks each kernelspec on the engine it names (and that engine once), probing the image there.
        out = envpin("doctor")
        lines = out.stdout.splitlines()
        assert f"ok    engine {remote.ssh_url}: Docker" in out.stdout, out.stdout
        (box,) = [line for line in lines if line.startswith("ok    kernelspec box")]
        assert f"on {remote.ssh_url}: Python 3.11" in box, out.stdout
        # --engine: that engine is the one checked, its kernelspecs among them.
        out = envpin("doctor", "--engine", remote.ssh_url)
        assert f"ok    kernelspec box ({only_there}): Python 3.11" in out.stdout, out.stdout
        # gc collects one engine a run; without --engine it names the others the kernelspecs use.
        out = envpin("gc", "--dry-run")
        assert f"envpin gc --engine {remote.ssh_url}" in out.stdout, out.stdout
    finally:
        admin.images.remove(only_there, force=True)


async def test_interrupt_and_restart(remote, admin, remote_spec, notebook_dir):
    volumes_before = {v.name for v in admin.volumes.list()}
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        cid = _remote_kernels(admin, km)[0].id
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
        await _iopub_back(kc)
        found = _remote_kernels(admin, km)
        assert len(found) == 1 and found[0].id != cid
        assert (await run(kc, "x"))["ename"] == "NameError"
        assert (await run_json(kc, "1 + 1")) == 2
    _assert_nothing_left(remote, admin, remote.ssh_url, volumes_before)


async def test_remote_root_maps_the_notebook_folder(remote, admin, remote_spec, tmp_path):
    root = tmp_path / "root"
    nb = root / "project"
    nb.mkdir(parents=True)
    remote.run(["mkdir", "-p", "/home/envpin-remote/work"])
    name = remote_spec(remote_root="/home/envpin-remote/work", local_root=str(root))
    async with kernel(name, cwd=nb) as (km, kc):
        assert (await run_json(kc, "__import__('os').getcwd()")) == "/home/envpin-remote/work/project"
        await run(kc, "open('kept.txt', 'w').write('kept')")
    done = remote.run(["cat", "/home/envpin-remote/work/project/kept.txt"], capture_output=True, text=True)
    assert done.stdout == "kept"  # remote_root is the user's: it stays


async def test_a_mount_missing_on_the_remote_host_is_refused(remote, admin, remote_spec, notebook_dir, tmp_path):
    here = tmp_path / "only-here"
    here.mkdir()
    name = remote_spec(mounts=[f"{here}:/data:ro"])
    with pytest.raises(Exception, match=r"(?s)does not exist on ssh://.*mounts name paths of that machine"):
        async with kernel(name, cwd=notebook_dir):
            pass
    _assert_nothing_left(remote, admin, remote.ssh_url, {v.name for v in admin.volumes.list()})


async def test_a_stopped_remote_engine_is_reported_in_seconds(remote, remote_spec, notebook_dir):
    """A dropped SSH link comes back by itself; dockerd stopped: one paragraph within seconds, never a hang.

    The engine back, shutting the kernel down removes what the stopped engine left (its exited container);
    ``envpin gc --engine`` for a server that died is test_gc_collects_a_killed_servers_kernel_and_its_folder.
    """
    from jupyter_client.manager import AsyncKernelManager

    from envpin.host import ssh_tunnel

    name = remote_spec()
    km = AsyncKernelManager(kernel_name=name)
    await asyncio.wait_for(km.start_kernel(cwd=str(notebook_dir), env=dict(os.environ)), 60)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        assert (await run_json(kc, "1")) == 1
        master = ssh_tunnel.known(remote.ssh_url)
        assert master is not None and master.alive()
        master.kill_for_test()  # a dropped link: re-established within seconds, the forwards with it
        wait_for(lambda: master.pid is not None, 20, "the SSH master to come back")
        await _iopub_back(kc)
        assert (await run_json(kc, "2", timeout=20)) == 2
        remote.stop_engine()
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(km.restart_kernel(), 30)
        assert time.monotonic() - started < 20
        message = str(failed.value)
        flat = " ".join(message.split())  # dialogs get it wrapped in short lines
        assert remote.ssh_url in flat and "does not answer" in flat, message
        assert "\n\n" not in message.strip(), message  # one paragraph
        # A new kernel on that engine: the same paragraph, as fast.
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?s)does not\s+answer"):
            async with kernel(name, cwd=notebook_dir):
                pass
        assert time.monotonic() - started < 20
    finally:
        kc.stop_channels()
        remote.start_engine()
    # The engine is back: shutting the kernel down removes what the stopped engine left (its exited container).
    await asyncio.wait_for(km.shutdown_kernel(now=True), 30)
    client = remote.docker_client("admin")
    try:
        assert [c.name for c in client.containers.list(all=True, ignore_removed=True)] == []
    finally:
        client.close()


def _ssh_children(pid: int) -> list[tuple[int, str]]:
    """(pid, control socket) of the ``ssh -M`` processes whose parent is ``pid``."""
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


def test_gc_collects_a_killed_servers_kernel_and_its_folder(remote, admin, remote_spec, server):
    """A Jupyter server killed with its remote kernel running: ``envpin gc --engine ssh://...`` (another process,
    as a user would run it) removes the container on that engine and the kernel's folder on that host."""
    import shutil
    import signal
    import subprocess
    import sys

    from envpin_provisioner.remote import ssh_kernel

    name = remote_spec()
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    assert srv.execute(kid, "print(1)")[0] == "ok"
    (orphan,) = containers(admin, kernel=kid, running=True)
    folder = ssh_kernel.folder_of(orphan)
    assert folder is not None and _leftover_folders(remote) == [folder]
    masters = _ssh_children(srv.proc.pid)  # the server's SSH connection: a SIGKILL does not end it
    assert len(masters) == 1, masters
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    try:
        assert containers(admin, kernel=kid, running=True)  # the kernel cannot know its server died
        out = subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", "gc", "--engine", remote.ssh_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert orphan.short_id in out.stdout and f"kernel {kid}" in out.stdout, out.stdout
        assert f"removed 1 kernel folder(s) on {remote.ssh_url}: {folder}" in out.stdout, out.stdout
        assert containers(admin, kernel=kid) == []
        assert _leftover_folders(remote) == []
    finally:
        for pid, control in masters:  # what a killed server leaves on this machine (docs/guide/remote.md, Limits)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(os.path.dirname(control), ignore_errors=True)


@pytest.mark.timeout(300)  # the demo image is copied into the remote host the first time
def test_the_quickstart_notebook_runs_headless_on_the_remote_engine(
    remote, admin, install_kernelspec, ssh_path, tmp_path
):
    """notebooks/quickstart.ipynb, unchanged, through nbclient with a kernelspec of the demo image on that engine:
    its %use_image of the kernel's own image pins it, and its jobs run in that image over there."""
    from testutils.notebooks import run_copy

    volumes_before = {v.name for v in admin.volumes.list()}
    remote.load_images([DEMO])
    name = install_kernelspec(DEMO, engine=remote.ssh_url)
    text = run_copy("quickstart.ipynb", tmp_path, name, timeout=120)
    demo_id = admin.images.get(DEMO).id
    assert "envpin: pinned to ubuntu-22.04-py3" in text, text
    assert "in a container: True" in text and f"image id      : {demo_id}" in text, text
    assert "python        : 3.11." in text and "working dir   : /tmp/envpin-" in text, text  # a folder over there
    assert text.count("job -> (") == 4 and f"'ubuntu-22.04-py3', '{demo_id[:19]}')" in text, text
    _assert_nothing_left(remote, admin, remote.ssh_url, volumes_before)
