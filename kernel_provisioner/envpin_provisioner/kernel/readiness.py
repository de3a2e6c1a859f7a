"""When a started kernel is ready, and in plain words why it never became so.

:func:`wait_ready` returns once the kernel answers its heartbeat, a REQ/REP
echo ipykernel answers from a thread as soon as its sockets are bound (the
same for both transports, a millisecond each).  A container that exits (no
ipykernel, a crash) is reported at once with its last log lines instead of
after the timeout (:func:`died`).  Blocking: the provisioner runs it
in a worker thread.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import docker.errors
import zmq

from envpin import printable
from envpin_provisioner.errors import KernelStartFailed
from envpin_provisioner.kernel import channels

if TYPE_CHECKING:
    from envpin_provisioner.kernel.launch import KernelLaunch

#: Seconds between two looks at the container's state while waiting.
STATE_INTERVAL = 0.15
#: Seconds without a heartbeat reply before the probe starts over (a reply lost to a half-open connection).
PROBE_PATIENCE = 1.0


def logs_tail(container, lines: int = 15) -> str:
    """The container's last output lines, escaped and marked as its own (``envpin.printable.lines``), or ''.

    It is the image's text and ends up in errors, notebooks and the server's
    log: it must neither add lines that pass for envpin's nor reach a terminal
    with its control characters.
    """
    try:
        raw = container.logs(tail=lines).decode(errors="replace").strip()
    except docker.errors.APIError:
        return ""
    return printable.lines(raw) if raw else ""


def died(launch: KernelLaunch, exit_code: int, logs: str) -> KernelStartFailed:
    """Why a kernel container exited before it was ready: the problem, the fix, then its last output."""
    ref = launch.image.reference
    fix = None
    if "No module named ipykernel" in logs or "No module named 'ipykernel" in logs:
        problem = f"Image '{ref}' has Python but not ipykernel, so the kernel could not start."
        fix = "Install it in the image (pip install ipykernel, plus cloudpickle for jobs) or pick an image that has it."
    elif "site-packages/ipykernel" in logs or "ipykernel" in logs and ("Error" in logs or "error" in logs):
        problem = (
            f"The ipykernel in image '{ref}' fails to start (exit code {exit_code}): it is broken or incompatible "
            "with the rest of the image (see its last output below)."
        )
        fix = (
            "Reinstall it with its dependencies in the image (pip install -U ipykernel), or pick an image whose "
            "kernel starts with python -m ipykernel_launcher."
        )
    elif exit_code in (126, 127):
        problem = (
            f"Image '{ref}' has no '{launch.python}' on its PATH (exit code {exit_code}), so no Python kernel "
            "can run in it."
        )
        fix = (
            "Use an image with Python and ipykernel installed, or set the provisioner's python option "
            "to the interpreter's path inside the image."
        )
    elif exit_code == 137:
        problem = f"The kernel container of '{ref}' was killed (exit code 137: out of memory or killed from outside)."
    else:
        problem = f"The kernel in image '{ref}' exited with code {exit_code} before it was ready."
    return KernelStartFailed(problem, fix=fix, detail=f" Its last output:\n{logs}" if logs else "")


def death_note(container) -> str:
    """Why a kernel container stopped, for the server's log (Jupyter itself only says "appears to have died").

    Blocking.  The exit code in words (137: killed, by the kernel's memory
    limit when Docker says OOMKilled), and the container's last output.
    """
    attrs = container.attrs.get("State", {}) if isinstance(container.attrs, dict) else {}
    code = attrs.get("ExitCode")
    if attrs.get("OOMKilled"):
        why = "killed for using more memory than it may (OOMKilled: raise mem_limit, or use less)"
    elif code == 137:
        why = "killed (SIGKILL: from outside, e.g. docker kill, or by the system's memory killer)"
    elif code == 143:
        why = "stopped (SIGTERM, from outside: docker stop)"
    elif code == 0:
        why = "exited (the kernel ended itself: exit() or quit() in a cell)"
    else:
        why = f"exited with code {code}"
    tail = logs_tail(container, 5)
    return f"{why}" + (f"; its last output:\n{tail}" if tail else "")


class _Heartbeat:
    """One REQ socket asking the kernel's heartbeat for an echo; started over when a reply is lost."""

    def __init__(self, launch: KernelLaunch) -> None:
        self._launch = launch
        self._sock: zmq.Socket | None = None
        self._sent = 0.0

    def answered(self, now: float, may_connect: bool) -> bool:
        """True once the kernel echoed; polls up to 20 ms.  ``may_connect``: whether a new probe may start."""
        if self._sock is None:
            if not may_connect:
                time.sleep(0.02)
                return False
            self._connect(now)
        assert self._sock is not None
        if self._sock.poll(20):
            self._sock.recv()
            return True
        if now - self._sent > PROBE_PATIENCE:  # a reply lost to a half-open connection: start over
            self.close()
        return False

    def _connect(self, now: float) -> None:
        sock: zmq.Socket = zmq.Context.instance().socket(zmq.REQ)
        sock.linger = 0
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        server_key = self._launch.connection_info.get("curve_publickey")
        if server_key:  # the kernel's sockets speak CurveZMQ: so must this probe
            sock.curve_serverkey = server_key.encode() if isinstance(server_key, str) else server_key
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.connect(channels.heartbeat_url(self._launch))
        sock.send(b"envpin-ready?")
        self._sock, self._sent = sock, now

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _old_kernel_holds_a_path(launch: KernelLaunch, replacing: dict[str, tuple[int, int]] | None) -> bool:
    """During a move: a socket path still has the inode of the kernel being replaced (its heartbeat, not ours)."""
    return bool(replacing) and any(channels.socket_inodes(launch).get(p) == ino for p, ino in (replacing or {}).items())


def _raise_if_exited(container, launch: KernelLaunch) -> None:
    container.reload()
    if container.status in ("exited", "dead"):
        code = container.attrs.get("State", {}).get("ExitCode", -1)
        raise died(launch, code, logs_tail(container))


def _timed_out(container, launch: KernelLaunch, timeout: float) -> KernelStartFailed:
    logs = logs_tail(container)
    return KernelStartFailed(
        f"The kernel in image '{launch.image.reference}' did not answer within {timeout:.0f}s "
        "(launch_timeout). Raise launch_timeout if the image is slow to start."
        + (f" Its last output:\n{logs}" if logs else "")
    )


def wait_ready(
    container,
    launch: KernelLaunch,
    timeout: float,
    log: logging.Logger | logging.LoggerAdapter,
    replacing: dict[str, tuple[int, int]] | None = None,
) -> None:
    """Return when the kernel answers its heartbeat; raise with its logs if it dies or times out.

    ``replacing`` (ipc only): the socket inodes of a kernel still running on
    the same paths (a move).  Its heartbeat would answer for the new one, so
    the new kernel counts as ready only once it has bound every path anew.
    """
    deadline = time.monotonic() + timeout
    next_state_check = 0.0
    heartbeat = _Heartbeat(launch)
    try:
        while True:
            now = time.monotonic()
            if heartbeat.answered(now, may_connect=not _old_kernel_holds_a_path(launch, replacing)):
                channels.check_sockets(launch)
                return
            if now >= next_state_check:
                next_state_check = now + STATE_INTERVAL
                _raise_if_exited(container, launch)
            if now >= deadline:
                raise _timed_out(container, launch, timeout)
    finally:
        heartbeat.close()
