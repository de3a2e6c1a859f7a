"""The hand-over of a kernel on another machine's engine: one archive, put into its container (issue 28).

``envpin.entry.warm_kernel`` waits for it (``--poll`` in a remote pool's
container, ``--given`` in a cold start's over SSH): the connection file (the
key), ``message.json`` (ipykernel's arguments, variables, working folder),
then ``go``.  Docker extracts an archive in order, so ``go`` appears only once
the others are whole.  The key crosses only the engine's API connection,
into that one container: never a command line, a variable, a label or a file
on the remote host's disk.  Pure: building the archive and the message.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from typing import Any

from envpin import names
from envpin.entry import warm_kernel
from envpin_provisioner.kernel import launch as kernel_launch

#: In a remote kernel's container: its private hand-over folder (0700, the kernel's user).
HANDOFF_DIR = "/tmp/envpin-handoff"
#: The connection file's name there (the kernel's ``-f``) in a pool container.
KEY_FILE = "kernel.json"


def _tar(entries: list[tuple[str, bytes | None, int]], user: str) -> bytes:
    """A tar of ``(name, data or None for a folder, mode)``, owned by ``user`` (uid:gid), in that order."""
    uid, _, gid = user.partition(":")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, int(time.time())
            info.uid, info.gid = int(uid), int(gid or uid)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def handover_archive(
    info: dict[str, Any], socket_prefix: str, message: dict[str, Any], user: str, key: str = KEY_FILE, folder: str = ""
) -> bytes:
    """The one archive a kernel's container gets: its key, the hand-over, then ``go`` (extracted in that order).  Pure.

    A pool container's goes into :data:`HANDOFF_DIR` (``folder`` empty: its waiting process made it, and
    makes the control folder when it becomes a kernel); a cold start's (``ssh_kernel``) into ``/tmp``,
    making ``folder`` (0700) with the message and ``go``, and the kernel's control folder.
    """
    shaped = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    shaped.update(transport="ipc", ip=socket_prefix)
    entries: list[tuple[str, bytes | None, int]] = [(folder, None, 0o700)] if folder else []
    if folder:  # a cold start's archive goes into /tmp: the kernel's control folder (remote.control_relay) too
        entries.append((posixpath.basename(names.CONTAINER_CONTROL_DIR), None, 0o700))
    entries += [
        (key, json.dumps(shaped, indent=1).encode(), 0o600),
        (posixpath.join(folder, warm_kernel.POLL_MESSAGE), json.dumps(message).encode(), 0o600),
        (posixpath.join(folder, warm_kernel.POLL_GO), b"", 0o600),
    ]
    return _tar(entries, user)


def handover_message(
    launch: kernel_launch.KernelLaunch, env: dict[str, str], cwd: str, warm_env: dict[str, str], key: str = ""
) -> dict[str, Any]:
    """What the waiting process becomes: ipykernel's arguments, as a cold start's command has them.  Pure."""
    return {
        "argv": ["-f", key or posixpath.join(HANDOFF_DIR, KEY_FILE), *launch.kernel_args],
        "cwd": cwd,
        "env": env,
        "unset": sorted(set(warm_env) - set(env)),
    }
