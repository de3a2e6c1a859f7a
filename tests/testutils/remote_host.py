"""Tests' view of a remote host: the harness itself (``tools/remote_host.py``) and what tests assert about it.

``RemoteHost`` makes "another machine" on this one (a network namespace with
its own dockerd over TLS and sshd, a private mount namespace without this
machine's folders); see its module.  The helpers here are the checks a test
makes from outside: which sockets listen on an address of this machine, and
what a stopped remote host left behind.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from tools.remote_host import USER, RemoteHost, RemoteHostError

__all__ = ["USER", "RemoteHost", "RemoteHostError", "exposed_listeners", "listener_owners", "tcp_listeners"]


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: the bytes of each 32-bit word in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening(pid: int | str) -> dict[tuple[str, int], str]:
    """(address, port) -> socket inode, for every TCP socket listening in the network namespace of ``pid``."""
    found = {}
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = fields[1].split(":")
            found[(str(_address(addr)), int(port, 16))] = fields[9]
    return found


def tcp_listeners(pid: int | str = "self") -> set[tuple[str, int]]:
    """Every TCP socket listening in the network namespace of process ``pid`` (default: this one's), as (address, port)."""
    return set(_listening(pid))


def exposed_listeners(pid: int | str = "self") -> set[tuple[str, int]]:
    """The listeners another machine could reach: those not on a loopback address (0.0.0.0 and :: included)."""
    return {(a, p) for a, p in tcp_listeners(pid) if not ipaddress.ip_address(a).is_loopback}


def listener_owners(listeners: set[tuple[str, int]], pid: int | str = "self") -> dict[tuple[str, int], list[str]]:
    """Which processes hold ``listeners`` (as "PID command"): what a failure message names."""
    inodes = {inode: key for key, inode in _listening(pid).items() if key in listeners}
    owners: dict[tuple[str, int], list[str]] = {key: [] for key in listeners}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            comm = (proc / "comm").read_text().strip()
        except OSError:  # gone, or not ours to look at
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                owners[inodes[link[8:-1]]].append(f"{proc.name} {comm}")
    return owners
