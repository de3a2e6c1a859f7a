"""The Containerized Python kernel through real jupyter_client on a real Docker engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

from testutils import PY311, PY313, async_wait_for, containers
from testutils.kernels import PROBE, execute_until_running, kernel, run, run_json


def kernel_container(client, km):
    found = containers(client, kernel=km.kernel_id)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("image,python", [(PY311, [3, 11]), (PY313, [3, 13])])
async def test_code_runs_in_a_container_of_the_image(docker_client, install_kernelspec, notebook_dir, image, python):
    name = install_kernelspec(image)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        container = kernel_container(docker_client, km)
        assert probe["dockerenv"] is True
        assert probe["python"] == python  # the image's Python, not the host's 3.11.7 by accident
        assert probe["hostname"] == container.attrs["Config"]["Hostname"]
        expected_id = docker_client.images.get(image).id
        assert probe["image"] == image
        assert probe["yt_image"] == image
        assert probe["image_id"] == expected_id
        assert container.attrs["Image"] == expected_id
        assert probe["cwd"] == str(notebook_dir)
        assert container.labels["envpin.role"] == "kernel"
        assert container.labels["envpin.owner-pid"] == str(os.getpid())
        assert container.attrs["HostConfig"]["Privileged"] is False
        # Files written in the notebook folder appear on the host, owned by the server's user.
        assert (await run(kc, "open('written-in-container.txt', 'w').write('hi')"))["status"] == "ok"
        written = notebook_dir / "written-in-container.txt"
        assert written.read_text() == "hi"
        assert (written.stat().st_uid, written.stat().st_gid) == (os.getuid(), os.getgid())
        cid = container.id
    import docker.errors

    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(cid)


async def test_kernel_runs_as_the_configured_uid(docker_client, install_kernelspec, notebook_dir):
    os.chmod(notebook_dir, 0o777)
    name = install_kernelspec(PY311, user="4321:4321")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
        assert (probe["uid"], probe["gid"]) == (4321, 4321)
        # The uid has no passwd entry in the image: HOME must still be writable for IPython.
        res = await run(kc, "import os; p=os.path.expanduser('~/probe'); open(p,'w').write('1'); print(p)")
        assert res["status"] == "ok", res
        await run(kc, "open('mine.txt', 'w').write('x')")
        assert (notebook_dir / "mine.txt").stat().st_uid == 4321


async def test_interrupt_raises_keyboardinterrupt_and_kernel_survives(docker_client, install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        cid = kernel_container(docker_client, km).id
        msg_id = await execute_until_running(kc, "import time; time.sleep(60)")
        started = time.monotonic()
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(timeout=10)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - started < 10
        assert (await run_json(kc, "1 + 1")) == 2
        assert kernel_container(docker_client, km).id == cid  # same container: not restarted


async def test_restart_starts_a_fresh_container_of_the_same_image(docker_client, install_kernelspec, notebook_dir):
    import docker.errors

    name = install_kernelspec(PY313)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, "x = 41")
        old = kernel_container(docker_client, km)
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=60)
        new = kernel_container(docker_client, km)
        assert new.id != old.id
        assert new.attrs["Image"] == old.attrs["Image"]
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(old.id)
        res = await run(kc, "x")
        assert res["ename"] == "NameError"  # a fresh interpreter
        assert (await run_json(kc, PROBE))["python"] == [3, 13]


async def test_kill_removes_the_container(docker_client, install_kernelspec, notebook_dir):
    import docker.errors

    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        cid = kernel_container(docker_client, km).id
        await km.shutdown_kernel(now=True)
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(cid)


async def test_poll_sees_a_container_killed_from_outside(docker_client, install_kernelspec, notebook_dir, caplog):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        km.stop_restarter()
        assert await km.is_alive()
        container = kernel_container(docker_client, km)
        assert container.name.startswith(f"envpin-{km.kernel_id}-")  # a cold start is named for its kernel too
        container.kill()

        async def dead():
            return not await km.is_alive()

        await async_wait_for(dead, timeout=30, what="is_alive to see the killed container", interval=0.1)
        assert not await km.is_alive()
    # Jupyter only says "the kernel appears to have died": the server's log says why, once.
    told = [r.getMessage() for r in caplog.records if "killed (SIGKILL" in r.getMessage()]
    assert len(told) == 1 and container.short_id in told[0] and PY311 in told[0], caplog.text


async def test_channels_are_private_and_the_key_is_never_exposed(docker_client, install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        container = kernel_container(docker_client, km)
        key = km.session.key.decode()
        assert len(key) > 10
        # ipc transport: no port exists, nothing published.
        assert km.transport == "ipc"
        assert not container.attrs["NetworkSettings"]["Ports"]
        assert not container.attrs["HostConfig"]["PortBindings"]
        channel_dir = os.path.dirname(km.connection_file)
        assert os.stat(channel_dir).st_mode & 0o777 == 0o700
        assert os.stat(km.connection_file).st_mode & 0o777 == 0o600
        # The key is in no command line, environment or label of the container ...
        inspect = json.dumps(container.attrs)
        assert key not in inspect
        # ... nor in any process command line on this machine.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert key not in ps
    assert not os.path.exists(channel_dir)


async def test_tcp_transport_publishes_on_loopback_only(docker_client, install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311, transport="tcp")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        container = kernel_container(docker_client, km)
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert len(bindings) == 5
        assert {b["HostIp"] for v in bindings.values() for b in v} == {"127.0.0.1"}
        assert json.dumps(container.attrs).find(km.session.key.decode()) == -1
        assert (await run_json(kc, PROBE))["dockerenv"] is True
        # The image's ipykernel reads CurveZMQ keys: the channels are encrypted, keys only in the file.
        assert km.curve_publickey is not None
        assert (
            await run_json(
                kc,
                "sorted(k for k in __import__('json').load(open('/tmp/envpin-kernel.json')) if k.startswith('curve'))",
            )
        ) == [
            "curve_publickey",
            "curve_secretkey",
        ]
        assert km.curve_secretkey.decode() not in json.dumps(container.attrs)


async def test_network_none_still_works_over_ipc(docker_client, install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311, network_mode="none")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        assert kernel_container(docker_client, km).attrs["HostConfig"]["NetworkMode"] == "none"
        res = await run(kc, "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)")
        assert res["status"] == "error"  # no network at all, yet the kernel answers


async def test_options_reach_the_container(docker_client, install_kernelspec, notebook_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("mounted")
    name = install_kernelspec(
        PY311,
        mounts=[f"{data}:/data:ro"],
        environment={"TEAM": "ml"},
        mem_limit="512m",
        cpu_limit=1.5,
        extra_container_options={"shm_size": "128m"},
    )
    async with kernel(name, cwd=notebook_dir, env={"SECRET_TOKEN": "x", "LANG": "C.UTF-8"}) as (km, kc):
        c = kernel_container(docker_client, km)
        assert c.attrs["HostConfig"]["Memory"] == 512 * 2**20
        assert c.attrs["HostConfig"]["NanoCpus"] == 1_500_000_000
        assert c.attrs["HostConfig"]["ShmSize"] == 128 * 2**20
        got = await run_json(
            kc,
            "[open('/data/f.txt').read(), __import__('os').environ.get('TEAM'),"
            " __import__('os').environ.get('SECRET_TOKEN'), __import__('os').environ.get('LANG'),"
            " __import__('os').environ.get('JPY_PARENT_PID')]",
        )
        assert got == ["mounted", "ml", None, "C.UTF-8", None]
        res = await run(kc, "open('/data/new', 'w')")
        assert res["status"] == "error"  # read-only mount


async def test_provisioner_info_lets_a_new_manager_find_the_container(docker_client, install_kernelspec, notebook_dir):
    """What a restarted server does: load the saved provisioner info and manage the same container."""
    from jupyter_client.manager import AsyncKernelManager

    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        info = await km.provisioner.get_provisioner_info()
        cid = kernel_container(docker_client, km).id
        assert info["container_id"] == cid
        km2 = AsyncKernelManager(kernel_name=name)
        from jupyter_client.provisioning import KernelProvisionerFactory

        km2.kernel_id = km.kernel_id
        prov = KernelProvisionerFactory.instance().create_provisioner_instance(km.kernel_id, km2.kernel_spec, km2)
        await prov.load_provisioner_info(info)
        assert prov.has_process
        assert await prov.poll() is None
        await prov.kill()
        assert await asyncio.wait_for(prov.wait(), 10) is not None
        assert not await km.is_alive()  # the original manager sees it too: same container
        await prov.cleanup(restart=True)
        import docker.errors

        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(cid)


async def test_dev_shm_is_sized_like_a_hosts(docker_client, install_kernelspec, notebook_dir):
    """Docker's 64 MB /dev/shm makes Ray's object store fall back to disk; 'auto' gives half the memory."""
    engine_memory = docker_client.info()["MemTotal"]
    for config, expected in (({}, engine_memory // 2), ({"mem_limit": "1g"}, 2**29), ({"shm_size": ""}, 64 * 2**20)):
        name = install_kernelspec(PY311, name=f"shm-{len(config)}-{expected}", **config)
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            st = await run_json(kc, "(lambda s: s.f_blocks * s.f_frsize)(__import__('os').statvfs('/dev/shm'))")
            assert abs(st - expected) < 2**20, (config, st, expected)  # tmpfs rounds to pages
