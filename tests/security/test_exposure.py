"""Nothing exposed: no listener on a non-loopback address, no key in sight, no privileges, only the configured mounts."""

from __future__ import annotations

import json
import os
import subprocess

from testutils import PY311, containers, flat, program
from testutils.kernels import kernel, run

_LISTEN = "0A"


def listeners(proc_net_dir: str = "/proc/net") -> set[tuple[str, int]]:
    """(address hex, port) of TCP sockets in LISTEN state, IPv4 and IPv6."""
    found = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = open(os.path.join(proc_net_dir, name)).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == _LISTEN:
                addr, port = local.split(":")
                found.add((addr, int(port, 16)))
    return found


def non_loopback(socks):
    loopback = {"0100007F", "00000000000000000000000001000000"}
    return {s for s in socks if s[0] not in loopback and not s[0].endswith("0100007F")}


async def test_no_listener_no_key_no_privileges(install_kernelspec, notebook_dir, docker_client, tmp_path):
    before = non_loopback(listeners())
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        # A job worker too, so both kinds of process are running.
        res = await run(kc, "import envpin; print(envpin.submit(abs, -1).result(60))")
        assert res["stdout"].strip() == "1", res
        key = km.session.key.decode()
        # Nothing new listens on a non-loopback address on the host ...
        assert non_loopback(listeners()) - before == set()  # (one of the host's own may close meanwhile)
        (container,) = containers(docker_client, kernel=km.kernel_id, running=True)
        # ... nor anywhere inside the kernel's container (kernel and worker processes).
        # (ipykernel may listen on the container's own loopback, which nothing outside it can reach.)
        inside = container.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output.decode().splitlines()
        socks = {tuple(l.split()[1].split(":")) for l in inside if l.split()[3:4] == [_LISTEN]}
        assert not non_loopback({(a, int(p, 16)) for a, p in socks})
        # The key is in no command line, environment or label, on the host or in the container.
        assert key not in json.dumps(container.attrs)
        assert key not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert key not in container.exec_run(
            ["sh", "-c", "cat /proc/*/cmdline /proc/*/environ 2>/dev/null"]
        ).output.decode(errors="replace")
        host = container.attrs["HostConfig"]
        assert host["Privileged"] is False and "no-new-privileges" in host["SecurityOpt"]
        assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
        # Only the channels (connection file read-only, socket and control folders), envpin's package
        # (read-only) and the notebook folder: not the channel directory itself, no Docker socket.
        mounts = {(m["Destination"], m["RW"]) for m in container.attrs["Mounts"]}
        channel_dir = os.path.dirname(km.connection_file)
        assert mounts == {
            (km.connection_file, False),
            (f"{channel_dir}/sock", True),
            (f"{channel_dir}/control", True),
            ("/opt/envpin/python/envpin", False),
            (str(notebook_dir), True),
        }
        assert not any("docker.sock" in m["Source"] for m in container.attrs["Mounts"])
        channel = os.path.dirname(km.connection_file)
        assert os.stat(channel).st_mode & 0o777 == 0o700 and os.stat(km.connection_file).st_mode & 0o777 == 0o600


def test_envpin_launch_refuses_to_mount_a_shared_runtime_folder(tmp_path):
    """The fallback launcher with ipc would mount the connection file's folder: not one holding other kernels' keys."""
    import sys

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "kernel-other.json").write_text(json.dumps({"key": "someone else's key"}))
    mine = runtime / "kernel-mine.json"
    mine.write_text(json.dumps({"transport": "ipc", "ip": str(runtime / "kernel-mine-ipc"), "key": "k"}))
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "launch", "--image", "envpin-test/py311", "-f", str(mine)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "kernel-other.json" in out.stderr and "tcp transport" in out.stderr, out.stderr


async def test_tcp_kernels_speak_only_curve_to_other_containers(docker_client, install_kernelspec, notebook_dir):
    """On the bridge, another container reaches the kernel's ports: without its CurveZMQ key it gets nothing."""
    name = install_kernelspec(PY311, transport="tcp")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        assert km.curve_publickey  # the channels are CurveZMQ-encrypted
        (container,) = containers(docker_client, kernel=km.kernel_id)
        address = container.attrs["NetworkSettings"]["IPAddress"]
        url = f"tcp://{address}:{km.shell_port}"
        out = docker_client.containers.run(
            PY311, ["python3", "-c", program("plain_peer"), url], remove=True, network_mode="bridge"
        )
        # The TCP connection is made (the port is reachable on the bridge), the ZMTP handshake is refused.
        assert out.decode().strip() == "connected-refused"
        assert (await run(kc, "1"))["status"] == "ok"  # and the kernel is unharmed


async def test_tcp_refuses_an_image_whose_kernel_cannot_encrypt(docker_client, install_kernelspec, notebook_dir):
    """An ipykernel without CurveZMQ would open plaintext ports to every container: no start, a clear error.

    The image's answer to the CurveZMQ probe is seeded into envpin's per-image cache (no test image has an
    ipykernel old enough); everything else is real, and no container may be left.
    """
    import pytest
    from jupyter_client.manager import AsyncKernelManager

    from envpin_provisioner.images import pulling

    image_id = docker_client.images.get(PY311).id
    name = install_kernelspec(PY311, transport="tcp")

    pulling.remember_curve_support(docker_client, image_id, False)
    try:
        km = AsyncKernelManager(kernel_name=name)
        with pytest.raises(Exception) as refused:
            await km.start_kernel(cwd=str(notebook_dir))
        assert "cannot encrypt its channels" in flat(refused.value)
        await km.cleanup_resources()
    finally:
        pulling.reset()
    assert not [
        c
        for c in docker_client.containers.list(all=True, ignore_removed=True)
        if c.labels.get("envpin.kernel-id") == km.kernel_id
    ]
