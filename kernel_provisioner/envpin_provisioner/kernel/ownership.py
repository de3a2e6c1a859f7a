"""Which containers are envpin's, who owns them, and garbage collection of orphans.

:func:`owned` is the one test of "envpin made this container" for every path
that finds containers on the engine rather than holding the one it made:
``envpin gc`` and a server's start-up collection (:func:`collect_garbage`),
a kernel's sweep of its stale containers, doctor's count of warm containers,
a restarted server's adoption.  It rests on ``envpin.host.labels.made_by_envpin``
(a proof an image cannot preset, over labels the image does not define
itself), with the image's labels looked up once per image id and process.

A kernel container outlives its server when the server dies hard (SIGKILL, a
crash, a closed laptop): the ipykernel inside has no way to notice.  So every
container envpin starts is labelled with its owner, a process identified by

* ``envpin.owner-host``: the host name,
* ``envpin.owner-boot``: the kernel's boot id (a reboot ends every owner),
* ``envpin.owner-pid`` and ``envpin.owner-start``: the pid and its start time
  in clock ticks since boot, so a recycled pid is not mistaken for the owner.

:func:`collect_garbage` removes containers whose owner is provably gone.  An
owner on another host (a shared remote engine) cannot be checked from here and
is left alone unless asked.  A server that adopts a container of a previous
server (``load_provisioner_info``) records itself as the new owner in an
adoption file, since a container's labels cannot change.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from envpin import names, printable
from envpin.host import images, labels
from envpin.host.labels import boot_id, owner_labels, start_ticks

log = logging.getLogger("envpin")


def _adoption_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "envpin-adopted"


def adopt(container_id: str) -> None:
    """Record this process as the owner of ``container_id`` (which another process started)."""
    d = _adoption_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    (d / f"{container_id}.json").write_text(json.dumps(owner_labels()))


def _owner(container: docker.models.containers.Container) -> dict[str, str]:
    labels = dict(container.labels or {})
    try:
        labels.update(json.loads((_adoption_dir() / f"{container.id}.json").read_text()))
    except (OSError, ValueError):
        pass
    return labels


def owner_state(labels: dict[str, str]) -> str:
    """``alive``, ``gone`` or ``unknown`` (owned by a process on another host)."""
    if labels.get(names.LABEL_OWNER_HOST) != socket.gethostname():
        return "unknown"
    if labels.get(names.LABEL_OWNER_BOOT) and labels[names.LABEL_OWNER_BOOT] != boot_id():
        return "gone"
    try:
        pid = int(labels.get(names.LABEL_OWNER_PID, ""))
    except ValueError:
        return "gone"
    start = start_ticks(pid)
    if not start or (labels.get(names.LABEL_OWNER_START) and start != labels[names.LABEL_OWNER_START]):
        return "gone"
    return "alive"


#: Image id -> its labels (None: the image is gone).  An id names one image configuration for good.
_image_labels: dict[str, dict[str, str] | None] = {}
_image_labels_lock = threading.Lock()
_IMAGE_LABELS_KEPT = 1024


def reset() -> None:
    """Forget the images' labels (``envpin_provisioner.reset_caches``)."""
    with _image_labels_lock:
        _image_labels.clear()


def image_labels(client: docker.DockerClient, image_id: str) -> dict[str, str] | None:
    """The labels image ``image_id`` defines itself, None when it is gone; one engine call per id and process."""
    with _image_labels_lock:
        if image_id in _image_labels:
            return _image_labels[image_id]
    try:
        found: dict[str, str] | None = dict(client.images.get(image_id).labels or {})
    except docker.errors.ImageNotFound:
        found = None
    with _image_labels_lock:
        if len(_image_labels) >= _IMAGE_LABELS_KEPT:
            _image_labels.clear()
        _image_labels[image_id] = found
    return found


def owned(client: docker.DockerClient, container: docker.models.containers.Container) -> bool:
    """True when envpin (a process of this user) made ``container``; see ``envpin.host.labels.made_by_envpin``.

    No engine call for a container without a valid proof (the look-alikes);
    one per image id and process otherwise.
    """
    container_labels = container.labels or {}
    if not labels.proof_holds(container_labels):  # the look-alikes stop here, before any engine call
        return False
    image_id = (container.attrs or {}).get("Image") or ""
    return labels.made_by_envpin(container_labels, image_labels(client, image_id) if image_id else None)


def envpin_containers(client: docker.DockerClient, label: str = names.LABEL_ROLE) -> list:
    """envpin's containers on the engine (stopped ones too), those carrying ``label`` (``KEY`` or ``KEY=VALUE``)."""
    found = client.containers.list(all=True, filters={"label": label}, ignore_removed=True)  # one may go meanwhile
    return [c for c in found if owned(client, c)]


def collect_garbage(
    client: docker.DockerClient,
    *,
    other_hosts: bool = False,
    dry_run: bool = False,
    report: list | None = None,
    on_remove: Callable[[Any], None] | None = None,
) -> list[str]:
    """Remove envpin containers whose owner is gone, and exited kernel containers; return their short ids.

    Only containers :func:`owned` says envpin made (this user's key): never a
    look-alike, never another user's.

    With ``other_hosts`` also those owned by processes on other hosts (whose
    liveness cannot be checked from here): only for a single-user engine.
    ``report``: a list that gets one line per container, saying what it is
    and why it goes (what ``envpin gc --dry-run`` shows).  ``on_remove``: called
    with each container about to go (not in a dry run), for what it leaves
    outside the engine (a remote kernel's folder on its host).
    """
    removed = []
    for container in envpin_containers(client):
        state = owner_state(_owner(container))
        # A kernel container that has exited is never used again (a restart starts a new one): it is
        # garbage even while its owner lives, e.g. when the engine went away before the owner removed it.
        finished = container.labels.get(names.LABEL_ROLE) in ("kernel", "pool") and container.status in (
            "exited",
            "dead",
        )
        if not finished and (state == "alive" or (state == "unknown" and not other_hosts)):
            continue
        removed.append(container.short_id)
        if report is not None:
            report.append(_describe(container, state, finished))
        if dry_run:
            continue
        if on_remove is not None:
            on_remove(container)
        images.remove(container)
        log.info(
            "envpin: removed orphaned or finished %s container %s (kernel %s, owner pid %s)",
            container.labels.get(names.LABEL_ROLE),
            container.short_id,
            container.labels.get(names.LABEL_KERNEL_ID, "?"),
            container.labels.get(names.LABEL_OWNER_PID, "?"),
        )
        try:
            (_adoption_dir() / f"{container.id}.json").unlink()
        except OSError:
            pass
    return removed


def _describe(container: Any, state: str, finished: bool) -> str:
    """One line for a container gc takes: id, name, role, image, kernel, owner, and why."""
    labels = container.labels
    why = container.status if finished else f"its owner is {'gone' if state == 'gone' else 'on another host'}"
    return (
        f"{container.short_id}  {printable.one_line(container.name, 80)}  {labels.get(names.LABEL_ROLE, '?')}  "
        f"image {printable.one_line(labels.get(names.LABEL_IMAGE, '?'), 200)}  "
        f"kernel {printable.one_line(labels.get(names.LABEL_KERNEL_ID, '-'), 40)}  "
        f"owner pid {printable.one_line(labels.get(names.LABEL_OWNER_PID, '?'), 12)} on "
        f"{printable.one_line(labels.get(names.LABEL_OWNER_HOST, '?'), 100)}  ({why})"
    )
