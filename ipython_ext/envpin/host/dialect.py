"""Which engine answers, and how envpin's containers are created on it: Docker, or Podman.

envpin talks to its engine through the Docker SDK.  Podman serves the same
API (``podman system service``, rootless at
``$XDG_RUNTIME_DIR/podman/podman.sock``), with gaps that matter to envpin.
Every container envpin makes goes through ``create`` below, which closes
them, so the rest of the code writes one set of options:

* **User namespace.**  Rootless Podman maps container uid 0 to the user and
  every other uid to a subordinate id: a kernel run as the user's uid would
  be a stranger to the user's own notebook folder (and the files it wrote
  would belong to a subordinate id on the host).  ``--userns=keep-id`` maps
  the user's uid to itself, which is what envpin means by "the kernel runs as
  you".  The SDK refuses any ``userns_mode`` but ``host``, so the option goes
  into the host config the SDK builds, under the SDK's own create call.
  The same rule serves a remote rootless Podman reached over SSH
  (``ssh://user@host/run/user/UID/podman/podman.sock``): the kernel runs as
  the SSH user's uid:gid there, which keep-id keeps, so its files in its
  folder ``R`` are that user's and it can bind its channel sockets in the
  0700 ``R/sock`` (as container root it would be that user too, but every
  file it made as another uid would belong to a subordinate id).  envpin's
  package volume is filled by a container without ``user`` (root = the SSH
  user), and ``put_archive`` maps the tar's uid:gid through the same mapping.
* **A private HOME.**  Podman refuses tmpfs options ``uid=``/``gid=``; its own
  ``U`` option chowns the tmpfs to the container's user instead.
* **An init process.**  ``init=True`` asks for catatonit, which Debian's
  podman does not pull in ("container-init binary not found on the host").
  The first refusal is remembered per engine, and containers then start under
  ``envpin.entry.pid1``, a tiny init in envpin's read-only mounted package (it
  forwards signals to the program and reaps orphans, as docker-init does).
* **GPUs.**  Podman ignores ``DeviceRequests`` (``--gpus``); it takes GPUs as
  CDI devices (``nvidia.com/gpu=all``, ``nvidia.com/gpu=0``), set up on the
  host by ``nvidia-ctk cdi generate``.
* **The container marker** is ``/run/.containerenv``, not ``/.dockerenv``:
  envpin checks both wherever it asks "am I in a container".

Standard library only at import (the Docker SDK is used through the client
the caller passes): the kernel side, which is mounted into images, uses this
too (job workers, ``envpin run``, fingerprint probes).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from envpin import names
from envpin.entry import boot
from envpin.host import docker_client
from envpin.internals import DOCKER


@dataclass(frozen=True)
class EngineKind:
    """What answers at a client's address."""

    podman: bool
    rootless: bool  #: known for Podman (it changes the options); False for Docker, which needs no difference
    version: str
    address: str

    def describe(self) -> str:
        name = "Podman" if self.podman else "Docker"
        mode = " (rootless)" if self.rootless else ""
        return f"{name} {self.version}{mode} at {self.address}"


_kinds: dict[str, EngineKind] = {}
_without_init: set[str] = set()  # engines that refused init=True (Podman without catatonit)
_lock = threading.Lock()


def kind(client: Any) -> EngineKind:
    """Docker or Podman, rootless or not; asked once per engine address."""
    address = docker_client.address_of(client)
    with _lock:
        known = _kinds.get(address)
    if known is not None:
        return known
    version = client.version()
    names = " ".join(str(c.get("Name", "")) for c in version.get("Components") or [])
    podman = "podman" in names.lower()
    rootless = False
    if podman:  # only Podman's options depend on it; Podman's own API says it (the compat /info does not)
        response = DOCKER.attr(client.api, "api_get")(DOCKER.attr(client.api, "api_url")("/libpod/info"))
        if response.ok:
            rootless = bool(((response.json().get("host") or {}).get("security") or {}).get("rootless"))
    found = EngineKind(podman=podman, rootless=rootless, version=str(version.get("Version", "?")), address=address)
    with _lock:
        _kinds[address] = found
    return found


def adapt(client: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``containers.create`` keyword arguments for this engine (a new dict; ``options`` is left alone)."""
    engine = kind(client)
    if not engine.podman:
        return dict(options)
    out = dict(options)
    if engine.rootless and out.get("user") and "userns_mode" not in out:
        out["userns_mode"] = "keep-id"
    tmpfs = out.get("tmpfs")
    if tmpfs:
        out["tmpfs"] = {path: _podman_tmpfs(opts) for path, opts in tmpfs.items()}
    if out.get("init") and docker_client.address_of(client) in _without_init:
        out["init"] = False
        entrypoint = out.get("entrypoint") or []
        if entrypoint:  # envpin always names the program it runs; the image's Python runs the init
            program = str(entrypoint[0])
            python = program if program.rsplit("/", 1)[-1].startswith("python") else "python3"
            out["entrypoint"] = [*boot.entrypoint(python), names.ENTRY_PID1, *entrypoint]
    requests = out.pop("device_requests", None)
    if requests:
        out["devices"] = [*(out.get("devices") or []), *cdi_devices(requests)]
    return out


def _podman_tmpfs(opts: str) -> str:
    """Podman's spelling of a tmpfs owned by the container's user: ``U`` instead of ``uid=``/``gid=``."""
    parts = [p for p in opts.split(",") if p and not p.startswith(("uid=", "gid="))]
    if len(parts) != len([p for p in opts.split(",") if p]):
        parts.append("U")
    return ",".join(parts)


def cdi_devices(requests: list[Any]) -> list[str]:
    """Podman's CDI names for Docker ``DeviceRequest``s (``--gpus all`` -> ``nvidia.com/gpu=all``)."""
    names = []
    for request in requests:
        ids = request.get("DeviceIDs") or []
        count = request.get("Count")
        if ids:
            names += [f"nvidia.com/gpu={i}" for i in ids]
        elif count == -1:
            names.append("nvidia.com/gpu=all")
        elif count:
            names += [f"nvidia.com/gpu={i}" for i in range(int(count))]
    return names


def _init_refused(exc: Exception) -> bool:
    text = str(getattr(exc, "explanation", None) or exc)
    return "container-init binary not found" in text or "catatonit" in text


def create(client: Any, **options: Any) -> Any:
    """``client.containers.create(**options)``, made to work on this engine (see the module doc)."""
    import docker.errors

    try:
        return _create(client, adapt(client, options))
    except docker.errors.APIError as exc:
        if not (options.get("init") and kind(client).podman and _init_refused(exc)):
            raise
        note_init_refused(client)
        return _create(client, adapt(client, options))


def note_init_refused(client: Any) -> None:
    """This engine refused ``init=True`` (Podman without catatonit): its containers get envpin's own init from now on."""
    with _lock:
        _without_init.add(docker_client.address_of(client))


def reset() -> None:
    """Forget what each engine was found to be and to refuse (``envpin.reset_caches``)."""
    with _lock:
        _kinds.clear()
        _without_init.clear()


def _create(client: Any, options: dict[str, Any]) -> Any:
    userns = options.pop("userns_mode", None)
    if userns in (None, "host"):
        if userns:
            options["userns_mode"] = userns
        return client.containers.create(**options)
    # The SDK's HostConfig refuses any userns_mode but "host"; build its arguments, then set it.
    create_container_args = DOCKER.get("create_container_args")
    args = create_container_args({**options, "version": DOCKER.attr(client.api, "api_version")})
    args["host_config"]["UsernsMode"] = userns
    created = client.api.create_container(**args)
    return client.containers.get(created["Id"])
