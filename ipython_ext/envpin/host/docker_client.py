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


def engine_address() -> str:
    """The engine this process talks to, as the Docker SDK and CLI pick it: ``DOCKER_HOST``, else the local socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_local_engine() -> bool:
    """True when the engine shares this machine's filesystem (a unix socket): bind mounts mean something."""
    return engine_address().startswith(("unix://", "npipe://"))


def address_of(client: Any) -> str:
    """The address of the engine ``client`` talks to, as envpin keys facts by it.

    ``unix:///path`` for a socket (docker-py gives every socket client the same
    ``base_url``, so the socket path is read from its adapter), else the URL.
    """
    socket_path = DOCKER.attr(DOCKER.attr(client.api, "api_custom_adapter", None), "unix_socket_path", None)
    return f"unix://{socket_path}" if socket_path else str(DOCKER.attr(client.api, "api_base_url", "?"))


def is_local_client(client: Any) -> bool:
    """True when ``client`` talks to an engine on this machine (a unix socket): its processes are in our /proc."""
    return address_of(client).startswith("unix://")


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(exc))
        exc = nxt


def explain_engine_failure(exc: BaseException) -> EngineUnavailable:
    """The one-paragraph error for an engine that cannot be reached (refused, missing, forbidden, silent)."""
    address = engine_address()
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


def connect(timeout: float = API_TIMEOUT) -> Any:
    """A new client for the engine the environment names, checked with a ping.  Blocking."""
    docker = sdk()
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise explain_engine_failure(exc) from exc
    try:
        DOCKER.assign(client.api, "api_timeout", PING_TIMEOUT)  # the SDK reads it at each request
        client.ping()
    except engine_errors() as exc:  # refused, missing socket, permission, timeout: "not reachable"
        client.close()
        raise explain_engine_failure(exc) from exc
    finally:
        DOCKER.assign(client.api, "api_timeout", timeout)
    return client


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def shared() -> Any:
    """This process's client for the engine the environment names (connected and pinged once).  Blocking."""
    address = engine_address()
    with _clients_lock:
        client = _clients.get(address)
        if client is None:
            client = _clients[address] = connect()
        return client


def reset() -> None:
    """Forget every shared client (tests that restart or switch engines)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
