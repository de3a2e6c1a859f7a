"""A hostile kernel over SSH swaps a ``mounts`` source below ``remote_root`` for a link (review 'hostile30').

With ``remote_root``, every folder below it is some kernel's working folder
(the notebook at the local root works in ``remote_root`` itself), so a
``mounts`` source below it is a name a kernel can replace:
``os.rename('data', 'data.real'); os.symlink('/home/u', 'data')``.  The
engine follows a link in a bind mount's source, so the next kernel would get
the link's target (the SSH user's home, ``~/.ssh`` in it; or ``/run``) at the
mount's target: a folder of the remote host no kernel was given.  The
working folder itself is checked part by part and pinned by inode
(``ssh_kernel.prepare``, ``check_workdir``); a mount source below
``remote_root`` must be too.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from testutils import PY311, containers
from testutils.kernels import kernel, run_json
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(150),
]

ROOT = "/home/envpin-remote/h30"
OUTSIDE = "/home/envpin-remote/h30-outside"  # the SSH user's, not below remote_root


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rh30host", images=[PY311]) as host:
        yield host


async def test_a_mount_source_a_kernel_swapped_for_a_link_is_never_mounted(remote, admin, remote_spec, tmp_path):
    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    remote.run(["mkdir", "-p", f"{ROOT}/data", OUTSIDE])
    remote.run(["touch", f"{ROOT}/data/genuine", f"{OUTSIDE}/outside-marker"])
    name = remote_spec(remote_root=ROOT, local_root=str(root), mounts=[f"{ROOT}/data:/data"])
    try:
        async with kernel(name, cwd=root) as (_km_a, kc_a):  # kernel A works in remote_root: it swaps the source
            assert await run_json(kc_a, "sorted(__import__('os').listdir('/data'))") == ["genuine"]
            swap = f"(lambda os: os.rename('data', 'data.real') or os.symlink({OUTSIDE!r}, 'data'))"
            await run_json(kc_a, swap + "(__import__('os'))")
        with pytest.raises(Exception, match=r"(?s)mount source.*data.*link"):
            async with kernel(name, cwd=root / "project") as (_km_b, kc_b):
                seen = await run_json(
                    kc_b, "open('/data/written-by-b', 'w').close() or __import__('os').listdir('/data')"
                )
                pytest.fail(f"kernel B's /data is the planted link's target ({OUTSIDE}): {seen}")
        assert containers(admin, role="kernel") == []
        done = remote.run(["ls", "-A", OUTSIDE], capture_output=True, text=True)
        assert done.stdout.split() == ["outside-marker"]
    finally:
        remote.run(["rm", "-rf", ROOT, OUTSIDE])


async def test_a_mount_source_swapped_after_the_first_start_is_never_mounted_at_a_restart(
    remote, admin, remote_spec, tmp_path
):
    """Pinned at B's first start, compared in B's restart's container: removed before its key goes in."""
    from jupyter_client.manager import AsyncKernelManager

    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    remote.run(["mkdir", "-p", f"{ROOT}/data", OUTSIDE])
    remote.run(["touch", f"{ROOT}/data/genuine", f"{OUTSIDE}/outside-marker"])
    name = remote_spec(remote_root=ROOT, local_root=str(root), mounts=[f"{ROOT}/data:/data"])
    km_b = AsyncKernelManager(kernel_name=name)
    try:
        await asyncio.wait_for(km_b.start_kernel(cwd=str(root / "project"), env=dict(os.environ)), 60)
        kc_b = km_b.client()
        kc_b.start_channels()
        try:
            await kc_b.wait_for_ready(timeout=60)
            assert await run_json(kc_b, "__import__('os').listdir('/data')") == ["genuine"]
        finally:
            kc_b.stop_channels()
        async with kernel(name, cwd=root) as (_km_a, kc_a):
            swap = f"(lambda os: os.rename('data', 'data.real') or os.symlink({OUTSIDE!r}, 'data'))"
            await run_json(kc_a, swap + "(__import__('os'))")
        with pytest.raises(
            Exception, match=r"(?s)mount at /data.*no\s+longer\s+the\s+folder\s+envpin\s+checked.*a\s+link"
        ):
            await asyncio.wait_for(km_b.restart_kernel(), 60)
        assert containers(admin, kernel=km_b.kernel_id) == []
        done = remote.run(["ls", "-A", OUTSIDE], capture_output=True, text=True)
        assert done.stdout.split() == ["outside-marker"]
    finally:
        if km_b.has_kernel:
            await km_b.shutdown_kernel(now=True)
        await km_b.cleanup_resources()
        remote.run(["rm", "-rf", ROOT, OUTSIDE])
    assert containers(admin, role="kernel") == []
