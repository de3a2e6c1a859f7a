"""The remote-host harness itself: another machine's Docker engine, reached only over SSH or TCP+TLS.

Before envpin's remote-engine tests can mean anything, the "remote host" they
run against has to be one: a different engine (its own ID), reachable from
here only through its address (SSH with keys, TLS with certificates made for
it), on a machine that does not see this one's checkout, venvs or notebook
folders, that exposes nothing on this machine's addresses, and that leaves
nothing behind when it stops.  Each of those is asserted here, with the Docker
SDK as envpin will use it.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from testutils import PY311, REPO, wait_for
from testutils.remote_host import USER, RemoteHost, exposed_listeners, listener_owners, tcp_listeners

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"
)

#: docker-py's SSH transport needs paramiko importable even when it shells out to OpenSSH (docker[ssh]).
SSH_TRANSPORTS = ("ssh", "ssh-paramiko")


@pytest.fixture(scope="module")
def remote(docker_client, before_listeners):
    with RemoteHost("rhtest", images=[PY311]) as host:
        yield host


@pytest.fixture
def ssh_env(remote, monkeypatch):
    """The client side's environment (HOME with .ssh/, PATH with its ssh): docker-py reads os.environ."""
    for key, value in remote.client_env("ssh").items():
        monkeypatch.setenv(key, value)


def _needs_paramiko() -> None:
    """docker-py refuses ssh:// without paramiko, even to shell out to OpenSSH: envpin depends on docker[ssh].

    A failure, not a skip: a machine without it cannot run envpin's SSH transport either.
    """
    try:
        import paramiko  # noqa: F401
    except ImportError:
        pytest.fail("paramiko is missing: install envpin's dependencies (docker[ssh]) into this venv")


def _client(remote, transport):
    if transport != "tls":
        _needs_paramiko()
    return remote.docker_client(transport)


@pytest.mark.parametrize("transport", [*SSH_TRANSPORTS, "tls"])
def test_the_sdk_reaches_another_engine(remote, docker_client, ssh_env, transport):
    client = _client(remote, transport)
    admin = remote.docker_client("admin")
    try:
        info = client.info()
        assert info["ID"] == admin.info()["ID"], "the client reached some engine, not the remote host's"
        assert info["ID"] != docker_client.info()["ID"], "the remote engine is this machine's engine"
        assert info["Name"] == remote.hostname
        assert info["DockerRootDir"] == "/var/lib/docker"
        assert PY311 in {t for image in client.images.list() for t in image.tags}
    finally:
        client.close()
        admin.close()


@pytest.mark.parametrize("use_ssh_client", [True, False], ids=["openssh", "paramiko"])
def test_ssh_config_alias_is_honoured(remote, docker_client, ssh_env, use_ssh_client):
    """``DOCKER_HOST=ssh://ALIAS``: host name, user and key come from ~/.ssh/config, the host key from known_hosts."""
    import docker

    _needs_paramiko()
    client = docker.from_env(environment={"DOCKER_HOST": f"ssh://{remote.hostname}"}, use_ssh_client=use_ssh_client)
    try:
        assert client.info()["Name"] == remote.hostname
    finally:
        client.close()


def test_sshd_takes_keys_only(remote, tmp_path):
    """No password, no root, no other key: a client without the test's key is refused."""
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    base = ["/usr/bin/ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    base += ["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes"]
    for who, key in ((USER, other_key), ("root", remote.client_home / ".ssh" / "id_ed25519")):
        done = subprocess.run(
            [*base, "-i", str(key), f"{who}@{remote.address}", "true"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 255 and "Permission denied (publickey)" in done.stderr, (who, done.stderr)
    ok = subprocess.run([str(remote.ssh_bin), remote.hostname, "id", "-nG"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "docker" in ok.stdout.split(), ok.stderr


def test_tls_needs_the_client_certificate(remote, monkeypatch):
    """--tlsverify: the CA alone does not get in; with the client certificate it does, whatever REQUESTS_CA_BUNDLE says."""
    import docker
    import docker.tls
    import requests.exceptions

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # as on these machines
    anonymous = docker.DockerClient(
        base_url=remote.tcp_url,
        tls=docker.tls.TLSConfig(ca_cert=str(remote.cert_path / "ca.pem"), verify=True),
        version="1.41",  # no request before trust_env is off: the failure must be the certificate's
        timeout=10,
    )
    anonymous.api.trust_env = False
    with pytest.raises(requests.exceptions.ConnectionError, match="certificate"):
        anonymous.ping()
    log = remote.log_dir / "dockerd.log"
    wait_for(lambda: "didn't provide a certificate" in log.read_text(), 10, "dockerd to log the refused client")
    client = remote.docker_client("tls")
    try:
        assert client.ping()
    finally:
        client.close()


def test_a_container_runs_there_not_here(remote, docker_client, ssh_env):
    """The test image runs on the remote engine; this machine's engine never sees the container."""
    client = _client(remote, "ssh")
    marker = uuid.uuid4().hex
    try:
        c = client.containers.run(
            PY311,
            [
                "python",
                "-c",
                "import os, socket, sys; print(socket.gethostname(), sys.version_info[:2], os.path.exists('/work'))",
            ],
            labels={"envpin-remote-test": marker},
            detach=True,
        )
        try:
            wait_for(lambda: c.reload() or c.status == "exited", 60, "the container on the remote engine to exit")
            assert c.wait(timeout=30)["StatusCode"] == 0
            out = c.logs().decode()
            assert "(3, 11)" in out and out.strip().endswith("False"), out
            assert not docker_client.containers.list(
                all=True, filters={"label": f"envpin-remote-test={marker}"}, ignore_removed=True
            )
        finally:
            c.remove(force=True)
    finally:
        client.close()


def test_the_remote_host_does_not_see_this_machine(remote, tmp_path):
    """Checkout, venv, root's home and the notebook folders (tmp) are not there; a bind mount of them fails."""
    import docker.errors
    import docker.types

    (tmp_path / "notebook.ipynb").write_text("{}")
    for path in (REPO, REPO / "ipython_ext", tmp_path, "/root/.cache"):
        done = remote.run(["test", "-e", str(path)], as_user=False)
        assert done.returncode == 1, f"{path} is visible on the remote host"
    for path, expected in (("/work", []), ("/tmp", []), ("/home", [USER]), ("/root", [])):
        listing = remote.run(["ls", "-A", path], as_user=False, capture_output=True, text=True)
        assert listing.stdout.split() == expected, f"{path} on the remote host holds {listing.stdout.split()}"
    client = remote.docker_client("admin")
    try:
        source = str(REPO / "ipython_ext" / "envpin")
        with pytest.raises(docker.errors.APIError, match="bind source path does not exist"):
            client.containers.create(PY311, ["true"], mounts=[docker.types.Mount("/opt/envpin", source, type="bind")])
    finally:
        client.close()


def test_listeners_are_inside_only(remote, before_listeners):
    """This machine exposes nothing new; the remote host listens on its own address: sshd and TLS dockerd."""
    new = exposed_listeners() - before_listeners
    assert not new, f"new listeners on this machine's addresses: {listener_owners(new)}"
    assert tcp_listeners(remote.pid) == {(remote.address, 22), (remote.address, 2376)}


def test_stop_leaves_nothing(docker_client):
    """A second host with a running container: after stop(), no process, namespace, mount, cgroup or folder."""
    marker = uuid.uuid4().hex
    local_before = {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)}
    host = RemoteHost("rhstop", images=[PY311])
    host.start()
    try:
        client = host.docker_client("admin")
        c = client.containers.run(PY311, ["python", "-c", f"import time; time.sleep(600)  # {marker}"], detach=True)
        wait_for(lambda: c.reload() or c.status == "running", 30, "the remote container to run")
        client.close()
        assert _processes_with(marker), "the remote container's process is not on this kernel"
        assert host.leftovers(), "leftovers() sees nothing of a running host: it cannot be trusted after stop()"
    finally:
        host.stop()
    assert host.leftovers() == []
    assert _processes_with(marker) == []
    # Nothing new on this machine's engine (a container an earlier test's clean-up removes meanwhile may go).
    assert {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)} - local_before == set()
    assert docker_client.ping()


def _processes_with(marker: str) -> list[str]:
    found = []
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                with open(f"/proc/{proc}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(proc)
            except OSError:
                continue
    return found
