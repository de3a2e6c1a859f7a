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

import os

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


@pytest.fixture
def remote_spec(remote, install_kernelspec, monkeypatch):
    monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
    yield lambda **config: install_kernelspec(PY311, engine=remote.ssh_url, **config)
    import envpin_provisioner

    envpin_provisioner.reset_caches()


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
