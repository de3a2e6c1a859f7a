"""Issue 31's findings 1, 6, 10 and 11, from inside real kernels (server as root, kernel as KERNEL_UID).

1. the fallback launcher (and every process envpin starts) imports nothing planted in its working folder;
10. nested notebook folders: a kernel that relinks another kernel's folder makes the server write or mount
    nothing outside it (the folder is pinned at the first start);
11. a kernel that gets the "moving" answer and never exits, shut down then, leaves no container behind;
6. a kernel that swaps its socket files for links to another socket is stopped at the next poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from testutils import PY311, PY313, containers, flat
from testutils.hostile import KERNEL_UID, toolbox
from testutils.kernels import kernel, run, run_json

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the findings need a server running as root")

#: What planted code would do if it ever ran: leave a marker file in a folder only the test reads.
PLANT = "import os; open(os.path.join({marker!r}, {name!r}), 'w').write('planted code ran')\n"


def plant(folder, marker_dir, extra_modules=()) -> None:
    """Packages and start-up hooks that would run if the folder were ever on a process's import path."""
    folder.mkdir(parents=True, exist_ok=True)
    for module in ("envpin", "envpin_provisioner", "ipykernel", "ipykernel_launcher", *extra_modules):
        pkg = folder / module
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(PLANT.format(marker=str(marker_dir), name=module))
        (pkg / "__main__.py").write_text(PLANT.format(marker=str(marker_dir), name=module + ".__main__"))
    (folder / "sitecustomize.py").write_text(PLANT.format(marker=str(marker_dir), name="sitecustomize"))
    (folder / "usercustomize.py").write_text(PLANT.format(marker=str(marker_dir), name="usercustomize"))
    (folder / "evil.pth").write_text("import " + "os; os.makedirs(%r, exist_ok=True)\n" % str(marker_dir / "pth"))


async def test_the_fallback_launcher_imports_nothing_from_the_notebook_folder(
    jupyter_env, docker_client, notebook_dir, tmp_path
):
    """Finding 1: ``python -m envpin_provisioner launch`` ran a planted envpin_provisioner/ as the client's uid."""
    from envpin_provisioner.cli import kernelspec

    marker = tmp_path / "marker"
    marker.mkdir(mode=0o777)
    os.chmod(marker, 0o777)
    plant(notebook_dir, marker)
    spec = kernelspec.kernelspec_dict(PY311, "no provisioner")
    del spec["metadata"]["kernel_provisioner"]  # what a client that ignores provisioners runs: the argv
    d = jupyter_env["data"] / "kernels" / "argv-planted"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps(spec))
    assert KernelSpecManager().get_kernel_spec("argv-planted").argv[1] == "-c"
    async with kernel("argv-planted", cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, "[__import__('os').getcwd(), __import__('sys').version_info[:2]]")
        assert probe == [str(notebook_dir), [3, 11]]
        await km.restart_kernel()  # the finding's trigger: the next start of the launcher
        await kc.wait_for_ready(timeout=60)
        assert (await run(kc, "1"))["status"] == "ok"
    # `envpin ...` run as a module from that folder imports nothing from it either.
    out = subprocess.run(
        [sys.executable, "-c", spec["argv"][2], "envpin_provisioner", "gc", "--dry-run"],
        cwd=notebook_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(marker)) == [], "planted code ran"


async def test_a_cold_kernel_imports_nothing_planted_in_its_folder(hostile_setup, notebook_dir, tmp_path):
    """In the container too: a planted ipykernel/, envpin/ or sitecustomize.py in the notebook folder is ignored.

    The kernel's own imports still find the notebook's modules afterwards (IPython adds the folder), as a
    local kernel does.
    """
    name, env = hostile_setup
    marker = notebook_dir / "markers"  # visible to the kernel: the planted code would write here
    marker.mkdir()
    os.chown(marker, KERNEL_UID, KERNEL_UID)
    plant(notebook_dir, marker)
    (notebook_dir / "helper.py").write_text("X = 42\n")
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        assert await run_json(kc, "__import__('helper').X") == 42
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=60)
        res = await run(kc, f"%load_ext envpin\n%use_image {PY313} --restart", timeout=120)
        assert res["status"] == "ok", res
        await kc.wait_for_ready(timeout=60)
        assert await run_json(kc, "list(__import__('sys').version_info[:2])") == [3, 13]
    assert sorted(os.listdir(marker)) == [], "planted code ran in a container"


def nested_folders(tmp_path):
    """Notebook folder ``proj`` holding another notebook folder ``proj/sub``, both the kernels' uid's."""
    proj = tmp_path / "proj"
    sub = proj / "sub"
    sub.mkdir(parents=True)
    for folder in (proj, sub):
        os.chown(folder, KERNEL_UID, KERNEL_UID)
    return proj, sub


async def test_a_kernel_cannot_relink_a_nested_notebook_folder(canaries, install_kernelspec, tmp_path, docker_client):
    """Finding 10: kernel A (proj) renamed kernel B's folder (proj/sub) and put a link to a root-only folder
    in its place; B's next %use_image made the root server write .envpin.json inside that folder."""
    name = install_kernelspec(PY311, user=f"{KERNEL_UID}:{KERNEL_UID}")
    proj, sub = nested_folders(tmp_path)
    target = str(canaries.root_only)
    async with (
        kernel(name, cwd=proj, env={"JPY_SESSION_NAME": str(proj / "a.ipynb")}) as (_, kc_a),
        kernel(name, cwd=sub, env={"JPY_SESSION_NAME": str(sub / "b.ipynb")}) as (km_b, kc_b),
    ):
        res = await run(kc_a, f"import os; os.rename('sub', 'sub-moved'); os.symlink({target!r}, 'sub')")
        assert res["status"] == "ok", res
        # B pins (same image: recorded only): the pin goes into B's own folder, wherever it is now.
        res = await run(kc_b, f"%load_ext envpin\n%use_image {PY311}", timeout=60)
        assert res["status"] == "ok", res
        assert json.loads((proj / "sub-moved" / ".envpin.json").read_text())["notebooks"]["b.ipynb"]
        canaries.assert_untouched()
        # A move or restart of B would mount the link's target: refused, in one paragraph, no container.
        res = await run(kc_b, f"%use_image {PY313} --restart", timeout=60)
        assert res["status"] == "error" and "not the folder this kernel started in" in flat(res["evalue"]), res
        assert (await run(kc_b, "import os; os.listdir('.')"))["status"] == "ok"  # B still runs, unharmed
        with pytest.raises(Exception) as refused:
            await km_b.restart_kernel()
        assert "not the folder this kernel started in" in flat(refused.value)
        assert not [c for c in containers(docker_client, kernel=km_b.kernel_id) if c.status == "running"]
    canaries.assert_untouched()
    assert not containers(docker_client, kernel=km_b.kernel_id)


async def test_a_kernel_that_never_hands_over_leaves_nothing_at_shutdown(hostile_setup, notebook_dir, docker_client):
    """Finding 11: a kernel that gets the "moving" answer and does not exit, shut down then, left its old container."""
    name, env = hostile_setup
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        await toolbox(kc)
        old = km.provisioner._container
        rid = uuid.uuid4().hex
        # The raw request, and no hand-over: this kernel ignores the answer and stays.
        code = "send({'id': %r, 'image': %r, 'allow_restart': True}); print(json.dumps(wait_answer(%r, 60)))"
        res = await run(kc, code % (rid, PY313, rid), timeout=90)
        assert res["status"] == "ok", res
        answer = json.loads(res["stdout"].strip().splitlines()[-1])
        assert answer["status"] == "moving", answer
        assert km.provisioner._container.id != old.id  # the new one is the kernel now; the old one waits
        ids = {c.id for c in containers(docker_client, kernel=km.kernel_id)}
        assert old.id in ids and len(ids) == 2
    deadline = time.monotonic() + 20
    while containers(docker_client, kernel=km.kernel_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not containers(docker_client, kernel=km.kernel_id), "a container of the kernel was left behind"


class CountingSocket:
    """A unix socket in a root-only folder that counts the connections it gets (the foreign socket)."""

    def __init__(self, folder):
        self.path = str(folder / "foreign.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.server.close()


async def test_a_kernel_that_swaps_its_sockets_is_stopped(canaries, hostile_setup, notebook_dir, docker_client):
    """Finding 6: socket files replaced by links to a root-only socket made the server reconnect there 221 times
    in 6 s while poll() said the kernel was alive.  Now the next poll sees the swap and stops the kernel."""
    name, env = hostile_setup
    foreign_dir = canaries.dir.parent / "foreign"
    foreign_dir.mkdir(mode=0o700)
    foreign = CountingSocket(foreign_dir)
    try:
        async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
            await toolbox(kc)
            code = (
                "import glob\n"
                "for p in glob.glob(os.path.join(SOCK, 'k-*')):\n"
                "    os.unlink(p); os.symlink(%r, p)\n" % foreign.path
            )
            assert (await run(kc, code))["status"] == "ok"
            assert await km.provisioner.poll() is not None, "a kernel with swapped sockets still counts as alive"
            old = km.provisioner._container
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                old.reload()
                if old.status != "running":
                    break
                await asyncio.sleep(0.1)
            assert old.status != "running"
            assert not any(os.path.islink(p) for p in _sockets(km))  # the names the kernel swapped are gone
    finally:
        foreign.close()
    assert foreign.count < 30, f"{foreign.count} connections reached the foreign socket"


def _sockets(km):
    from envpin_provisioner.kernel import channels

    return channels.socket_paths(km.provisioner._launch)


async def test_the_mount_is_checked_from_inside_the_running_container(
    canaries, install_kernelspec, tmp_path, docker_client, monkeypatch
):
    """The second line: if a relink wins the race past the check before creation (simulated by switching
    that check off), the server sees through /proc/PID/root that the mounted folder is not the pinned one,
    removes the container and refuses the start."""
    from envpin_provisioner.kernel import folder

    name = install_kernelspec(PY311, user=f"{KERNEL_UID}:{KERNEL_UID}")
    proj, sub = nested_folders(tmp_path)
    async with kernel(name, cwd=sub, env={"JPY_SESSION_NAME": str(sub / "b.ipynb")}) as (km, kc_b):
        assert (await run(kc_b, "1"))["status"] == "ok"
        os.rename(sub, proj / "sub-moved")
        os.symlink(canaries.root_only, sub)
        monkeypatch.setattr(folder, "check_folder", lambda launch: None)
        with pytest.raises(Exception) as refused:
            await km.restart_kernel()
        assert "another folder was mounted in its place" in flat(refused.value)
        assert not containers(docker_client, kernel=km.kernel_id)
    canaries.assert_untouched()
