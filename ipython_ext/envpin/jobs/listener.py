"""The executor's end of the job socket: a private folder, a listener, and hellos checked before anyone is trusted.

A ``ContainerExecutor``'s workers connect to a unix socket and say hello.
Anything able to reach that socket may connect, and a job's code runs in a
worker, so a connection is hostile until it proved otherwise:

* **Only workers this executor started are answered.**  Each start gets a
  one-time random token (``expect``), handed to that worker alone (its
  environment); a hello without a token that is expected is dropped, and a
  token is used once.
* **Nothing a peer sends stops the accept loop.**  Hellos are read without
  blocking, by one selector loop: a peer that says nothing is dropped after
  ``HANDSHAKE_SECONDS``, a bad length, header or kind at once, and at most
  ``MAX_PENDING`` connections wait for their hello (the oldest is dropped to
  make room, so a flood cannot lock real workers out for longer than it
  keeps flooding).  Running out of descriptors drops waiting connections
  and backs off instead of ending the loop; any other error drops the one
  connection it came from.
* **The socket lives in a private folder.**  ``FOLDER_BASE`` (one per user,
  0700, checked to be ours and not a link) holds one 0700 folder per
  executor; a worker container gets only its own executor's folder, mounted
  read-only at ``names.CONTAINER_JOB_SOCKETS`` (``envpin.jobs.worker_hosts``), so another
  executor's socket is not in its file system at all.
"""

from __future__ import annotations

import errno
import os
import queue
import secrets
import selectors
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable

from envpin.jobs import envelope

#: A connection that has not said a complete hello after this long is dropped.
HANDSHAKE_SECONDS = 10.0
#: Connections waiting for their hello, per executor; the oldest is dropped to make room.
MAX_PENDING = 32
#: Largest hello accepted (its JSON header: kind, slot, token, pid, environment).
MAX_HELLO = 16 * 1024
SOCKET_NAME = "jobs.sock"

_U64 = struct.Struct(">Q")
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def folder_base() -> str:
    """This user's folder for executor folders: ``$TMPDIR/envpin-jobs-UID``, 0700, ours, not a link.

    Made once; if the name is taken by something else (another user's
    folder, a link), a fresh private ``mkdtemp`` folder is used instead.
    """
    wanted = os.path.join(tempfile.gettempdir(), f"envpin-jobs-{os.geteuid()}")
    try:
        os.mkdir(wanted, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return _fallback_base()
    st = os.lstat(wanted)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
        return wanted
    return _fallback_base()


_fallback: str | None = None
_fallback_lock = threading.Lock()


def _fallback_base() -> str:
    global _fallback
    with _fallback_lock:
        if _fallback is None:
            _fallback = tempfile.mkdtemp(prefix="envpin-jobs-")
        return _fallback


def reset() -> None:
    """Forget the fallback folder (``envpin.reset_caches``): the next one that is needed is made anew."""
    global _fallback
    with _fallback_lock:
        _fallback = None


class _Pending:
    """A connection waiting for its hello: what it sent so far and until when it may take."""

    __slots__ = ("conn", "data", "deadline", "fd")

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn, self.data, self.deadline, self.fd = conn, b"", deadline, conn.fileno()


class JobListener:
    """The executor's socket in its private folder, and the thread that checks hellos."""

    def __init__(self) -> None:
        self.base = folder_base()
        self.folder = tempfile.mkdtemp(prefix="ex-", dir=self.base)
        self.socket_path = os.path.join(self.folder, SOCKET_NAME)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._expected: dict[str, queue.Queue[tuple[socket.socket, dict]]] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="envpin-accept", daemon=True)
        self._thread.start()

    # -- for the executor ------------------------------------------------------------------

    def open_to(self, uid: int, gid: int) -> None:
        """Let workers running as ``uid:gid`` (another user than this process) reach the socket.

        Root gives the folder and the socket to that user; anyone else opens
        them to all (the folder base stays 0700, so only a container that
        has this folder mounted can reach them).
        """
        if uid == os.geteuid():
            return
        if os.geteuid() == 0:
            os.chown(self.folder, uid, gid)
            os.chown(self.socket_path, uid, gid)
        else:
            os.chmod(self.folder, 0o711)
            os.chmod(self.socket_path, 0o666)

    def expect(self) -> str:
        """A new one-time token for a worker about to start."""
        token = secrets.token_hex(16)
        with self._lock:
            self._expected[token] = queue.Queue(maxsize=1)
        return token

    def forget(self, token: str) -> None:
        with self._lock:
            self._expected.pop(token, None)

    def wait(
        self, token: str, exit_status: Callable[[], int | None], timeout: float
    ) -> tuple[socket.socket, dict] | int | None:
        """The connection and hello of the worker given ``token``; its exit code if it ended first; None at timeout."""
        with self._lock:
            q = self._expected.get(token)
        if q is None:
            return None
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    return q.get(timeout=0.05)
                except queue.Empty:
                    code = exit_status()
                    if code is not None:
                        return code
            return None
        finally:
            self.forget(token)
            try:  # a hello that arrived just as we gave up: nobody will use it
                q.get_nowait()[0].close()
            except queue.Empty:
                pass

    def close(self) -> None:
        """Stop accepting, drop waiting connections, remove the folder."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        pending: dict[int, _Pending] = {}  # by file descriptor, in arrival order
        backoff_until = 0.0
        try:
            while not self._closing:
                now = time.monotonic()
                if backoff_until and now >= backoff_until:
                    backoff_until = 0.0
                    sel.register(self._listener, selectors.EVENT_READ, None)
                wake_at = [p.deadline for p in pending.values()] + ([backoff_until] if backoff_until else [])
                timeout = max(0.0, min(wake_at) - now) if wake_at else None
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        continue
                    if key.fileobj is self._listener:
                        if not self._accept(sel, pending):
                            sel.unregister(self._listener)  # out of descriptors: try again shortly
                            backoff_until = time.monotonic() + 0.1
                        continue
                    entry = pending.get(key.fd)
                    if entry is None:
                        continue
                    try:
                        self._read_hello(sel, pending, entry)
                    except Exception:  # noqa: BLE001  whatever one peer caused ends that peer, not the loop
                        self._drop(sel, pending, entry)
                now = time.monotonic()
                for entry in [p for p in pending.values() if p.deadline <= now]:
                    self._drop(sel, pending, entry)  # silent too long
        finally:
            for entry in list(pending.values()):
                self._drop(sel, pending, entry)
            sel.close()
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()

    def _accept(self, sel: selectors.BaseSelector, pending: dict[int, _Pending]) -> bool:
        """Accept what waits; False when out of descriptors (waiting connections were dropped to recover)."""
        for _ in range(64):  # a bounded batch per wake-up, so deadlines are still looked at
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    for entry in list(pending.values()):
                        self._drop(sel, pending, entry)
                    return False
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                return False  # unexpected: back off rather than spin or end the loop
            if len(pending) >= MAX_PENDING:
                self._drop(sel, pending, next(iter(pending.values())))
            try:
                conn.setblocking(False)
                entry = _Pending(conn, time.monotonic() + HANDSHAKE_SECONDS)
                sel.register(conn, selectors.EVENT_READ, None)
            except (OSError, ValueError):
                conn.close()
                continue
            pending[entry.fd] = entry
        return True

    def _read_hello(self, sel: selectors.BaseSelector, pending: dict[int, _Pending], entry: _Pending) -> None:
        try:
            chunk = entry.conn.recv(MAX_HELLO + 24 - len(entry.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sel, pending, entry)
            return
        entry.data += chunk
        try:
            hello = self._complete_hello(entry.data)
        except envelope.ProtocolError:
            self._drop(sel, pending, entry)
            return
        if hello is None:
            return  # more to come, within the deadline
        sel.unregister(entry.conn)
        del pending[entry.fd]
        token = hello.get("token")
        with self._lock:  # 128 random bits, used once: a lookup is enough
            q = self._expected.pop(token, None) if isinstance(token, str) else None
        if q is None:
            entry.conn.close()
            return
        entry.conn.setblocking(True)
        q.put((entry.conn, hello))

    @staticmethod
    def _complete_hello(data: bytes) -> dict | None:
        """The hello in ``data`` once complete (None: not yet); ProtocolError for anything but one hello."""
        if len(data) < 8:
            return None
        (n,) = _U64.unpack_from(data)
        if n > MAX_HELLO:
            raise envelope.ProtocolError(f"a hello of {n} bytes")
        if len(data) < 8 + n + 16:
            return None
        if len(data) > 8 + n + 16 or data[8 + n :] != bytes(16):  # no payload, no buffers, nothing after
            raise envelope.ProtocolError("a hello with a payload")
        hello = envelope.parse_header(data[8 : 8 + n], frozenset({"hello"}))
        hello["env"] = envelope.clean_environment(hello.get("env"))
        return hello

    @staticmethod
    def _drop(sel: selectors.BaseSelector, pending: dict[int, _Pending], entry: _Pending) -> None:
        pending.pop(entry.fd, None)
        try:
            sel.unregister(entry.conn)
        except (KeyError, ValueError, OSError):
            pass
        entry.conn.close()
