"""Kernels on another machine's rootless Podman over SSH (issue 28): ``ssh://user@host/run/user/UID/podman/podman.sock``.

The remote host (``RemoteHost(podman=True)``) runs, besides its dockerd, the
rootless Podman of its user ``envpin-remote``: ``podman system service`` as
that user on ``/run/user/UID/podman/podman.sock``, with subordinate ids, as on
a workstation with ``systemctl --user enable --now podman.socket``.  envpin
reaches it only through that host's sshd (the socket path forwarded through
one SSH master).  Each test checks from the engines' own side: the kernel's
container is on that Podman, not on this machine's Docker nor the remote
dockerd, and nothing is left afterwards (no container, no folder over there,
no new volume but envpin's package volume, no ssh process here).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from testutils import PY311, containers, wait_for
from testutils.kernels import execute_until_running, kernel, run, run_json
from testutils.remote_host import RemoteHost, exposed_listeners, listener_owners, tcp_listeners

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces, a second dockerd, a Podman user"),
    pytest.mark.timeout(120),
]

#: Where the kernel runs, as the kernel sees it (Podman's marker is /run/.containerenv, not /.dockerenv).
PROBE = (
    "{'containerenv': __import__('os').path.exists('/run/.containerenv'),"
    " 'dockerenv': __import__('os').path.exists('/.dockerenv'),"
    " 'python': list(__import__('sys').version_info[:2]),"
    " 'image_id': __import__('os').environ.get('ENVPIN_IMAGE_ID'),"
    " 'cwd': __import__('os').getcwd(),"
    " 'uid': __import__('os').getuid(), 'gid': __import__('os').getgid(),"
    " 'hostname': __import__('socket').gethostname()}"
)
JOB_PROBE = (
    "lambda: {'python': __import__('platform').python_version(),"
    " 'image_id': __import__('os').environ.get('ENVPIN_IMAGE_ID'),"
    " 'containerenv': __import__('os').path.exists('/run/.containerenv'),"
    " 'hostname': __import__('socket').gethostname()}"
)


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhpod", podman=True, images=[PY311]) as host:
        yield host
    assert host.leftovers() == []


@pytest.fixture
def podman(remote):
    """The remote user's Podman, seen from inside the host (its socket through /proc/PID/root): for checks only."""
    client = remote.docker_client("podman")
    yield client
    client.close()


@pytest.fixture
def ssh_path(remote, monkeypatch):
    """OpenSSH reads the harness's config through its ``bin/ssh`` (first on PATH), as a user's ~/.ssh/config."""
    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    yield
    import envpin_provisioner

    envpin_provisioner.reset_caches()  # this process's clients and SSH masters: the next test connects anew


@pytest.fixture
def podman_spec(remote, install_kernelspec, ssh_path):
    def make(**config):
        return install_kernelspec(PY311, engine=remote.podman_url, **config)

    return make


def _kernel_folders(remote) -> list[str]:
    """The kernels' folders R on the remote host (mktemp in the SSH user's XDG_RUNTIME_DIR, else /tmp)."""
    done = remote.run(
        ["sh", "-c", f"ls -d /run/user/{remote.uid}/envpin-* /tmp/envpin-* 2>/dev/null || true"],
        capture_output=True,
        text=True,
    )
    return done.stdout.split()


def _processes_naming(text: str) -> list[str]:
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


def _assert_nothing_left(remote, podman, admin, volumes_before: set[str]) -> None:
    from envpin.host import ssh_tunnel

    # Podman may still list a container for a moment after its removal returned (seen with nbclient, 86a4ad4).
    for client in (podman, admin):
        wait_for(lambda c=client: not c.containers.list(all=True, ignore_removed=True), 30, "the containers to go")
    assert _kernel_folders(remote) == []
    new_volumes = {v.name for v in podman.volumes.list()} - volumes_before
    assert all(name.startswith("envpin-pkg-") for name in new_volumes), new_volumes
    master = ssh_tunnel.known(remote.podman_url)
    assert master is not None
    assert master.pid is None  # the last kernel of that host let go: its ssh process ended
    assert _processes_naming(master.control) == []
    assert os.listdir(master.folder) == []


async def test_kernel_runs_on_the_remote_rootless_podman(
    remote, podman, admin, docker_client, podman_spec, notebook_dir, before_listeners
):
    volumes_before = {v.name for v in podman.volumes.list()}
    name = podman_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        found = containers(podman, kernel=km.kernel_id)
        assert len(found) == 1, found
        container = found[0]
        assert containers(docker_client, kernel=km.kernel_id) == []  # not on this machine's engine
        assert containers(admin, kernel=km.kernel_id) == []  # nor on the remote host's dockerd
        assert probe["containerenv"] is True and probe["dockerenv"] is False, probe
        assert probe["python"] == [3, 11]
        assert (
            probe["image_id"]
            == podman.images.get(PY311).id
            == f"sha256:{container.attrs['Image']}".replace("sha256:sha256:", "sha256:")
        )
        # The kernel runs as the SSH user (keep-id: that uid is itself inside), so what it writes is that user's.
        assert (probe["uid"], probe["gid"]) == (remote.uid, remote.uid), probe
        uid_map = await run_json(kc, "[line.split() for line in open('/proc/self/uid_map')]")
        assert [str(remote.uid), "0", "1"] in uid_map, uid_map  # its uid is the user's own (keep-id), not a subuid
        assert probe["cwd"].startswith(f"/run/user/{remote.uid}/envpin-"), probe  # a scratch folder over there
        assert (await run(kc, "open('made-there.txt', 'w').write('hi')"))["status"] == "ok"
        assert not (notebook_dir / "made-there.txt").exists()
        owner = remote.run(
            ["stat", "-c", "%u:%g", f"{probe['cwd']}/made-there.txt"], capture_output=True, text=True, as_user=False
        )
        assert owner.stdout.strip() == f"{remote.uid}:{remote.uid}", owner
        # The key is in no command line, environment or label (there, or here).
        key = km.session.key.decode()
        assert key not in repr(container.attrs["Config"]) + repr(container.attrs["HostConfig"])
        assert _processes_naming(key) == []
        # envpin's package comes from a Podman volume, read-only; nothing of this machine is mounted.
        for mount in container.attrs["Mounts"]:
            if mount["Type"] == "bind":
                assert mount["Source"].startswith(f"/run/user/{remote.uid}/envpin-"), mount
            else:
                assert mount["Type"] == "volume" and mount["Name"].startswith("envpin-pkg-"), mount
                assert mount["RW"] is False, mount
        res = await run(kc, "%load_ext envpin")
        assert res["status"] == "ok", res
        job = await run_json(kc, f"__import__('envpin').submit({JOB_PROBE}).result(timeout=60)", timeout=90)
        assert job["python"].startswith("3.11.") and job["containerenv"] is True, job
        assert job["image_id"] == probe["image_id"] and job["hostname"] == probe["hostname"], job
        # Channels and engine go through SSH: no new listener on a non-loopback address on either side.
        new = exposed_listeners() - before_listeners
        assert not new, f"new listeners on this machine: {listener_owners(new)}"
        assert tcp_listeners(remote.pid) == {(remote.address, 22), (remote.address, 2376)}
    _assert_nothing_left(remote, podman, admin, volumes_before)


async def test_interrupt_restart_and_shutdown(remote, podman, admin, podman_spec, notebook_dir):
    volumes_before = {v.name for v in podman.volumes.list()}
    name = podman_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        cid = containers(podman, kernel=km.kernel_id)[0].id
        msg_id = await execute_until_running(kc, "import time; time.sleep(60)")
        started = time.monotonic()
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - started < 10
        await run(kc, "x = 41")
        await asyncio.wait_for(km.restart_kernel(), 60)
        await kc.wait_for_ready(timeout=30)
        found = containers(podman, kernel=km.kernel_id)
        assert len(found) == 1 and found[0].id != cid
        assert (await run(kc, "x"))["ename"] == "NameError"
        assert (await run_json(kc, "1 + 1")) == 2
    _assert_nothing_left(remote, podman, admin, volumes_before)


def test_a_socket_path_nothing_serves_is_one_paragraph_with_the_fix(remote, ssh_path):
    """The SSH connection works but no Podman service listens at the path: say which unit to enable."""
    from envpin.host import docker_client

    url = f"{remote.ssh_url}/run/user/{remote.uid}/podman/not-running.sock"
    started = time.monotonic()
    with pytest.raises(docker_client.EngineUnavailable) as failed:
        docker_client.connect(address=url)
    assert time.monotonic() - started < 20
    message = str(failed.value)
    flat = " ".join(message.split())
    assert f"Nothing answers at /run/user/{remote.uid}/podman/not-running.sock on {remote.address}" in flat, message
    assert "systemctl --user enable --now podman.socket" in flat and "loginctl enable-linger envpin-remote" in flat
    assert "\n\n" not in message.strip(), message


async def test_a_kernel_on_a_silent_socket_fails_to_start_with_that_paragraph(remote, install_kernelspec, ssh_path):
    """The same paragraph through a kernelspec, as JupyterLab shows it, in seconds; nothing started anywhere."""
    url = f"{remote.ssh_url}/run/user/{remote.uid}/podman/not-running.sock"
    name = install_kernelspec(PY311, engine=url)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?s)systemctl\s+--user\s+enable\s+--now\s+podman\.socket"):
        async with kernel(name):
            pass
    assert time.monotonic() - started < 30
    assert _kernel_folders(remote) == []


def test_the_podman_host_is_the_users_rootless_podman_and_hides_this_machine(remote, podman):
    """What the tests above stand on: rootless, the user's own storage, this machine's folders out of sight."""
    import subprocess

    info = podman.api.get(podman.api._url("/libpod/info")).json()
    assert info["host"]["security"]["rootless"] is True, info["host"]["security"]
    assert info["store"]["graphRoot"] == "/var/lib/containers/storage", info["store"]
    over_ssh = subprocess.run(
        [str(remote.ssh_bin), remote.hostname, "echo $XDG_RUNTIME_DIR; id -u; cat /etc/subuid"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    lines = over_ssh.stdout.splitlines()
    assert lines[:2] == [f"/run/user/{remote.uid}", str(remote.uid)], over_ssh
    assert "envpin-remote:400000:65536" in lines, over_ssh
    seen = remote.run(
        ["sh", "-c", "ls -A /work /home /root /var/lib/containers 2>&1"], capture_output=True, text=True
    ).stdout
    assert "main" not in seen and "envpin-podman" not in seen, seen  # the checkout, the local Podman user's home
    assert sorted(remote.run(["ls", "-A", "/var/lib/containers"], capture_output=True, text=True).stdout.split()) == [
        "config",
        "owner",
        "storage",
    ]


def test_gc_collects_a_killed_servers_kernel_on_the_remote_podman(remote, podman, podman_spec, server):
    """A Jupyter server killed with its kernel running on that Podman: ``envpin gc --engine <podman URL>``
    (another process) removes the container there and the kernel's folder in the user's runtime folder."""
    import shutil
    import signal
    import subprocess
    import sys

    from envpin_provisioner.remote import ssh_kernel

    name = podman_spec()
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    assert srv.execute(kid, "print(1)")[0] == "ok"
    (orphan,) = containers(podman, kernel=kid, running=True)
    folder = ssh_kernel.folder_of(orphan)
    assert folder is not None and folder.startswith(f"/run/user/{remote.uid}/envpin-"), orphan.attrs["Mounts"]
    assert _kernel_folders(remote) == [folder]
    masters = _ssh_children(srv.proc.pid)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", "gc", "--engine", remote.podman_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert orphan.short_id in out.stdout and f"kernel {kid}" in out.stdout, out.stdout
        assert f"removed 1 kernel folder(s) on {remote.podman_url}: {folder}" in out.stdout, out.stdout
        assert containers(podman, kernel=kid) == []
        assert _kernel_folders(remote) == []
    finally:
        for pid, control in masters:  # what a killed server leaves on this machine (docs/guide/remote.md, Limits)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(os.path.dirname(control), ignore_errors=True)


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


@pytest.mark.timeout(300)  # the demo image is copied into the remote host the first time
def test_the_quickstart_notebook_runs_headless_on_the_remote_podman(
    remote, podman, admin, install_kernelspec, ssh_path, tmp_path
):
    """notebooks/quickstart.ipynb, unchanged, through nbclient with a kernelspec of the demo image on that Podman."""
    from testutils import DEMO
    from testutils.notebooks import run_copy

    volumes_before = {v.name for v in podman.volumes.list()}
    remote.load_images([DEMO])
    name = install_kernelspec(DEMO, engine=remote.podman_url)
    text = run_copy("quickstart.ipynb", tmp_path, name, timeout=120)
    demo_id = podman.images.get(DEMO).id
    assert "envpin: pinned to ubuntu-22.04-py3" in text, text
    assert "in a container: True" in text and f"image id      : {demo_id}" in text, text
    assert "python        : 3.11." in text and f"working dir   : /run/user/{remote.uid}/envpin-" in text, text
    assert text.count("job -> (") == 4 and f"'ubuntu-22.04-py3', '{demo_id[:19]}')" in text, text
    _assert_nothing_left(remote, podman, admin, volumes_before)
