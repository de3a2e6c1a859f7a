"""Hostile review of ``envpin.DaskCluster``: only the holder of the cluster's key reaches its scheduler and workers.

Dask ships tasks as pickles and its scheduler unpickles submitted graphs, so whoever can talk to the scheduler
runs code in the workers.  Loopback is no boundary: any local user, any container on the host network and
another notebook's kernel reach 127.0.0.1.  Each cluster therefore has its own key and certificate, required on
every connection (mutual TLS).  Here, with a real cluster of containers of the Dask test image:

* clients without that certificate (plain TCP, TLS without a certificate, TLS with another cluster's) are
  refused in the handshake, within a bounded time, and nothing they send is answered;
* every socket of the cluster is on 127.0.0.1; the key is in no command line, environment, label or host folder,
  and only the container's user can read its copy; the dashboard has no proxy route;
* a task on a worker finds no engine socket to reach; the containers carry envpin's signed labels, the engine's
  bounds, and are gone after ``close()``;
* a *different* Containerized Python kernel on the host network, which reaches the cluster's loopback, cannot
  get a single Dask message through.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from envpin import names
from envpin.host import labels
from testutils.kernels import kernel, run

DASK = "envpin-test/dask:latest"
#: How long a refused connection may take, at most (the client's own timeout is 5 s).
BOUND = 15


@pytest.fixture
def cluster(docker_client):
    from envpin.adapters.dask_cluster import ContainerCluster

    made = ContainerCluster(1, image=DASK)
    try:
        yield made
    finally:
        made.close()
    assert _containers(docker_client, made) == []


def _containers(docker_client, cluster) -> list:
    label = f"{names.LABEL_DASK_CLUSTER}={cluster.name}"
    return docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _worker_addresses(cluster) -> list[str]:
    """Every worker's and nanny's address (each listens)."""
    from distributed import Client

    with Client(cluster) as client:
        workers = client.scheduler_info()["workers"]
    return sorted({*workers, *(w["nanny"] for w in workers.values() if w.get("nanny"))})


def _raw_answer(address: str, context: ssl.SSLContext | None) -> str:
    """What the server at ``address`` sends back to a hello in Dask's framing: its bytes (hex), or the error."""
    host, port = _host_port(address)
    try:
        raw = socket.create_connection((host, port), timeout=5)
    except OSError as exc:
        return f"unreachable:{type(exc).__name__}"  # not a refusal by TLS: the test would prove nothing
    try:
        with raw:
            sock = context.wrap_socket(raw) if context is not None else raw
            # Dask's frames: a count of frames, their lengths, then a msgpack {"op": "identity"}.
            sock.sendall(bytes.fromhex("01000000000000000f00000000000000") + b"\x81\xa2op\xa8identity\x00")
            sock.settimeout(5)
            return "data:" + sock.recv(4096).hex()
    except (OSError, ssl.SSLError) as exc:
        return f"error:{type(exc).__name__}"


def _refused(answer: str) -> bool:
    """No Dask reply (the port was reached): an error, the connection closed (nothing), or a TLS alert (0x15)."""
    return answer.startswith("error:") or answer in ("data:", "") or answer.startswith("data:15")


def test_clients_without_the_clusters_certificate_are_refused_in_the_handshake(cluster):
    from distributed import Client
    from distributed.security import Security

    address = cluster.scheduler_address
    assert address.startswith("tls://127.0.0.1:"), address
    attempts = {
        "plain tcp": lambda: Client(address.replace("tls://", "tcp://"), timeout=5),
        "tls without a certificate": lambda: Client(address, timeout=5),
        "another cluster's certificate": lambda: Client(address, security=Security.temporary(), timeout=5),
    }
    for what, attempt in attempts.items():
        started = time.monotonic()
        with pytest.raises((OSError, TimeoutError, ValueError, TypeError)):
            attempt().close()
        assert time.monotonic() - started < BOUND, what

    # Below Dask's client: the scheduler and every worker (and nanny) refuse a foreign or missing certificate.
    foreign = Security.temporary().get_connection_args("client")["ssl_context"]
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
    for target in [address, *_worker_addresses(cluster)]:
        for context in (None, foreign, anonymous):
            answer = _raw_answer(target, context)
            assert _refused(answer), (target, answer)

    # The holder of the key is still served, in the image.
    with Client(cluster) as client:
        assert client.submit(os.getenv, "ENVPIN_IMAGE", pure=False).result(timeout=60) == DASK


def test_listeners_on_loopback_only_the_key_in_no_command_line_environment_label_or_host_folder(cluster, docker_client):
    key = cluster.security.tls_worker_key
    secret = key.strip().splitlines()[1]  # a line of the key's body
    pids: set[int] = set()
    for container in _containers(docker_client, cluster):
        assert secret not in json.dumps(container.attrs)  # labels, environment, command, mounts
        inside = container.exec_run(["sh", "-c", "cat /proc/*/cmdline /proc/*/environ 2>/dev/null"]).output
        assert secret.encode() not in inside
        listing = container.exec_run(["ls", "-land", names.CONTAINER_DASK_TLS, f"{names.CONTAINER_DASK_TLS}/key.pem"])
        uid, gid = container.attrs["Config"]["User"].split(":")
        modes = [line.split()[:4] for line in listing.output.decode().splitlines()]
        assert modes == [["dr-x------", "2", uid, gid], ["-r--------", "1", uid, gid]], modes
        host = container.attrs["HostConfig"]
        assert host["PidsLimit"] == 1024 and host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["Privileged"] is False
        mounts = {(m["Destination"], m["RW"]) for m in container.attrs["Mounts"]}
        assert mounts == {(f"{names.CONTAINER_PYTHONPATH}/envpin", False)}, mounts  # no engine socket, no folder
        image_labels = docker_client.images.get(container.attrs["Image"]).labels
        assert labels.made_by_envpin(container.labels, image_labels)  # envpin gc's proof of ownership
        pids |= {int(row[1]) for row in container.top(ps_args="-eo user,pid")["Processes"]}
    assert secret not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in subprocess.run(["ps", "eww", "-eo", "args"], capture_output=True, text=True).stdout

    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    listening = [
        line.split()[3] for line in out.splitlines() if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids
    ]
    assert len(listening) >= 3 and all(a.startswith("127.0.0.1:") for a in listening), listening

    link = cluster.dashboard_link
    assert link.startswith("http://127.0.0.1:"), link
    base = link.rsplit("/status", 1)[0]
    with urllib.request.urlopen(link, timeout=10) as page:
        assert page.status == 200
    with pytest.raises(urllib.error.HTTPError) as no_proxy:  # Dask's proxy route (jupyter-server-proxy) is off
        urllib.request.urlopen(f"{base}/proxy/22/127.0.0.1/", timeout=10)
    assert no_proxy.value.code == 404


ENGINE_PROBE = """
def engine_probe():
    import os, socket
    paths = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
             "/run/podman/podman.sock", "/var/run/podman/podman.sock"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(runtime + "/podman/podman.sock")
    present = [p for p in paths if os.path.exists(p)]
    with open("/proc/net/unix") as fh:
        abstract = [line.split()[-1] for line in fh.read().splitlines()[1:] if line.split()[-1].startswith("@")]
    engine_abstract = [a for a in abstract if any(w in a for w in ("docker", "containerd", "podman"))]
    tcp = []
    for port in (2375, 2376):
        s = socket.socket()
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            tcp.append(port)
        s.close()
    return {"present": present, "abstract": engine_abstract, "tcp": tcp,
            "docker_host": os.environ.get("DOCKER_HOST"), "uid": os.getuid()}
"""
_probe: dict = {"__name__": "envpin_dask_hostile_probe"}  # a module nobody can import: shipped by value
exec(ENGINE_PROBE, _probe)


def test_a_task_on_a_worker_finds_no_engine_to_reach(cluster):
    from distributed import Client

    with Client(cluster) as client:
        found = client.submit(_probe["engine_probe"], pure=False).result(timeout=60)
    assert found == {"present": [], "abstract": [], "tcp": [], "docker_host": None, "uid": os.getuid() or 65534}


KERNEL_ATTACK = """
import json, socket, ssl
def answer(address, tls):
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    try:
        raw = socket.create_connection((host, int(port)), timeout=5)
    except OSError as exc:
        return "unreachable:" + type(exc).__name__
    try:
        sock = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(raw)
        sock.sendall(bytes.fromhex("0100000000000000" "0f00000000000000") + b"\\x81\\xa2op\\xa8identity\\x00")
        sock.settimeout(5)
        return "data:" + sock.recv(4096).hex()
    except (OSError, ssl.SSLError) as exc:
        return "error:" + type(exc).__name__
from distributed import Client
def dask_client(address):
    try:
        Client(address, timeout=5).close()
        return "connected"
    except Exception as exc:
        return "error:" + type(exc).__name__
attack = {
    "tcp": answer(ADDRESS, False),
    "tls": answer(ADDRESS, True),
    "client tls": dask_client(ADDRESS),
    "client tcp": dask_client(ADDRESS.replace("tls://", "tcp://")),
}
print(json.dumps(attack))
"""


async def test_another_containerized_kernel_on_the_host_network_cannot_reach_the_cluster(
    install_kernelspec, notebook_dir, docker_client
):
    """A kernel of the same image on the host network reaches the cluster's loopback ports, and nothing more."""
    from envpin.adapters.dask_cluster import ContainerCluster

    name = install_kernelspec(DASK, network_mode="host")
    target = ContainerCluster(1, image=DASK)
    try:
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            code = f"ADDRESS = {target.scheduler_address!r}\n" + KERNEL_ATTACK
            started = time.monotonic()
            reply = await run(kc, code, timeout=120)
            took = time.monotonic() - started
    finally:
        target.close()
    assert reply["status"] == "ok", reply
    attack = json.loads(reply["stdout"].strip().splitlines()[-1])
    assert _refused(attack["tcp"]) and _refused(attack["tls"]), attack
    assert attack["client tls"].startswith("error:") and attack["client tcp"].startswith("error:"), attack
    assert took < 4 * BOUND, took
