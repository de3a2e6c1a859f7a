"""envpin's kernel-side package on an engine of another machine: a read-only volume, filled once per version.

A local engine gets the package by a read-only bind mount of this machine's
folder.  Another machine has no such folder (the bind fails: "bind source
path does not exist"), and a server path must never be the source of a
mount there anyway.  So the package is copied, once per engine and package
content, into a named volume ``envpin-pkg-<sha256 of the files>``: every
kernel of that version mounts it read-only, a new envpin version gets a new
volume, and nothing about the server's paths crosses to the remote host.

Filling goes through a created, never started, container of the kernel's
own image (no other image needs to be on that engine) with ``put_archive``;
a marker file written last says the copy is whole, so a fill cut short is
redone by the next kernel instead of being trusted.
"""

from __future__ import annotations

import threading
from typing import Any

import docker.errors

from envpin import names
from envpin.host import dialect, docker_client, labels, package_archive

#: Label on the volume and its carrier: envpin made it, for this package content.
LABEL_PACKAGE = "envpin.package"
#: The file written last into a filled volume.
COMPLETE = ".envpin-complete"
_CARRIER_TARGET = "/envpin-package"
#: Every mount of the volume: the engine copies nothing of an image into it.  Without it, the first
#: mount of the empty volume copies the image's files at the mount point in ("copy-up"): an image with
#: files at /envpin-package, ``.envpin-complete`` among them, became every later kernel's envpin there.
_NO_COPY = {"VolumeOptions": {"NoCopy": True}}

_ready: set[tuple[str, str]] = set()  # (engine address, volume name) filled and checked by this process
_lock = threading.Lock()


def reset() -> None:
    """Forget which engines have the package's volume (``envpin_provisioner.STATEFUL_MODULES``)."""
    with _lock:  # the package's files are read again after envpin.reset_caches (envpin.host.package_archive)
        _ready.clear()


def volume_name() -> str:
    return f"envpin-pkg-{package_archive.digest()[:16]}"


def ensure(client: Any, image_id: str) -> str:
    """The name of a filled package volume on ``client``'s engine (made and filled when missing).  Blocking."""
    name = volume_name()
    key = (docker_client.address_of(client), name)
    with _lock:
        if key in _ready:
            return name
    digest = package_archive.digest()
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        try:
            client.volumes.create(name=name, labels={LABEL_PACKAGE: digest, names.LABEL_ROLE: "package"})
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # made meanwhile by another server: fine
                raise
    carrier = dialect.create(
        client,
        image=image_id,
        command=["true"],
        entrypoint=[],
        mounts=[{"Target": _CARRIER_TARGET, "Source": name, "Type": "volume", "ReadOnly": False, **_NO_COPY}],
        labels=labels.signed({names.LABEL_ROLE: "package", **labels.owner_labels()}),
        network_disabled=True,
    )
    try:
        try:
            carrier.get_archive(f"{_CARRIER_TARGET}/{COMPLETE}")
        except docker.errors.NotFound:
            carrier.put_archive(_CARRIER_TARGET, package_archive.archive(marker=COMPLETE))
    finally:
        carrier.remove(force=True)
    with _lock:
        _ready.add(key)
    return name


def mount(name: str) -> dict[str, Any]:
    """The read-only mount of the package volume where a local kernel gets its bind mount."""
    return {
        "Target": f"{names.CONTAINER_PYTHONPATH}/envpin",
        "Source": name,
        "Type": "volume",
        "ReadOnly": True,
        **_NO_COPY,
    }
