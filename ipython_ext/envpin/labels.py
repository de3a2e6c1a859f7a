"""Labels on every container envpin starts, and the identity of its owning process.

Kept on the kernel side (stdlib only) because both sides start containers:
the provisioner (kernels) and, on a host, ``envpin.use_image`` / fingerprints.
A container's owner is a process identified by host name, boot id, pid and
the pid's start time (so a recycled pid is not mistaken for the owner); see
``envpin_provisioner.ownership`` for the garbage collection built on it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROLE = "envpin.role"
KERNEL_ID = "envpin.kernel-id"
OWNER_HOST = "envpin.owner-host"
OWNER_BOOT = "envpin.owner-boot"
OWNER_PID = "envpin.owner-pid"
OWNER_START = "envpin.owner-start"
OWNER_UID = "envpin.owner-uid"
IMAGE_REF = "envpin.image"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """Start time of ``pid`` (field 22 of /proc/PID/stat), '' when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_labels(pid: int | None = None) -> dict[str, str]:
    """Labels naming ``pid`` (this process by default) as a container's owner."""
    pid = pid or os.getpid()
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_BOOT: boot_id(),
        OWNER_PID: str(pid),
        OWNER_START: start_ticks(pid),
        OWNER_UID: str(os.getuid()),
    }
