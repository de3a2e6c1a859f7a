"""Engine addresses: which one the Docker CLI would pick, and what each kind needs (clients: ``docker_client``).

* ``unix://`` / ``npipe://``: the SDK as it is.
* ``ssh://[user@]host[:port][/socket]``: the remote engine's socket forwarded to
  a private local socket by one OpenSSH master per host (``ssh_tunnel``); the
  SDK talks ``unix://`` to it (timeouts apply, no ``docker`` CLI needed there,
  a Podman socket path works the same).
* ``tcp://host:port``: TLS when ``DOCKER_TLS_VERIFY`` is set or the address is on
  2376, with ``DOCKER_CERT_PATH`` (default ``~/.docker``).  requests would let
  ``REQUESTS_CA_BUNDLE`` replace the engine's CA (docker/docker-py#2433), so the
  client is built with a fixed API version, ``trust_env`` switched off, and
  only then asked to negotiate.

The current Docker context (``DOCKER_CONTEXT``, else ``currentContext`` in
``$DOCKER_CONFIG/config.json``) is read here, as the CLI reads it, so
``docker context use gpu-box`` moves envpin too.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from envpin.errors import EnvpinError


def docker_config_dir() -> str:
    return os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _context_name() -> str | None:
    name = os.environ.get("DOCKER_CONTEXT")
    if name:
        return name
    try:
        with open(os.path.join(docker_config_dir(), "config.json"), encoding="utf-8") as f:
            return json.load(f).get("currentContext") or None
    except (OSError, ValueError, AttributeError):
        return None


def _context_meta(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    path = os.path.join(docker_config_dir(), "contexts", "meta", digest, "meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        raise EnvpinError(
            f"The current Docker context '{name}' (DOCKER_CONTEXT or docker context use) is not defined here; "
            "run docker context ls, or set DOCKER_HOST."
        ) from None
    return meta if isinstance(meta, dict) else {}


def context_host() -> str | None:
    """The engine address of the current Docker context, None for ``default`` or none."""
    name = _context_name()
    if not name or name == "default":
        return None
    endpoint = (_context_meta(name).get("Endpoints") or {}).get("docker") or {}
    host = endpoint.get("Host")
    return str(host) if host else None


def context_tls_dir() -> str | None:
    name = _context_name()
    if not name or name == "default" or os.environ.get("DOCKER_HOST"):
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    path = os.path.join(docker_config_dir(), "contexts", "tls", digest, "docker")
    return path if os.path.isfile(os.path.join(path, "cert.pem")) else None


def wants_tls(address: str) -> bool:
    return address.startswith("tcp://") and (
        bool(os.environ.get("DOCKER_TLS_VERIFY")) or address.rstrip("/").endswith(":2376") or bool(context_tls_dir())
    )
