"""``ssh://`` engine URLs: Docker's (``ssh://user@host``) and Podman's, which carry the socket path to forward."""

from __future__ import annotations

import pytest

from envpin.errors import EnvpinError
from envpin.host import docker_client, ssh_tunnel

PODMAN = "ssh://alice@gpu-box/run/user/1000/podman/podman.sock"


def test_a_podman_url_names_the_remote_socket_to_forward():
    target = ssh_tunnel.parse(PODMAN)
    assert (target.user, target.host, target.port) == ("alice", "gpu-box", None)
    assert target.remote_socket == "/run/user/1000/podman/podman.sock"
    assert target.destination == PODMAN  # the path stays: it is a different engine than the host's Docker
    assert target.ssh_args() == ["-l", "alice", "--", "gpu-box"]
    with_port = ssh_tunnel.parse("ssh://alice@gpu-box:2222/run/podman/podman.sock")
    assert with_port.port == 2222 and with_port.remote_socket == "/run/podman/podman.sock"


def test_dockers_url_forwards_dockers_socket():
    target = ssh_tunnel.parse("ssh://alice@gpu-box")
    assert target.remote_socket == ssh_tunnel.DEFAULT_REMOTE_SOCKET
    assert target.destination == "ssh://alice@gpu-box"
    assert ssh_tunnel.parse(PODMAN) != target  # one SSH master per (host, socket): two engines, two clients


@pytest.mark.parametrize(
    "url",
    ["ssh://-oProxyCommand=x/run/p.sock", "ssh://alice@gpu-box/run/p.sock?x=1", "tcp://gpu-box/run/p.sock"],
)
def test_odd_urls_are_refused(url):
    with pytest.raises(EnvpinError):
        ssh_tunnel.parse(url)


def test_a_silent_podman_socket_says_which_unit_to_enable():
    cause = ConnectionError("Connection aborted.")
    message = docker_client.explain_engine_failure(cause, PODMAN)
    flat = " ".join(str(message).split())
    assert "Nothing answers at /run/user/1000/podman/podman.sock on gpu-box" in flat
    assert "systemctl --user enable --now podman.socket" in flat and "loginctl enable-linger alice" in flat
    assert "\n\n" not in str(message)
    # Docker's default path keeps Docker's words (the remote engine is down, not a socket unit missing).
    docker_words = str(docker_client.explain_engine_failure(cause, "ssh://alice@gpu-box"))
    assert "podman.socket" not in docker_words and "does not answer" in docker_words
    assert ssh_tunnel.silent_socket_message("ssh://alice@gpu-box", cause) is None
