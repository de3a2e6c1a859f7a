"""A hostile kernel over SSH plants links in the remote host's folders it can write (issue 28, review 'hostile28').

With ``remote_root``, a kernel's working folder is a folder of the remote
host below ``remote_root``, and every notebook folder below the local root has
its place there.  A kernel can make a link in its working folder with the
name of a sibling notebook's folder (``os.symlink('/run', 'project')``); the
next kernel started for that notebook must not get the link's target (the
remote host's ``/run``, the engine's socket in it) as its working folder: the
engine follows a link in a bind mount's source, so ``prepare`` refuses one.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from testutils import PY311, containers
from testutils.kernels import kernel, run_json
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(120),
]

ROOT = "/home/envpin-remote/h28"
OUTSIDE = "/home/envpin-remote/h28-outside"  # the SSH user's, not below remote_root


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rhhost", images=[PY311]) as host:
        yield host


@pytest.mark.parametrize("planted", ["project", "deep"])
async def test_a_link_a_kernel_planted_is_never_a_later_kernels_working_folder(
    remote, admin, remote_spec, tmp_path, planted
):
    root = tmp_path / "root"
    notebook = root / "project" if planted == "project" else root / "deep" / "inner"
    notebook.mkdir(parents=True)
    remote.run(["mkdir", "-p", ROOT, OUTSIDE])
    name = remote_spec(remote_root=ROOT, local_root=str(root))
    async with kernel(name, cwd=root) as (_km, kc):  # kernel A, in remote_root itself: it plants the link
        target = "/run" if planted == "project" else OUTSIDE
        assert (
            await run_json(kc, f"__import__('os').symlink({target!r}, {planted!r}) or __import__('os').getcwd()")
            == ROOT
        )
    try:
        with pytest.raises(Exception, match=r"(?s)working folder.*is not a folder below\s+remote_root=.*a\s+link"):
            async with kernel(name, cwd=notebook) as (km_b, kc_b):  # kernel B: its notebook's folder is the link
                seen = await run_json(kc_b, "sorted(__import__('os').listdir('.'))")
                pytest.fail(f"kernel B's working folder is the planted link's target ({target}): {seen}")
        assert containers(admin, role="kernel") == []
        # Nothing was made through the link on the remote host.
        done = remote.run(["ls", "-A", OUTSIDE], capture_output=True, text=True)
        assert done.stdout.split() == []
    finally:
        remote.run(["rm", "-rf", ROOT, OUTSIDE])


async def test_a_folder_swapped_for_a_link_after_the_first_start_is_never_mounted(remote, admin, remote_spec, tmp_path):
    """The check at the first start is not enough: restarts and moves mount the same path again, later.

    Kernel A (working in ``remote_root``) renames kernel B's working folder
    and puts a link in its place while B runs; B's restart must not mount the
    link's target (the engine would follow it): its container sees another
    inode than the one pinned at B's first start, and is removed before its key
    goes in.  Was: only ``prepare`` checked, once.
    """
    from jupyter_client.manager import AsyncKernelManager

    root = tmp_path / "root"
    (root / "project").mkdir(parents=True)
    remote.run(["mkdir", "-p", ROOT, OUTSIDE])
    remote.run(["touch", f"{OUTSIDE}/outside-marker"])
    name = remote_spec(remote_root=ROOT, local_root=str(root))
    km_b = AsyncKernelManager(kernel_name=name)
    try:
        await asyncio.wait_for(km_b.start_kernel(cwd=str(root / "project"), env=dict(os.environ)), 60)
        kc_b = km_b.client()
        kc_b.start_channels()
        try:
            await kc_b.wait_for_ready(timeout=60)
            assert await run_json(kc_b, "__import__('os').getcwd()") == f"{ROOT}/project"
        finally:
            kc_b.stop_channels()
        async with kernel(name, cwd=root) as (_km_a, kc_a):  # kernel A swaps B's folder for a link
            swap = f"(lambda os: os.rename('project', 'project.real') or os.symlink({OUTSIDE!r}, 'project'))"
            await run_json(kc_a, swap + "(__import__('os'))")
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?s)working folder.*is no longer the\s+folder envpin checked.*a\s+link"):
            await asyncio.wait_for(km_b.restart_kernel(), 60)
        assert time.monotonic() - started < 30
        assert containers(admin, kernel=km_b.kernel_id) == []  # removed before its key went in
        # A restart's container would have got the marker's folder as its working folder: it never ran code.
        done = remote.run(["ls", "-A", OUTSIDE], capture_output=True, text=True)
        assert done.stdout.split() == ["outside-marker"]
    finally:
        if km_b.has_kernel:
            await km_b.shutdown_kernel(now=True)
        await km_b.cleanup_resources()
        remote.run(["rm", "-rf", ROOT, OUTSIDE])
    assert containers(admin, role="kernel") == []
