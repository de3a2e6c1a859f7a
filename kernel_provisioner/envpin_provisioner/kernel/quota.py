"""A quota on the folders a kernel writes on the server's machine (its ``sock/`` and ``control/``).

The kernel must create files in both (its five sockets, its ``%use_image``
requests), so a hostile kernel could fill them with millions of files or a
deep tree: disk and inodes spent on the server's machine, and a removal that
takes seconds.  Where the server may mount (root on Linux), each folder is a
tiny tmpfs of its own: at most :data:`MAX_FILES` entries and :data:`MAX_BYTES`,
and removing it is one unmount, however it was filled.  Elsewhere (a server
running as a user) the folders are plain, and their removal is bounded in
time instead (``container.remove_channel_dir``).

A server killed outright leaves these small mounts behind in its runtime
folder (``/tmp/envpin-*``); ``umount`` removes them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

#: Entries the kernel may create in one such folder: it needs five sockets, or a few requests and answers
#: at a time; the margin lets a kernel that left junk behind still talk to the server.
MAX_FILES = 4096
#: Bytes it may write there (requests and answers are a few KB each; a tmpfs holds only what is written).
MAX_BYTES = 16 << 20

_MNT_DETACH = 2
_log = logging.getLogger("envpin")
_libc = None


def _c() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def reset() -> None:
    """Forget the C library handle (``envpin_provisioner.reset_caches``): loaded again on next use."""
    global _libc
    _libc = None


def limit(path: str, owner: tuple[int, int] | None) -> bool:
    """Make the (new, empty) folder ``path`` a bounded tmpfs owned by ``owner``; False where we may not mount."""
    libc = _c()
    if libc is None or os.geteuid() != 0:
        return False
    uid, gid = owner or (0, 0)
    options = f"size={MAX_BYTES},nr_inodes={MAX_FILES},mode=0700,uid={uid},gid={gid}"
    # MS_NOSUID | MS_NODEV | MS_NOEXEC: nothing in there is ever run or opened as a device.
    flags = 0x2 | 0x4 | 0x8
    if libc.mount(b"envpin", os.fsencode(path), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        _log.debug("envpin: no quota for %s (mount: %s)", path, os.strerror(err))
        return False
    return True


def release(path: str) -> None:
    """Unmount a folder :func:`limit` mounted (everything in it goes with it); nothing when it is not a mount."""
    libc = _c()
    if libc is None or os.geteuid() != 0 or not os.path.ismount(path):
        return
    if libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        _log.warning("envpin: could not unmount %s: %s", path, os.strerror(ctypes.get_errno()))
