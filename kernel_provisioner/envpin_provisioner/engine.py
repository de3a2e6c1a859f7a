"""Connect to the Docker engine, turning connection failures into plain words.

The Docker SDK reports an unreachable engine as a ``DockerException`` wrapping
a ``requests`` error wrapping an ``OSError``; the useful fact (refused, missing
socket, permission denied, timeout) sits at the bottom of that chain.  We dig
it out and say what to do.  ``DOCKER_HOST`` (and the other ``DOCKER_*``
variables) are honoured because ``docker.from_env`` reads them.
"""

from __future__ import annotations

import os

import docker
import docker.errors

from .errors import EngineUnavailable

#: Seconds an API call may take before we call the engine unresponsive.  Pulls
#: and waits pass their own timeouts.
API_TIMEOUT = 30
PING_TIMEOUT = 5


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_local_engine() -> bool:
    """True when the engine shares this machine's filesystem (a unix socket).

    Bind mounts (the notebook folder, the ipc channel directory, envpin's own
    code) only mean something when the engine runs here.
    """
    return engine_address().startswith(("unix://", "npipe://"))


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(exc))
        exc = nxt


def explain_engine_failure(exc: BaseException) -> EngineUnavailable:
    """Build the one-paragraph error for an engine that cannot be reached."""
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
        "Start the engine (sudo systemctl start docker, or sudo dockerd &), "
        "or set DOCKER_HOST to an engine that is running."
    )


def connect(timeout: float = API_TIMEOUT) -> docker.DockerClient:
    """A client for the engine named by the environment, checked with a ping.

    Blocking: call it from a worker thread in async code.
    """
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise explain_engine_failure(exc) from exc
    try:
        client.api.timeout = PING_TIMEOUT
        client.ping()
    except Exception as exc:  # requests/urllib3/OSError all mean "not reachable"
        client.close()
        raise explain_engine_failure(exc) from exc
    finally:
        client.api.timeout = timeout
    return client
