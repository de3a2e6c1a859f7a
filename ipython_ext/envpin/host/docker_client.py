"""The one way envpin reaches a Docker engine: its address, one client per address, failures in plain words.

Both sides use it: the server (through ``envpin_provisioner.engine``, which
adds calls off the event loop and per-engine facts) and the host entry points
of the kernel side (``envpin run``, ``envpin.use_image()``, executors,
fingerprint probes).  One client per engine address serves a whole process,
as dockerspawner shares one: a client owns a connection pool, and a client
per use was never closed.

The Docker SDK is imported lazily (an image that mounts the kernel side may
not have it; this module itself imports with the standard library only), and
its absence is one clear line.

The SDK reports an unreachable engine as a ``DockerException`` wrapping a
``requests`` error wrapping an ``OSError``; the useful fact (refused, missing
socket, permission denied, timeout) sits at the bottom of that chain.  It is
dug out here, once, and said with what to do.  ``DOCKER_HOST`` (and the other
``DOCKER_*`` variables) are honoured because ``docker.from_env`` reads them.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from envpin.errors import EnvpinError, MissingDependency
from envpin.internals import DOCKER

#: Seconds an API call may take before the engine counts as unresponsive (pulls and waits pass their own).
API_TIMEOUT = 30
PING_TIMEOUT = 5


class EngineUnavailable(EnvpinError):
    """No Docker engine answers, or this user may not talk to it.

    Every envpin path that needs the engine (a kernel start, ``envpin gc``, ``envpin run``, a
    ``ContainerExecutor``) says so within seconds instead of hanging.

    Fix: start the engine (``sudo systemctl start docker``; rootless Podman: ``systemctl --user
    start podman.socket``), add this user to the ``docker`` group, or point ``DOCKER_HOST`` at an
    engine this user may use; ``envpin doctor`` shows which engine envpin talks to.
    """


def engine_address(address: str | None = None) -> str:
    """The engine to talk to: ``address`` when given (a kernelspec's ``engine``), else as the Docker CLI picks it.

    ``DOCKER_HOST``, else the current Docker context (``DOCKER_CONTEXT``, or
    ``currentContext`` in ``~/.docker/config.json``), else the local socket.
    """
    if address:
        return address
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    from envpin.host import engine_urls as addresses

    return addresses.context_host() or "unix:///var/run/docker.sock"


def is_local_engine(address: str | None = None) -> bool:
    """True when the engine shares this machine's filesystem (a unix socket): bind mounts mean something."""
    return engine_address(address).startswith(("unix://", "npipe://"))


def address_of(client: Any) -> str:
    """The address of the engine ``client`` talks to, as envpin keys facts by it.

    ``unix:///path`` for a socket (docker-py gives every socket client the same
    ``base_url``, so the socket path is read from its adapter), else the URL.
    """
    socket_path = DOCKER.attr(DOCKER.attr(client.api, "api_custom_adapter", None), "unix_socket_path", None)
    if socket_path:
        from envpin.host import ssh_tunnel

        return ssh_tunnel.url_of_socket(socket_path) or f"unix://{socket_path}"
    return str(DOCKER.attr(client.api, "api_base_url", "?"))


def is_local_client(client: Any) -> bool:
    """True when ``client`` talks to an engine on this machine (a unix socket): its processes are in our /proc.

    A socket that is an SSH forward of a remote engine (``ssh_tunnel``) is not local.
    """
    return address_of(client).startswith("unix://")


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(exc))
        exc = nxt


def explain_engine_failure(exc: BaseException, address: str | None = None) -> EngineUnavailable:
    """The one-paragraph error for an engine that cannot be reached (refused, missing, forbidden, silent)."""
    address = re.sub(r"^https://", "tcp://", engine_address(address))  # a TLS client's base URL, as DOCKER_HOST has it
    if isinstance(exc, EnvpinError) and not isinstance(exc, EngineUnavailable):  # the SSH tunnel's own words
        return EngineUnavailable(str(exc))
    if address.startswith("ssh://") and "timed out" not in str(exc).lower():
        from envpin.host import ssh_tunnel

        silent = ssh_tunnel.silent_socket_message(address, _root_cause(exc))
        if silent:
            return EngineUnavailable(silent)
    if not address.startswith(("unix://", "npipe://")):  # another machine's: refused, or frozen (timed out)
        return EngineUnavailable(
            f"The Docker engine at {address} does not answer ({_root_cause(exc)}), so envpin cannot reach the "
            "kernel's container there. Check that the remote host is up and its engine running (ssh HOST docker "
            "info, or docker -H ADDRESS info), then restart the kernel; envpin doctor --engine ADDRESS shows more."
        )
    text = f"{exc} {_root_cause(exc)}".lower()
    if isinstance(_root_cause(exc), PermissionError) or "permission denied" in text:
        return EngineUnavailable(
            f"envpin cannot use the Docker engine at {address}: permission denied on its socket. "
            "Add this user to the 'docker' group (sudo usermod -aG docker $USER, then log in again) "
            "or point DOCKER_HOST at an engine this user may use."
        )
    if "timed out" in text or "timeout" in text:
        return EngineUnavailable(
            f"The Docker engine at {address} did not answer within {PING_TIMEOUT}s. "
            "Check that it is running and not overloaded (docker info), or point DOCKER_HOST at another engine."
        )
    return EngineUnavailable(
        f"No Docker engine answers at {address}, so envpin cannot start a container. "
        "Start the engine (sudo systemctl start docker, or sudo dockerd &; for rootless Podman: "
        "systemctl --user start podman.socket, then DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock), "
        "or set DOCKER_HOST to an engine that is running."
    )


def sdk() -> Any:
    """The ``docker`` package, or one clear line saying how to get it."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise MissingDependency(
            "This needs the Docker SDK for Python, which is not installed here: pip install docker "
            "(it comes with envpin: pip install envpin)."
        ) from None
    return docker


def engine_errors() -> tuple[type[BaseException], ...]:
    """What a Docker call raises when the engine fails or cannot be reached (not a bug of ours)."""
    docker = sdk()
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException, EngineUnavailable)


def connect(timeout: float = API_TIMEOUT, address: str | None = None) -> Any:
    """A new client for ``address`` (default: the engine the environment names), checked with a ping.  Blocking.

    ``ssh://`` goes through this process's SSH master (``envpin.host.ssh_tunnel``), ``tcp://`` with TLS
    through ``tls_client`` (which keeps ``REQUESTS_CA_BUNDLE`` out of it).
    """
    docker = sdk()

    chosen = engine_address(address)
    try:
        client = client_for(chosen, timeout)
    except (docker.errors.DockerException, EnvpinError) as exc:
        raise explain_engine_failure(exc, chosen) from exc
    try:
        DOCKER.assign(client.api, "api_timeout", PING_TIMEOUT)  # the SDK reads it at each request
        client.ping()
    except engine_errors() as exc:  # refused, missing socket, permission, timeout: "not reachable"
        client.close()
        raise explain_engine_failure(exc, chosen) from exc
    finally:
        DOCKER.assign(client.api, "api_timeout", timeout)
    return client


#: The API version a TLS client starts with, before it negotiates (no request may precede trust_env=False).
_BOOT_API_VERSION = "1.41"


def tls_client(address: str, timeout: float) -> Any:
    """A TLS client of ``address`` that trusts the engine's CA only (never ``REQUESTS_CA_BUNDLE``)."""
    import docker
    import docker.tls

    from envpin.host import engine_urls

    cert_dir = engine_urls.context_tls_dir() or os.environ.get("DOCKER_CERT_PATH") or engine_urls.docker_config_dir()
    files = {n: os.path.join(cert_dir, f"{n}.pem") for n in ("ca", "cert", "key")}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise EnvpinError(
            f"The TLS engine at {address} needs ca.pem, cert.pem and key.pem in {cert_dir} "
            f"(DOCKER_CERT_PATH); missing: {', '.join(missing)}."
        )
    tls = docker.tls.TLSConfig(client_cert=(files["cert"], files["key"]), ca_cert=files["ca"], verify=True)
    base_url = address.replace("tcp://", "https://", 1)

    def made(version: str) -> Any:
        client = docker.DockerClient(base_url=base_url, tls=tls, version=version, timeout=timeout)
        client.api.trust_env = False  # before the first request: the engine's CA, not REQUESTS_CA_BUNDLE's
        return client

    # The SDK's own negotiation ("auto") is a request made inside the constructor, before trust_env can be
    # switched off; so ask /version with a fixed old version, then make the client with the engine's.
    probe = made(_BOOT_API_VERSION)
    try:
        version = str(probe.version().get("ApiVersion") or _BOOT_API_VERSION)
    finally:
        probe.close()
    return made(version)


def client_for(address: str, timeout: float) -> Any:
    """A Docker SDK client of ``address`` (not pinged).  Blocking (an SSH connection may be made)."""
    import docker

    from envpin.host import engine_urls

    if address.startswith("ssh://"):
        from envpin.host import ssh_tunnel

        master = ssh_tunnel.master_for(address)
        return docker.DockerClient(base_url=f"unix://{master.engine_socket}", version="auto", timeout=timeout)
    if engine_urls.wants_tls(address):
        return tls_client(address, timeout)
    if address.startswith(("unix://", "npipe://", "tcp://", "http://")):
        return docker.DockerClient(base_url=address, version="auto", timeout=timeout)
    raise EnvpinError(
        f"'{address}' is not an engine address envpin knows: use unix:///path, ssh://[USER@]HOST or tcp://HOST:2376."
    )


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def shared(address: str | None = None) -> Any:
    """This process's client for ``address`` (default: the environment's engine), connected and pinged once.  Blocking."""
    address = engine_address(address)
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = connect(address=address)
        return client


def reset() -> None:
    """Forget every shared client (tests that restart or switch engines)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
