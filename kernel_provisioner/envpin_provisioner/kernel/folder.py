"""The notebook folder a kernel mounts: pinned at its first start, checked before and after its container is made.

A kernel can write its notebook folder's parent, so it can rename the folder
or put a link in its place at any time: the server keeps using the folder it
pinned (an open descriptor, its device and inode, ``safe_files.PinnedDir``),
mounts it only after checking the path still leads there
(:func:`check_folder`), and once the container runs looks at what was really
mounted (:func:`verify_folder_mount`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from envpin import safe_files
from envpin_provisioner.errors import ConfigError, KernelStartFailed
from envpin_provisioner.images import selection

if TYPE_CHECKING:
    from envpin_provisioner.kernel.launch import KernelLaunch


def pin_folders(notebook: str | None, cwd: str | None) -> tuple[safe_files.PinnedDir, safe_files.PinnedDir]:
    """Pin (open, by descriptor) the notebook folder and its pin file's folder, as a kernel's first start names them.

    Blocking.  Both come from jupyter_server's start request (or, for
    ``envpin launch``, from the client that ran it).  From here on the kernel
    can rename either or put a link in its place: the server keeps using the
    folders it pinned (pins through the descriptor, mounts only after checking
    the path still leads there, see :func:`check_folder`).
    """
    folder_path = os.path.abspath(cwd or os.getcwd())
    pin_path = selection.notebook_folder(notebook, folder_path)
    try:
        folder = safe_files.PinnedDir(folder_path)
        pin_dir = folder if os.path.abspath(pin_path) == folder.path else safe_files.PinnedDir(pin_path)
    except OSError as exc:
        raise ConfigError(
            f"The notebook folder {exc.filename or folder_path} cannot be opened ({exc.strerror}); the kernel "
            "starts in its notebook's folder. Check that it exists and that the Jupyter server may enter it."
        ) from None
    return folder, pin_dir


def folder_changed(launch: KernelLaunch, why: str) -> KernelStartFailed:
    return KernelStartFailed(
        f"The notebook folder {launch.cwd} is not the folder this kernel started in any more ({why}): it was "
        "renamed, replaced or linked elsewhere since. envpin mounts only the folder it pinned at the kernel's "
        "first start, so it does not start a kernel there. Shut this kernel down and open the notebook again "
        "from where it is now."
    )


def check_folder(launch: KernelLaunch) -> None:
    """Before a container is created: the pinned notebook folder's path still leads to that folder, link-free."""
    if launch.folder is not None:
        try:
            launch.folder.check()
        except safe_files.FolderChanged as exc:
            raise folder_changed(launch, exc.strerror or str(exc)) from None


def verify_folder_mount(container, launch: KernelLaunch, log: logging.Logger | logging.LoggerAdapter) -> None:
    """Once the container runs: what is mounted at the notebook folder is the pinned folder (same device, inode).

    The check before creation leaves a window (the engine resolves the
    source path itself, later, and a kernel that can write the folder's
    parent can race it); this closes it by looking, from the container's own
    root (``/proc/PID/root``), at what was really mounted.  The walk follows
    no link, inside the container either (an image whose path to the
    notebook folder holds a link would otherwise lead the look elsewhere on
    this machine), and it fails closed: a running container whose folder
    cannot be seen to be the pinned one does not become a kernel.  Only for a
    local engine, whose processes this machine's ``/proc`` shows.
    """
    if launch.folder is None or not launch.cwd:
        return
    container.reload()
    pid = (container.attrs.get("State") or {}).get("Pid") or 0
    if not pid or container.status != "running":
        return  # exited already: waiting for it reports why
    try:
        root = os.open(f"/proc/{int(pid)}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = safe_files.open_below(root, launch.cwd)
        finally:
            os.close(root)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        seen = (st.st_dev, st.st_ino)
    except OSError as exc:
        container.reload()
        if container.status != "running":
            return  # it exited meanwhile: waiting for it reports why
        log.warning("envpin: cannot see the notebook folder inside container %s: %s", container.short_id, exc)
        raise folder_changed(
            launch, f"its path inside the image cannot be followed without a link ({exc.strerror or exc})"
        ) from None
    if seen != launch.folder.identity:
        raise folder_changed(launch, "another folder was mounted in its place")
