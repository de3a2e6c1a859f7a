"""Warm kernels (``pool_size``): a pooled kernel is a cold one, started sooner; the pool keeps itself clean.

Real engine, real kernels.  The kernels run in this test process's
jupyter_client (as in a notebook server), so the tests can watch the pool
itself (``envpin_provisioner.warm.pool.pools``) as well as the engine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
import requests
from jupyter_client.manager import AsyncKernelManager

from envpin_provisioner.kernel.launch import WARM_NAME_PREFIX
from envpin_provisioner.warm.pool import pools
from testutils import NO_IPYKERNEL, PY311, PY313, async_wait_for, containers, program, wait_for
from testutils.kernels import PROBE, kernel, run, run_json

#: What a kernel must look like, whichever way it started (the notebook's folder, its session name, ...).
IDENTITY = (
    "{**" + PROBE + ", 'session': __import__('os').environ.get('JPY_SESSION_NAME'),"
    " 'name': __import__('os').environ.get('ENVPIN_IMAGE_NAME'),"
    " 'path': __import__('sys').path, 'imports_local': __import__('importlib.util').util.find_spec('helper') is not None, 'argv_ok': '-f' in __import__('sys').argv,"
    " 'lang': __import__('os').environ.get('LANG')}"
)


def warm_waiting(client):
    """The shared pool's running containers, ready or still warming up (not yet taken; a kernel's standbys carry
    its id and are not these)."""
    return [
        c
        for c in containers(client, role="pool", running=True)
        if c.name.startswith(WARM_NAME_PREFIX) and "envpin.kernel-id" not in c.labels
    ]


def warm_ready(client):
    """Those of :func:`warm_waiting` this process's pool can hand out now (warmed up: the next start takes one)."""
    ready = {w.container.id for w in pools.waiting()}
    return [c for c in warm_waiting(client) if c.id in ready]


def fill_failed(image_id: str) -> bool:
    """The fill of a pool of ``image_id`` has ended, and failed (``Pools`` keys name the image id)."""
    keys = [k for k in pools._failed if image_id in k]
    return bool(keys) and all(pools._filling[k].done() for k in keys if k in pools._filling)


@pytest.fixture
def pooled_spec(install_kernelspec):
    def install(image=PY311, size=1, **config):
        return install_kernelspec(
            image, name=f"pool-{size}-{image.split('/')[-1].replace(':', '-')}", pool_size=size, **config
        )

    return install


@pytest.fixture(autouse=True)
async def empty_pools():
    """Each test starts and ends with no warm container of this process (fills under way included: on the test's
    loop, before it closes)."""
    yield
    await pools.close()


async def test_a_pooled_kernel_is_the_cold_kernel_and_each_warm_container_serves_once(
    docker_client, pooled_spec, install_kernelspec, notebook_dir, monkeypatch
):
    monkeypatch.setenv("LANG", "C.UTF-8")
    cold_name = install_kernelspec(PY311, name="cold")
    (notebook_dir / "helper.py").write_text("X = 1\n")  # a notebook's own module imports from its folder
    pooled = pooled_spec(PY311, size=1, pool_root=str(notebook_dir.parent))
    env = {"JPY_SESSION_NAME": str(notebook_dir / "a.ipynb")}
    async with kernel(cold_name, cwd=notebook_dir, env=env) as (_, kc):
        cold = await run_json(kc, IDENTITY)
    async with kernel(pooled, cwd=notebook_dir, env=env) as (km1, kc1):  # cold itself: it fills the pool
        first = await run_json(kc1, IDENTITY)
        (w,) = await async_wait_for(lambda: warm_ready(docker_client), timeout=60, what="the pool to fill")
        async with kernel(pooled, cwd=notebook_dir, env=env) as (km2, kc2):
            second = await run_json(kc2, IDENTITY)
            # The hand-over folder is the server's: the kernel can neither write there nor replace the FIFO.
            assert (await run(kc2, program("handoff_tamper")))["status"] == "ok"
            tamper = await run_json(kc2, "_tamper()")
            assert (
                tamper["handoff"] and tamper["write"].startswith("OSError") and tamper["unlink"].startswith("OSError")
            )
            taken = km2.provisioner._container
            assert taken.id == w.id, "the second kernel took the warm container"
            taken.reload()
            assert taken.name.startswith(f"envpin-{km2.kernel_id}-")  # it says whose it is now
            assert taken.id in {c.id for c in containers(docker_client, kernel=km2.kernel_id)}
            # The pool refills with a new container; the taken one is never handed out again.
            (refill,) = await async_wait_for(lambda: warm_waiting(docker_client), timeout=60, what="the refill")
            assert refill.id != taken.id
    for probe in (first, second):
        assert {k: v for k, v in probe.items() if k != "hostname"} == {k: v for k, v in cold.items() if k != "hostname"}
    assert second["dockerenv"] and second["python"] == [3, 11] and second["cwd"] == str(notebook_dir)
    assert second["session"] == env["JPY_SESSION_NAME"]
    assert second["uid"] == os.getuid() and second["lang"] == "C.UTF-8" and second["imports_local"]


async def test_restart_and_moves_take_the_kernel_s_standby(docker_client, pooled_spec, notebook_dir):
    name = pooled_spec(PY313, size=1)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        provisioner = km.provisioner
        await async_wait_for(lambda: provisioner._warm.standbys, timeout=60, what="a standby for restarts")
        (standby,) = provisioner._warm.standbys.values()
        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=60)
        assert provisioner._container.id == standby.container.id, "the restart took the standby"
        assert (await run_json(kc, PROBE))["python"] == [3, 13]
        # A move into 3.11 (cold: nothing waits there) leaves a standby of 3.13 behind; moving back takes it.
        res = await run(kc, f"%load_ext envpin\n%use_image {PY311} --restart", timeout=120)
        assert res["status"] == "ok", res
        await kc.wait_for_ready(timeout=60)
        await async_wait_for(lambda: len(provisioner._warm.standbys) == 2, timeout=90, what="standbys for both images")
        back = provisioner._warm.standbys[standby.image_id]
        res = await run(kc, f"%use_image {PY313} --restart", timeout=120)
        assert res["status"] == "ok", res
        await async_wait_for(lambda: provisioner._container.id == back.container.id, timeout=30, what="the move")
        await kc.wait_for_ready(timeout=60)
        assert (await run_json(kc, PROBE))["python"] == [3, 13]
    # A standby the last move set going may still be in the engine's hands at the shutdown: it is removed as
    # soon as its creation ends (engine.create_owned), bounded.
    await async_wait_for(
        lambda: not containers(docker_client, kernel=km.kernel_id),
        timeout=20,
        what="the kernel's standbys to go with it",
    )


async def test_twenty_kernels_at_once_with_a_pool_of_two_all_come_up(docker_client, pooled_spec, notebook_dir):
    name = pooled_spec(PY311, size=2)
    async with kernel(name, cwd=notebook_dir):  # fills the pool
        await async_wait_for(lambda: len(warm_waiting(docker_client)) == 2, timeout=90, what="two warm containers")
    managers = [AsyncKernelManager(kernel_name=name) for _ in range(20)]
    await asyncio.gather(*(km.start_kernel(cwd=str(notebook_dir)) for km in managers))
    try:
        clients = [km.client() for km in managers]
        for kc in clients:
            kc.start_channels()
        await asyncio.gather(*(kc.wait_for_ready(timeout=120) for kc in clients))
        results = await asyncio.gather(*(run_json(kc, "__import__('os').getcwd()") for kc in clients))
        assert results == [str(notebook_dir)] * 20
        ids = [km.provisioner._container.id for km in managers]
        assert len(set(ids)) == 20  # no container serves two kernels
        for kc in clients:
            kc.stop_channels()
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))


async def test_an_image_that_cannot_run_a_kernel_fails_the_same_way_with_a_pool(docker_client, pooled_spec):
    from envpin_provisioner.errors import KernelStartFailed

    name = pooled_spec(NO_IPYKERNEL, size=2)
    for _ in range(2):  # the first start fails cold; the pool's fill fails too; the second fails the same way
        km = AsyncKernelManager(kernel_name=name)
        with pytest.raises(KernelStartFailed, match="ipykernel"):
            await km.start_kernel()
    # The event itself: the fill of this image's pool has ended, failed (its container removed before that).
    image_id = docker_client.images.get(NO_IPYKERNEL).id
    await async_wait_for(lambda: fill_failed(image_id), timeout=60, what="the pool's fill to fail")
    assert not warm_waiting(docker_client)


def test_a_killed_server_leaves_warm_containers_that_gc_removes_and_a_stopped_one_takes_them(
    server, install_kernelspec, docker_client
):
    name = install_kernelspec(PY311, pool_size=1)
    for stop in ("kill", "term"):
        srv = server()
        kid = srv.start_kernel(name, "a.ipynb")
        wait_for(lambda: warm_waiting(docker_client), timeout=90, what="the pool to fill")
        wait_for(lambda: len(containers(docker_client, kernel=kid)) >= 2, timeout=90, what="the kernel's standby")
        doctor = subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", "doctor"], capture_output=True, text=True, timeout=120
        )
        assert "warm container(s) waiting" in doctor.stdout and " MB of memory" in doctor.stdout, doctor.stdout
        if stop == "term":
            requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
            srv.stop()  # SIGTERM: the server removes its warm containers as it exits
            assert not containers(docker_client, role="pool")
            continue
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        assert containers(docker_client, role="pool", running=True)  # left behind, still running
        out = subprocess.run(
            [sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert not containers(docker_client, role="pool") and not containers(docker_client, kernel=kid)


async def test_a_moved_tag_drains_the_old_pool(docker_client, pooled_spec, notebook_dir):
    tag = "envpin-test/pooltag:latest"
    docker_client.images.get(PY311).tag(tag)
    try:
        name = pooled_spec(tag, size=1)
        async with kernel(name, cwd=notebook_dir) as (_, kc):
            assert (await run_json(kc, PROBE))["python"] == [3, 11]
        (old,) = await async_wait_for(lambda: warm_waiting(docker_client), timeout=60, what="the pool to fill")
        docker_client.images.get(PY313).tag(tag)  # the tag moves to another image
        async with kernel(name, cwd=notebook_dir) as (_, kc):
            assert (await run_json(kc, PROBE))["python"] == [3, 13]  # cold: the old pool's image is not the tag's
        (new,) = await async_wait_for(
            lambda: [c for c in warm_ready(docker_client) if c.id != old.id], timeout=60, what="a pool of the new id"
        )
        await async_wait_for(
            lambda: old.id not in {c.id for c in containers(docker_client)}, timeout=30, what="the old pool drained"
        )
        assert new.image.id == docker_client.images.get(PY313).id
    finally:
        docker_client.images.remove(tag, noprune=True)


async def test_a_folder_s_pool_goes_a_while_after_its_last_kernel(docker_client, pooled_spec, tmp_path, monkeypatch):
    """Pools are per notebook folder: one opened once must not hold warm containers until the server exits."""
    from envpin_provisioner.warm import pool

    monkeypatch.setattr(pool, "LINGER", 1.0)
    name = pooled_spec(PY311, size=1)
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        async with kernel(name, cwd=folder, env={"JPY_SESSION_NAME": str(folder / "n.ipynb")}):
            await async_wait_for(
                lambda f=folder: [
                    c for c in warm_waiting(docker_client) if any(m["Source"] == str(f) for m in c.attrs["Mounts"])
                ],
                timeout=60,
                what=f"the pool of {folder.name} to fill",
            )
    # Both kernels are gone: within LINGER (1 s here) both folders' pools are drained.
    await async_wait_for(lambda: not warm_waiting(docker_client), timeout=30, what="the pools to be drained")
