"""A kernel's container: create and start it, ask its state, remove it.

This module and its neighbours are synchronous and know nothing of
jupyter_client: the provisioner calls them from worker threads (so the
server's event loop never waits on Docker), and ``envpin launch`` (the
fallback for clients that ignore provisioners) calls them directly.  What the
container is made of is ``launch`` (``KernelLaunch``, ``container_options``);
how the server reaches it, ``channels``; the notebook folder's checks,
``folder``; when it is ready, ``readiness``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time

import docker
import docker.errors

from envpin import names
from envpin.host import dialect, docker_client, images
from envpin_provisioner.errors import KernelStartFailed
from envpin_provisioner.kernel import folder
from envpin_provisioner.kernel.launch import KernelLaunch, container_options


def _connection_tar(launch: KernelLaunch, uid: int, gid: int) -> bytes:
    """The in-container connection file (tcp), as a tar for ``put_archive``: readable by the kernel's user alone."""
    info = dict(launch.connection_info)
    info["ip"] = "127.0.0.1" if launch.network_mode == "host" else "0.0.0.0"
    for k, v in list(info.items()):
        if isinstance(v, bytes):
            info[k] = v.decode()
    data = json.dumps(info, indent=1).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo(os.path.basename(names.CONTAINER_TCP_CONNECTION_FILE))
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), 0o600, uid, gid, int(time.time())
        tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def start(client: docker.DockerClient, launch: KernelLaunch, log: logging.Logger | logging.LoggerAdapter):
    """Create and start the kernel container; remove it again if starting fails."""
    folder.check_folder(launch)
    options = container_options(launch)
    try:
        container = dialect.create(client, **options)
    except docker.errors.APIError as exc:
        raise KernelStartFailed(
            f"The Docker engine refused to create a kernel container from image '{launch.image.reference}': "
            f"{exc.explanation or exc}. Check the kernel's options (mounts, network, limits, extra options)."
        ) from exc
    try:
        if launch.transport == "tcp":
            uid, _, gid = options["user"].partition(":")
            container.put_archive(
                os.path.dirname(names.CONTAINER_TCP_CONNECTION_FILE), _connection_tar(launch, int(uid), int(gid or uid))
            )
        container.start()
        if docker_client.is_local_client(client):
            folder.verify_folder_mount(container, launch, log)
    except docker.errors.APIError as exc:
        remove(container)
        raise KernelStartFailed(_start_error(launch, exc)) from exc
    except BaseException:
        remove(container)
        raise
    log.info(
        "envpin: kernel %s started in container %s of image %s (%s)",
        launch.kernel_id,
        container.short_id,
        launch.image.reference,
        launch.image.immutable,
    )
    return container


def _start_error(launch: KernelLaunch, exc: docker.errors.APIError) -> str:
    text = str(exc.explanation or exc)
    ref = launch.image.reference
    if "executable file not found" in text or "no such file or directory" in text and launch.python in text:
        return (
            f"Image '{ref}' has no '{launch.python}' on its PATH, so no Python kernel can run in it. "
            "Use an image with Python and ipykernel installed, or set the provisioner's python option "
            "to the interpreter's path inside the image."
        )
    if "/tmp" in text and launch.transport == "tcp":
        return f"Could not copy the connection file into a container of '{ref}' (it has no /tmp): {text}."
    return f"The Docker engine could not start a kernel container of image '{ref}': {text}."


#: Remove a container whatever its state, tolerating exactly 404 (gone) and 409 (removal in progress).
remove = images.remove


def state(container) -> tuple[str, int | None]:
    """``(status, exit code or None while running)``; a vanished container counts as exited (-1)."""
    try:
        container.reload()
    except docker.errors.NotFound:
        return "removed", -1
    if container.status in ("created", "running", "restarting", "paused"):
        return container.status, None
    return container.status, container.attrs.get("State", {}).get("ExitCode", -1)
