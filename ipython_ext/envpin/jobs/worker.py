"""A job worker: ``python -m envpin.entry.job_worker SOCKET SLOT`` runs jobs sent by a ContainerExecutor.

It runs inside the pinned image (a worker container, or a process of the
kernel's own container), needs only the standard library and cloudpickle, and
is never installed: envpin's package is mounted read-only, like in kernels.

It connects to the executor's unix socket, says hello (its environment, as
JSON, and the one-time token the executor gave this worker in
``ENVPIN_WORKER_TOKEN``: the executor talks only to workers it started), then
serves one job at a time until the socket closes.  Every job's
envelope is checked before anything is unpickled; a job from a different
Python or cloudpickle is refused with a JSON answer the sender can read
whatever its own Python.  The job's exception comes back with its traceback
text, so the notebook shows where it failed remotely.
"""

from __future__ import annotations

import mmap
import os
import socket
import traceback

from envpin import names
from envpin.jobs import envelope

#: What the executor sends a worker.
JOB_KINDS = frozenset({"job", "probe"})

#: Frames up to this size are allocated when announced (a ``bytearray``: the fastest to fill; a peer that
#: lies costs at most this much per connection, as much as really sending it would).  Larger ones are
#: received into anonymous memory (``mmap``), whose pages are committed only as bytes arrive, so a peer
#: announcing a huge frame and sending nothing costs nothing (an ``mmap`` is about 20% slower to fill).
_LAZY_FRAME = 1 << 28


def recv_exact(sock: socket.socket, n: int):
    """Exactly ``n`` bytes from ``sock`` (EOFError if it closes first), as a writable buffer.

    ``n`` comes from the peer (``envelope.read_frames`` bounds it): see
    ``_LAZY_FRAME`` for where it is received, so that a lie about a huge
    length is answered by EOF, not by filling the caller's memory up front.
    """
    if n < 0:
        raise ValueError(f"negative frame length {n}")
    if n <= _LAZY_FRAME:
        buf: bytearray | mmap.mmap = bytearray(n)
    else:
        try:
            buf = mmap.mmap(-1, n)
        except (OSError, OverflowError, ValueError):
            raise envelope.ProtocolError(
                f"a frame of {n} bytes cannot be received here (out of address space)"
            ) from None
    view = memoryview(buf)
    got = 0
    try:
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError("the peer closed the connection")
            got += k
    finally:
        view.release()
    return buf


def send_frames(sock: socket.socket, frames: list) -> None:
    """Send frames, joining the small ones so a tiny job costs one system call."""
    small: list = []
    for frame in frames:
        if len(frame) < 65536:
            small.append(bytes(frame))
            continue
        if small:
            sock.sendall(b"".join(small))
            small = []
        sock.sendall(frame)
    if small:
        sock.sendall(b"".join(small))


def send_control(sock: socket.socket, header: dict) -> None:
    """A header-only message (hello, refusal, probe answer): JSON, readable by any Python."""
    send_frames(sock, envelope.control_frames(header))


def _run_one(header: dict, payload, buffers) -> tuple:
    fn, args, kwargs = envelope.loads(header, payload, buffers, "job")
    return fn(*args, **kwargs)


def _missing_modules(names: list[str]) -> list[str]:
    import importlib.util

    missing = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def serve(path: str, slot: str) -> None:
    token = os.environ.pop(names.WORKER_TOKEN, "")  # the jobs this worker runs need not see it
    hello = envelope.control_frames(
        {"kind": "hello", "slot": slot, "token": token, "pid": os.getpid(), "env": envelope.sender_environment()}
    )  # made before connecting: the executor gives a silent connection a few seconds only
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    send_frames(sock, hello)
    read = lambda n: recv_exact(sock, n)  # noqa: E731
    while True:
        try:
            header, payload, buffers = envelope.read_frames(read, JOB_KINDS)
        except EOFError:
            return
        kind = header.get("kind")
        if kind == "probe":
            send_control(sock, {"kind": "probe", "missing": _missing_modules(header.get("modules", []))})
            continue
        try:
            value = _run_one(header, payload, buffers)
        except envelope.EnvelopeMismatch as exc:
            send_control(sock, {"kind": "refused", "message": str(exc)})
            continue
        except KeyboardInterrupt:  # the worker itself is being stopped, not the job failing
            raise
        except BaseException as exc:  # noqa: BLE001  the job's own failure (a SystemExit too): sent back
            tb = traceback.format_exc()
            try:
                frames = envelope.dumps(("error", exc, tb), "result")
            except Exception:  # noqa: BLE001  an exception that does not pickle: its traceback text still goes
                frames = envelope.dumps(("error", None, tb), "result")
            send_frames(sock, frames)
            continue
        try:
            frames = envelope.dumps(("ok", value, None), "result")
        except Exception as exc:  # noqa: BLE001  pickling raises whatever the result's __reduce__ raises
            frames = envelope.dumps(
                ("unpicklable", None, f"{type(exc).__name__}: {exc} (result of type {type(value).__name__})"), "result"
            )
        send_frames(sock, frames)


def main(argv: list[str]) -> None:
    try:
        serve(argv[1], argv[2])
    except (ConnectionError, EOFError, envelope.ProtocolError):
        pass
