"""Kernels on another machine's engine over SSH (issue 28), against the RemoteHost harness.

The remote host is a real second engine on its own address, reached only
through its sshd with a key; it does not see this machine's checkout, venv or
notebook folders.  Each test checks from both engines: the kernel's container
exists on the remote one only, and nothing is left on either afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from testutils import PY311, containers, wait_for
from testutils.kernels import PROBE, execute_until_running, kernel, run, run_json
from testutils.remote_host import RemoteHost, exposed_listeners, listener_owners

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"
)


@pytest.fixture(scope="module")
def before_listeners():
    return exposed_listeners()


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhssh", images=[PY311]) as host:
        yield host


@pytest.fixture
def admin(remote):
    client = remote.docker_client("admin")
    yield client
    client.close()


@pytest.fixture
def ssh_path(remote, monkeypatch):
    """OpenSSH reads the harness's config through its ``bin/ssh`` (first on PATH), as a user's ~/.ssh/config."""
    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    yield
    from envpin.host import docker_client, ssh_tunnel

    docker_client.reset()
    ssh_tunnel.close_all()
    from envpin_provisioner import engine

    engine._engines.clear()


@pytest.fixture
def remote_spec(remote, install_kernelspec, ssh_path):
    def make(**config):
        return install_kernelspec(PY311, engine=remote.ssh_url, **config)

    return make


def _remote_kernels(admin, km):
    return containers(admin, kernel=km.kernel_id)


def _leftover_folders(remote) -> list[str]:
    done = remote.run(["sh", "-c", "ls -d /tmp/envpin-* 2>/dev/null || true"], capture_output=True, text=True)
    return done.stdout.split()


async def test_kernel_runs_on_the_remote_engine_only(
    remote, admin, docker_client, remote_spec, notebook_dir, before_listeners
):
    name = remote_spec()
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        found = _remote_kernels(admin, km)
        assert len(found) == 1, found
        container = found[0]
        assert containers(docker_client, kernel=km.kernel_id) == []  # not on this machine's engine
        assert probe["dockerenv"] is True and probe["python"] == [3, 11]
        assert probe["hostname"] == container.attrs["Config"]["Hostname"]
        assert probe["image_id"] == admin.images.get(PY311).id
        # Nothing of this machine is mounted there: every bind source is a path of the remote host.
        for mount in container.attrs["Mounts"]:
            assert mount["Type"] in ("bind", "volume"), mount
            if mount["Type"] == "bind":
                assert mount["Source"].startswith("/tmp/envpin-"), mount
        # The kernel's working folder is a scratch folder over there, not the notebook folder here.
        assert probe["cwd"] != str(notebook_dir) and probe["cwd"].startswith("/tmp/envpin-")
        assert (await run(kc, "open('made-there.txt', 'w').write('hi')"))["status"] == "ok"
        assert not (notebook_dir / "made-there.txt").exists()
        # The key is in no command line, environment or label.
        key = km.session.key.decode()
        text = repr(container.attrs["Config"]) + repr(container.attrs["HostConfig"])
        assert key not in text
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    assert key.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    pass
        # %load_ext envpin works (its package comes from a read-only volume on that engine), and a job.
        res = await run(kc, "%load_ext envpin")
        assert res["status"] == "ok", res
        res = await run(
            kc,
            "from envpin import ContainerExecutor\n"
            "with ContainerExecutor(max_workers=1) as ex:\n"
            "    print('job', ex.submit(pow, 2, 10).result(timeout=120))",
            timeout=180,
        )
        assert res["status"] == "ok" and "job 1024" in res["stdout"], res
        new = exposed_listeners() - before_listeners
        assert not new, f"new listeners on this machine: {listener_owners(new)}"
        from testutils.remote_host import tcp_listeners

        assert tcp_listeners(remote.pid) == {(remote.address, 22), (remote.address, 2376)}
        cid = container.id
    assert [c for c in admin.containers.list(all=True) if c.id == cid] == []
    assert containers(admin, kernel=km.kernel_id) == []
    assert _leftover_folders(remote) == []


async def test_interrupt_and_restart(admin, remote_spec, notebook_dir):
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
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=60)
        found = _remote_kernels(admin, km)
        assert len(found) == 1 and found[0].id != cid
        assert (await run(kc, "x"))["ename"] == "NameError"
        assert (await run_json(kc, "1 + 1")) == 2
    assert containers(admin, kernel=km.kernel_id) == []


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


async def test_a_mount_missing_on_the_remote_host_is_refused(remote, remote_spec, notebook_dir, tmp_path):
    here = tmp_path / "only-here"
    here.mkdir()
    name = remote_spec(mounts=[f"{here}:/data:ro"])
    with pytest.raises(Exception, match=r"does not exist on ssh://.*mounts name paths of that machine"):
        async with kernel(name, cwd=notebook_dir):
            pass
    assert _leftover_folders(remote) == []


async def test_a_stopped_remote_engine_is_reported_in_seconds(remote, admin, remote_spec, notebook_dir):
    """dockerd stopped mid-session: a restart fails with a clear error in seconds; gc --engine cleans up after."""
    from envpin.host import ssh_tunnel

    name = remote_spec()
    km = None
    try:
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            assert (await run_json(kc, "1")) == 1
            master = ssh_tunnel.known(remote.ssh_url)
            assert master is not None and master.alive()
            master.kill_for_test()  # a dropped link: re-established within seconds
            wait_for(master.alive, 20, "the SSH master to come back")
            assert (await run_json(kc, "2")) == 2
            _stop_dockerd(remote)
            started = time.monotonic()
            with pytest.raises(Exception, match=r"(does not answer|Docker engine)"):
                await asyncio.wait_for(km.restart_kernel(), 60)
            assert time.monotonic() - started < 20
    except Exception:
        pass
    finally:
        _start_dockerd(remote)
    # The container of the dead session is collected by envpin gc --engine.
    env = {**os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "gc", "--engine", remote.ssh_url, "--other-hosts"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = remote.docker_client("admin")
    try:
        assert containers(client, kernel=km.kernel_id if km else "x") == []
    finally:
        client.close()


def _stop_dockerd(remote) -> None:
    remote.run(["sh", "-c", "kill $(cat /run/docker.pid)"], as_user=False)
    wait_for(
        lambda: remote.run(["test", "-S", "/run/docker.sock"], as_user=False).returncode != 0, 30, "dockerd to stop"
    )


def _start_dockerd(remote) -> None:
    """The harness's own dockerd command line (its init script's), started again in the host's namespaces."""
    line = next(entry for entry in remote._init_script().splitlines() if entry.startswith("dockerd "))
    line = line.replace(">&3 2>&3 &", ">/dev/null 2>&1 </dev/null &")
    remote.run(["sh", "-c", f"setsid {line}"], as_user=False)

    def answers() -> bool:
        try:
            client = remote.docker_client("admin", timeout=5)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    wait_for(answers, 60, "the remote dockerd to answer again")
