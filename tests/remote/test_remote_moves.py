"""``%use_image`` moves a kernel on another machine's engine, over SSH and over TCP+TLS (issue 28).

The kernel's control folder is in its container's own layer there, relayed
by one exec per container (``envpin_provisioner.remote.control_relay``): a
move starts the new kernel on that same engine, the moving cell finishes, the
next cell runs in the new image, the old container goes, the pin is written
beside the notebook on this machine, and after shutdown nothing is left on
either engine or on the remote host's disk.  The control relay is hostile
input: a kernel that garbles, floods or kills it leaves the server serving.
One RemoteHost (both transports) serves the module; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest

from testutils import NO_IPYKERNEL, PY311, PY313, async_wait_for, containers
from testutils.kernels import PROBE, kernel, run, run_json
from testutils.remote_host import RemoteHost, exposed_listeners, listener_owners

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(150),
]

TRANSPORTS = ["ssh", "tls"]


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhmove", images=[PY311, PY313, NO_IPYKERNEL]) as host:
        yield host


@pytest.fixture
def spec(remote, install_kernelspec, monkeypatch):
    """``spec(transport)``: a kernelspec of PY311 on the remote engine, reached over SSH or TLS."""

    def make(transport: str, **config):
        if transport == "ssh":
            monkeypatch.setenv("PATH", f"{remote.ssh_bin.parent}:{os.environ['PATH']}")
            return install_kernelspec(PY311, engine=remote.ssh_url, **config)
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(remote.cert_path))
        return install_kernelspec(PY311, engine=remote.tcp_url, **config)

    yield make
    import envpin_provisioner

    envpin_provisioner.reset_caches()  # this process's clients, SSH masters and relays: the next test connects anew


def _session(notebook_dir) -> dict[str, str]:
    return {"JPY_SESSION_NAME": str(notebook_dir / "moves.ipynb")}


def _nothing_left(remote, admin, docker_client, kernel_id: str, volumes_before: set[str]) -> None:
    """No container on either engine, no folder on the remote host's disk, no new volume but envpin's package."""
    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
    assert containers(docker_client, kernel=kernel_id) == []
    done = remote.run(["sh", "-c", "ls -d /tmp/envpin-* 2>/dev/null || true"], capture_output=True, text=True)
    assert done.stdout.split() == []
    new_volumes = {v.name for v in admin.volumes.list()} - volumes_before
    assert all(name.startswith("envpin-pkg-") for name in new_volumes), new_volumes


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_use_image_moves_the_kernel_on_the_remote_engine(
    transport, remote, admin, docker_client, spec, notebook_dir, before_listeners
):
    volumes_before = {v.name for v in admin.volumes.list()}
    name = spec(transport)
    async with kernel(name, cwd=notebook_dir, env=_session(notebook_dir)) as (km, kc):
        (old,) = containers(admin, kernel=km.kernel_id)
        before = await run_json(kc, PROBE)
        assert before["python"] == [3, 11]
        assert (await run(kc, "x = 41"))["status"] == "ok"
        moved = await run(kc, f"%load_ext envpin\n%use_image {PY313} --restart", timeout=90)
        assert moved["status"] == "ok", moved
        assert f"moving this kernel into {PY313}" in moved["stdout"], moved
        assert f"this kernel now runs in {PY313}" in moved["stdout"], moved  # the successor's note reached us
        after = await run_json(kc, PROBE + " | {'version': __import__('sys').version}")
        assert after["dockerenv"] is True and after["python"] == [3, 13], after
        assert after["version"].startswith("3.13"), after
        # On the remote engine, and the old one is gone: the provisioner (on this loop) removes it once it exited,
        # just after the successor answered.
        (new,) = await async_wait_for(
            lambda: found if len(found := containers(admin, kernel=km.kernel_id)) == 1 else None,
            30,
            "the moved-from container to go",
        )
        assert new.id != old.id and after["image_id"] == admin.images.get(PY313).id == new.attrs["Image"]
        assert after["hostname"] == new.attrs["Config"]["Hostname"] != before["hostname"]
        assert containers(docker_client, kernel=km.kernel_id) == []  # nothing on this machine's engine
        assert (await run(kc, "x"))["ename"] == "NameError"  # a new kernel: the state stayed behind (--restart)
        # The pin is written beside the notebook, on this machine (the server's side), keyed by the notebook.
        pins = json.loads((notebook_dir / ".envpin.json").read_text())["notebooks"]
        assert pins["moves.ipynb"]["image_id"] == admin.images.get(PY313).id, pins
        # A second move goes back, through the new container's relay.
        back = await run(kc, f"%use_image {PY311}", timeout=90)
        assert back["status"] == "ok" and f"moving this kernel into {PY311}" in back["stdout"], back
        assert (await run_json(kc, PROBE))["python"] == [3, 11]
        await async_wait_for(lambda: len(containers(admin, kernel=km.kernel_id)) == 1, 30, "the old container to go")
        new_listeners = exposed_listeners() - before_listeners
        assert not new_listeners, f"new listeners on this machine: {listener_owners(new_listeners)}"
    _nothing_left(remote, admin, docker_client, km.kernel_id, volumes_before)


async def _run_all(kc, cells: list[str], timeout: float = 120) -> list[dict]:
    """Send every cell at once (JupyterLab's Run All); each one's reply status and output, once it is idle."""
    ids = [kc.execute(code) for code in cells]
    results = {i: {"status": None, "stdout": "", "stderr": "", "idle": False} for i in ids}
    deadline = time.monotonic() + timeout

    async def shell() -> None:
        while not all(r["status"] for r in results.values()):
            msg = await kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            result = results.get(msg["parent_header"].get("msg_id"))
            if result is not None and msg["msg_type"] == "execute_reply":
                result["status"] = msg["content"]["status"]

    async def iopub() -> None:
        while not all(r["idle"] for r in results.values()):
            msg = await kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            result = results.get(msg["parent_header"].get("msg_id"))
            if result is None:
                continue
            if msg["msg_type"] == "stream":
                result[msg["content"]["name"]] += msg["content"]["text"]
            elif msg["msg_type"] in ("display_data", "update_display_data"):
                result["stdout"] += msg["content"]["data"].get("text/plain", "") + "\n"
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                result["idle"] = True

    await asyncio.wait_for(asyncio.gather(shell(), iopub()), timeout)
    return [results[i] for i in ids]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_run_all_behind_a_remote_move_answers_every_cell(transport, remote, admin, spec, notebook_dir):
    name = spec(transport)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        where = "import sys; print('where', sys.version_info[:2])"
        cells = [where, "x = 1", f"%load_ext envpin\n%use_image {PY313} --restart", where, "x += 1", where]
        replies = await _run_all(kc, cells)
        assert [r["status"] for r in replies] == ["ok", "ok", "ok", "aborted", "aborted", "aborted"], replies
        assert "where (3, 11)" in replies[0]["stdout"]
        assert f"moving this kernel into {PY313}" in replies[2]["stdout"]
        for r in replies[3:]:
            assert f"not run: the kernel moved into {PY313}" in r["stderr"] and "Run it again" in r["stderr"], r
            assert "where" not in r["stdout"]
        assert (await run(kc, where))["stdout"].strip() == "where (3, 13)"
        await async_wait_for(lambda: len(containers(admin, kernel=km.kernel_id)) == 1, 30, "the old container to go")


async def test_a_move_of_a_kernel_holding_state_is_refused_without_restart_then_moves_after_a_restart(
    remote, admin, spec, notebook_dir
):
    name = spec("ssh")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        (before,) = containers(admin, kernel=km.kernel_id)
        await run(kc, "x = 1")
        res = await run(kc, f"%load_ext envpin\n%use_image {PY313}", timeout=60)
        assert res["status"] == "error" and res["ename"] == "UsageError", res
        flat = " ".join(res["evalue"].split())
        assert "holds state (x)" in flat and f"%use_image {PY313} --restart" in flat and "\n\n" not in res["evalue"]
        assert (await run_json(kc, PROBE))["python"] == [3, 11]  # it stayed, with its state
        assert (await run_json(kc, "x")) == 1
        assert [c.id for c in containers(admin, kernel=km.kernel_id)] == [before.id]
        # After a restart (a new container: the relay follows it) the kernel holds no state and moves.
        await asyncio.wait_for(km.restart_kernel(), 40)
        await kc.wait_for_ready(timeout=30)
        (restarted,) = containers(admin, kernel=km.kernel_id)
        assert restarted.id != before.id
        res = await run(kc, f"%load_ext envpin\n%use_image {PY313}", timeout=90)
        assert res["status"] == "ok" and f"moving this kernel into {PY313}" in res["stdout"], res
        assert (await run_json(kc, PROBE))["python"] == [3, 13]
        assert [c.id for c in containers(admin, kernel=km.kernel_id)] != [restarted.id]


def _stacks() -> str:
    """Where the control relay's threads are (for a failure's message)."""
    import sys
    import threading
    import traceback

    frames = sys._current_frames()
    return "".join(
        f"--- {t.name}\n" + "".join(traceback.format_stack(frames[t.ident]))
        for t in threading.enumerate()
        if t.name.startswith("envpin-control") and t.ident in frames
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_failed_remote_move_leaves_the_kernel_where_it_was_with_its_channels(
    transport, remote, admin, spec, notebook_dir
):
    """The new kernel never answers: the old one keeps its state and its channels, and moves later."""
    name = spec(transport)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        (before,) = containers(admin, kernel=km.kernel_id)
        await run(kc, "x = 7")
        res = await run(kc, f"%load_ext envpin\n%use_image {NO_IPYKERNEL} --restart", timeout=40)
        assert res["status"] == "error" and "has Python but not ipykernel" in " ".join(res["evalue"].split()), res
        assert (await run_json(kc, "x")) == 7 and (await run_json(kc, PROBE))["python"] == [3, 11]
        assert [c.id for c in containers(admin, kernel=km.kernel_id)] == [before.id]
        moved = await run(kc, f"%use_image {PY313} --restart", timeout=90)  # and it still moves
        assert moved["status"] == "ok" and f"moving this kernel into {PY313}" in moved["stdout"], moved
        assert (await run_json(kc, PROBE))["python"] == [3, 13]


#: Run in the kernel: what a hostile notebook can do to its control folder and to the relay's process.
HOSTILE = r"""
import os, signal, time
d = os.environ['ENVPIN_CONTROL_DIR']
def relays():
    out = []
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                cmd = open(f'/proc/{p}/cmdline', 'rb').read()
            except OSError:
                continue
            if b'request.json' in cmd and b'-c' in cmd:
                out.append(int(p))
    return out
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_hostile_kernel_cannot_stop_the_relay_or_the_server(transport, remote, admin, spec, notebook_dir):
    name = spec(transport)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        channel = km.provisioner._control
        assert type(channel).__name__ == "RemoteControlChannel"
        assert (await run(kc, HOSTILE))["status"] == "ok"
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:  # the event loop's responsiveness while the kernel attacks the relay
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        try:
            # Garbled, oversized, linked, special and hundreds of requests in a burst.
            attack = (
                "for i in range(300):\n"
                "    open(d + '/.t', 'wb').write(b'{not json' if i % 3 else os.urandom(200)); os.replace(d + '/.t', d + '/request.json')\n"
                "    time.sleep(0.002)\n"
                "open(d + '/.t', 'wb').write(b'x' * (70 * 1024)); os.replace(d + '/.t', d + '/request.json'); time.sleep(0.3)\n"
                "os.symlink('/etc/passwd', d + '/request.json'); time.sleep(0.3)\n"
                "os.mkfifo(d + '/request.json'); time.sleep(0.3)\n"
                "print('attacked', len(relays()))"
            )  # fmt: skip
            res = await run(kc, attack, timeout=60)
            assert res["status"] == "ok" and "attacked 1" in res["stdout"], res
            # The relay's own output, flooded: one line far over the bound, then lines in a burst.
            flood = (
                "import threading\n"
                "(pid,) = relays()\n"
                "def flood():\n"
                "    try:\n"
                "        with open(f'/proc/{pid}/fd/1', 'wb', buffering=0) as out:\n"
                "            out.write(b'R ' + b'A' * (4 * 1024 * 1024))\n"
                "    except OSError:\n"
                "        pass\n"
                "t = threading.Thread(target=flood, daemon=True); t.start(); t.join(10)\n"
                "time.sleep(1)\n"
                "print('flooded')"
            )  # fmt: skip
            res = await run(kc, flood, timeout=60)
            assert res["status"] == "ok" and "flooded" in res["stdout"], res
            # The flooded watcher's connection was dropped and a new one started; the flooded one may linger,
            # blocked on the pipe the kernel filled (it takes nothing more: the newest watcher owns the folder).
            assert channel.restarts >= 1, _stacks()
            # Killed, again and again: it is started anew each time (found each time), with a growing (bounded) pause.
            kill = (
                "found = []\n"
                "for _ in range(3):\n"
                "    deadline = time.time() + 40\n"
                "    while not relays() and time.time() < deadline: time.sleep(0.05)\n"
                "    found.append(len(relays()))\n"
                "    for p in relays(): os.kill(p, signal.SIGKILL)\n"
                "    time.sleep(0.2)\n"
                "print('killed', found)"
            )  # fmt: skip
            res = await run(kc, kill, timeout=150)
            assert res["status"] == "ok" and "killed [" in res["stdout"] and "0" not in res["stdout"], (
                res,
                channel.restarts,
                _stacks(),
            )
        finally:
            stop.set()
            await ticker
        assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f}s while the kernel attacked the relay"
        assert 1 <= channel.restarts <= 10, channel.restarts
        # Still served: the kernel's own image pins (an answer through a restarted relay), then a real move.
        back = await run(
            kc,
            "deadline = time.time() + 20\nwhile not relays() and time.time() < deadline: time.sleep(0.05)\nprint('relays', len(relays()))",
            timeout=60,
        )
        assert "relays 1" in back["stdout"], (back, channel.restarts, _stacks())
        started = time.monotonic()
        res = await run(kc, f"%load_ext envpin\n%use_image {PY311}", timeout=60)
        assert res["status"] == "ok" and f"pinned to {PY311}" in res["stdout"], res
        assert time.monotonic() - started < 45
        moved = await run(kc, f"%use_image {PY313} --restart", timeout=90)
        assert moved["status"] == "ok" and f"moving this kernel into {PY313}" in moved["stdout"], moved
        assert (await run_json(kc, PROBE))["python"] == [3, 13]
        marker = uuid.uuid4().hex
        assert marker in (await run(kc, f"print({marker!r})"))["stdout"]
    assert [c.name for c in admin.containers.list(all=True, ignore_removed=True)] == []
