"""How the server reaches a kernel without a port and without leaking its key: the channel folder and its sockets.

* ``ipc`` (default with a local engine): the connection file and the five ZMQ
  unix sockets live in a private 0700 channel directory (:func:`make_channel_dir`),
  parts of which are bind-mounted into the container at the same paths, so
  host and kernel name the same sockets.  The container needs no network for
  the channels at all.  Only what the kernel must write is mounted writable:
  ``sock/`` (its sockets) and ``control/`` (``%use_image`` requests); the
  connection file is mounted read-only and the channel directory itself is
  not mounted, so the kernel cannot replace any name the server later uses
  (the connection file, the two folders) by a link.
* ``tcp``: the kernel binds inside the container and each port is published on
  127.0.0.1 only; the in-container connection file is copied into the created
  (not yet started) container (``container.start``), readable by the kernel's
  user alone.

Either way the key travels only in a file: never in the command line, the
environment or the labels, all of which ``docker inspect`` shows to anyone
with engine access.

The socket folder is the kernel's to write: every name in it is checked
(:func:`check_sockets`, :func:`socket_inodes`) or removed (:func:`clear_sockets`)
without following a link.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from docker.types import Mount

from envpin import safe_files
from envpin_provisioner.errors import KernelStartFailed
from envpin_provisioner.kernel import quota

if TYPE_CHECKING:
    from envpin_provisioner.kernel.launch import KernelLaunch

#: Inside a channel directory: the kernel's ipc sockets, and the %use_image conversation.
SOCKET_DIR = "sock"
CONTROL_DIR = "control"
CONNECTION_FILE = "kernel.json"
#: A kernel's five ZMQ channels, as the connection file names their ports (``<channel>_port``).
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: Seconds a channel folder's removal may take before what is left stays (its key is gone first).
REMOVAL_BUDGET = 60.0


def channel_mounts(launch: KernelLaunch) -> list[Mount]:
    """The bind mounts that give the kernel its channels (ipc transport).

    A private channel directory (:func:`make_channel_dir`) is not mounted whole:
    the connection file goes in read-only, ``sock/`` and ``control/``
    writable.  Inside the container the channel directory is then a folder of
    the container's own (created by the engine, root's, not writable by the
    kernel), and the three mount points cannot be renamed or replaced, so
    every name the server uses in it stays the server's.  A connection file
    chosen by a client (``envpin launch``) keeps the old shape: its folder.
    """
    if not launch.private_channels:
        return [Mount(target=launch.channel_dir, source=launch.channel_dir, type="bind")]
    parts = [
        Mount(target=p, source=p, type="bind")
        for p in (os.path.join(launch.channel_dir, SOCKET_DIR), os.path.join(launch.channel_dir, CONTROL_DIR))
    ]
    if launch.handoff_dir and os.path.dirname(launch.connection_file) == launch.handoff_dir:
        return parts  # the connection file is written later, into the hand-over folder (mounted whole)
    return [Mount(target=launch.connection_file, source=launch.connection_file, type="bind", read_only=True), *parts]


def make_channel_dir(owner: tuple[int, int] | None = None) -> str:
    """A fresh private (0700) channel directory for one kernel: connection file, ``sock/``, ``control/``.

    ``owner`` (uid, gid): the kernel's user, when a server running as root
    starts kernels as another user; the two writable folders are given to it
    here, once, on descriptors of folders the server has just made: nothing
    is ever chowned by path later (a kernel could have replaced the path by
    a link by then).  Short on purpose: a unix socket path may not exceed
    107 bytes.
    """
    import tempfile

    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.access(base, os.W_OK):
        base = None
    path = tempfile.mkdtemp(prefix="envpin-", dir=base)  # mkdtemp creates it 0700
    with safe_files.directory(path, nofollow=True) as top:
        os.fchmod(top, 0o700)
        for name in (SOCKET_DIR, CONTROL_DIR):
            os.close(safe_files.make_private_dir(top, name, 0o700, owner))
    for name in (SOCKET_DIR, CONTROL_DIR):
        quota.limit(os.path.join(path, name), owner)
    return path


def give_connection_file(folder: str, owner: tuple[int, int]) -> None:
    """Let the kernel's user read its connection file (0600) in ``folder``: chown it on a descriptor, never by path."""
    with safe_files.directory(folder, nofollow=True) as top:
        fd = os.open(CONNECTION_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
        try:
            os.fchown(fd, *owner)
        finally:
            os.close(fd)


def remove_connection_files(path: str) -> None:
    """Remove the connection files (the key) of a channel folder: the top one and each hand-over folder's.

    Fast whatever the kernel left: these are names in folders only the server
    writes.  Run first, so that a folder whose removal runs out of time never
    leaves a key behind.
    """
    if not path or not Path(path).name.startswith("envpin-"):
        return
    try:
        with safe_files.directory(path, nofollow=True) as top:
            safe_files.remove(top, CONNECTION_FILE)
            for name in os.listdir(top):
                if name.startswith("handoff-"):
                    try:
                        with safe_files.directory(os.path.join(path, name), nofollow=True) as handoff:
                            safe_files.remove(handoff, CONNECTION_FILE)
                    except OSError:
                        pass
    except FileNotFoundError:
        pass


def remove_channel_dir(path: str, budget: float = REMOVAL_BUDGET) -> bool:
    """Remove a channel directory and whatever the kernel left in it; True when all of it is gone.  Blocking.

    The key goes first (:func:`remove_connection_files`); the rest is removed
    iteratively, on descriptors, without following a link
    (``safe_files.remove_tree``), and for at most ``budget`` seconds: a kernel
    that filled its folders with a million files or a 100,000-deep tree costs
    a worker thread that long, never the server's event loop, and never an
    exception.
    """
    if not path or not Path(path).name.startswith("envpin-"):
        return True
    remove_connection_files(path)
    for sub in (SOCKET_DIR, CONTROL_DIR):
        quota.release(os.path.join(path, sub))
    parent, name = os.path.split(path)
    try:
        with safe_files.directory(parent) as parent_fd:
            return safe_files.remove_tree(parent_fd, name, time.monotonic() + budget)
    except OSError:
        return False


# ---- the sockets ---------------------------------------------------------------------------


def heartbeat_url(launch: KernelLaunch) -> str:
    """Where the kernel's heartbeat answers, as seen from the server."""
    info = launch.connection_info
    if launch.transport == "ipc":
        return f"ipc://{info['ip']}-{info['hb_port']}"
    return f"tcp://127.0.0.1:{info['hb_port']}"


def socket_paths(launch: KernelLaunch) -> list[str]:
    """The five ipc socket paths of ``launch`` (in the kernel's socket folder)."""
    info = launch.connection_info
    return [f"{info['ip']}-{info[f'{ch}_port']}" for ch in CHANNELS]


def clear_sockets(launch: KernelLaunch) -> None:
    """Remove the kernel's socket names while no kernel owns them (between a container and the next).

    The socket folder is the kernel's to write, so a kernel may have replaced
    its own socket files by links (to another unix socket on the host, say),
    and the server's ZMQ clients reconnect *by path*.  With the names gone,
    a reconnect finds nothing and retries until the next kernel binds them
    anew.  Unlinking never follows a link; the folder is opened without
    following one either.
    """
    if launch.transport != "ipc" or not launch.private_channels:
        return
    folder = os.path.dirname(socket_paths(launch)[0])
    try:
        with safe_files.directory(folder, nofollow=True) as fd:
            for path in socket_paths(launch):
                safe_files.remove(fd, os.path.basename(path))
    except FileNotFoundError:
        pass


def check_sockets(launch: KernelLaunch) -> None:
    """After the heartbeat answered, every channel path must be a socket (not a link the kernel planted)."""
    if launch.transport != "ipc":
        return
    for path in socket_paths(launch):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISSOCK(mode):
            raise KernelStartFailed(
                f"The kernel in image '{launch.image.reference}' answered, but its channel {path} is not a unix "
                "socket (something in the kernel replaced it, by a link perhaps). envpin does not connect to it. "
                "Restart the kernel; if it happens again, the notebook's code is tampering with its channels."
            )


def socket_inodes(launch: KernelLaunch) -> dict[str, tuple[int, int]]:
    """Identity (inode, change time) of the ipc socket files now: a kernel that binds them anew replaces them.

    The change time is part of it because a freed inode number is often reused at once.
    """
    out = {}
    for path in socket_paths(launch):
        try:
            st = os.lstat(path)  # a name in the kernel's socket folder: never follow it
            out[path] = (st.st_ino, st.st_ctime_ns)
        except OSError:
            pass
    return out
