"""One kernel on another machine's engine reached over TCP+TLS: its channels carried by the engine's own TLS.

A TLS engine (``tcp://HOST:2376``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``)
gives envpin exactly one way to that machine: the Docker API, over a TLS
connection both ends authenticate (the client certificate).  Publishing the
kernel's ports there would open them on that machine's network, for anyone
who can reach it.  So nothing is published: the kernel binds ``ipc`` sockets
in a folder private to its container (``/tmp/envpin-channels``, 0700, the
kernel's user), and each of the server's ZMQ connections is carried by an
``exec`` in the container (``docker exec -i python3 -c RELAY PATH``): the
relay joins its stdin and stdout to the kernel's socket, and the exec's
stream is the engine API's hijacked TLS connection.  On this machine each
channel is a unix socket in the kernel's 0700 channel folder (where the
Jupyter server connects, as for a local ipc kernel).

What crosses the network: the Docker API and the channels' bytes, inside the
engine's TLS; no new listener on either machine; nothing else in that
machine (its other containers, its users) can reach the channels.  The
connection file (the key) travels once in a ``put_archive`` into the created
container, mode 0600 for the kernel's user; a relay's command line names only
a socket path.  The working folder is the container's own
``/tmp/envpin-work`` (that machine's folders are out of reach without SSH,
and no path of this machine exists there): it lasts as long as the container,
so a restart starts with an empty one.  ``ssh://`` with ``remote_root`` keeps
files on that machine instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import selectors
import socket
import tarfile
import threading
import time
from typing import Any

import docker.errors

from envpin import names
from envpin.host import dialect
from envpin_provisioner.errors import KernelStartFailed
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.remote import package_volume

#: In the container: the kernel's socket folder (its own layer, never a mount) and its working folder.
CHANNEL_DIR = "/tmp/envpin-channels"
WORK_DIR = "/tmp/envpin-work"
#: The relay run by each exec (``python3 -I``: nothing from the working folder or PYTHON* variables): wait,
#: bounded, for the kernel's socket, then join it to stdin/stdout.
#: It reads the server's first bytes before it connects, so the engine has sent the exec's HTTP answer
#: (read by the SDK) before the kernel's first byte can follow it on the connection.
RELAY = (
    "import os,socket,sys,time,threading\n"
    "p=sys.argv[1];i=sys.stdin.buffer.raw;o=sys.stdout.buffer.raw\n"
    "first=os.read(i.fileno(),65536)\n"
    "if not first: sys.exit(0)\n"
    "s=socket.socket(socket.AF_UNIX);end=time.monotonic()+60\n"
    "while True:\n"
    " try: s.connect(p); break\n"
    " except OSError:\n"
    "  if time.monotonic()>end: sys.exit(1)\n"
    "  time.sleep(0.05)\n"
    "s.sendall(first)\n"
    "def up():\n"
    " while True:\n"
    "  d=os.read(i.fileno(),65536)\n"
    "  if not d: os._exit(0)\n"
    "  s.sendall(d)\n"
    "threading.Thread(target=up,daemon=True).start()\n"
    "while True:\n"
    " d=s.recv(65536)\n"
    " if not d: os._exit(0)\n"
    " while d: d=d[o.write(d):]\n"
)
#: Seconds a connection's exec may take to be created and started before the connection is dropped.
EXEC_TIMEOUT = 20


def _tar(entries: list[tuple[str, bytes | None, int]], uid: int, gid: int) -> bytes:
    """A tar of ``(name, data or None for a folder, mode)`` owned by ``uid:gid`` (for ``put_archive`` into /tmp)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, int(time.time())
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _in_container_info(info: dict[str, Any]) -> bytes:
    shaped = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    shaped.update(transport="ipc", ip=posixpath.join(CHANNEL_DIR, "k"))
    return json.dumps(shaped, indent=1).encode()


def container_options(launch: kernel_launch.KernelLaunch, package: str | None, engine: str = "") -> dict[str, Any]:
    """``containers.create`` arguments on a TLS engine: no mount of a path of either machine, no port.  Pure.

    ``engine``: that engine's address, which the kernel is told (``names.REMOTE_ENGINE``).
    """
    shaped = dataclasses.replace(
        launch,
        connection_info={**launch.connection_info, "transport": "tcp"},  # no channel bind mounts: put_archive
        cwd=WORK_DIR,
        folder=None,
        private_channels=False,
        handoff_dir=None,
    )
    options = kernel_launch.container_options(shaped)
    if engine:
        options["environment"][names.REMOTE_ENGINE] = engine
    options.pop("ports", None)  # nothing is published: the channels are carried by execs
    mounts = []
    for m in options["mounts"]:
        if m.get("Target") == WORK_DIR:
            continue  # the container's own folder, made by put_archive
        if m.get("Source") == names.PACKAGE_DIR:
            if package:
                mounts.append(package_volume.mount(package))
            continue
        mounts.append(m)
    options["mounts"] = mounts
    return options


class ChannelRelay:
    """The kernel's channels on this machine: a unix socket per channel, each connection carried by an exec.

    Threads: one accepting per channel, one per connection (it alone reads
    and writes that connection's TLS socket: an SSL object is not shared
    between threads).  :meth:`close` stops accepting, shuts down both sockets
    of every connection and removes the socket files.  Both, because the
    kernel can stop its relay process (SIGSTOP): then the exec's stdin is
    full, the connection's thread blocks in a send to the engine, and only
    shutting that socket down wakes it (closing the local side alone left
    the thread, and the engine's exec, behind).
    """

    def __init__(self, client: Any, container_id: str, user: str, python: str, sockets: dict[str, str]) -> None:
        self._client = client
        self._container_id = container_id
        self._user = user
        self._python = python
        self._sockets = sockets  # local socket path -> the kernel's socket path in the container
        self._listeners: list[socket.socket] = []
        #: The local socket files as this relay bound them: after a move the next relay binds the same names.
        self._bound: dict[str, tuple[int, int]] = {}
        #: Each open connection's local socket -> its exec's socket on the engine (None while the exec starts).
        self._open: dict[socket.socket, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._log = logging.getLogger("envpin")

    def start(self) -> None:
        """Bind every local socket (mode 0600, in the kernel's 0700 channel folder) and start accepting."""
        old_mask = os.umask(0o177)
        try:
            for local, inside in self._sockets.items():
                try:
                    os.unlink(local)
                except FileNotFoundError:
                    pass
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(local)
                st = os.lstat(local)
                self._bound[local] = (st.st_ino, st.st_ctime_ns)
                listener.listen(16)
                self._listeners.append(listener)
                threading.Thread(
                    target=self._accept, args=(listener, inside), name="envpin-tls-accept", daemon=True
                ).start()
        finally:
            os.umask(old_mask)

    def _accept(self, listener: socket.socket, inside: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._open[conn] = None
            threading.Thread(target=self._carry, args=(conn, inside), name="envpin-tls-relay", daemon=True).start()

    def _exec_socket(self, inside: str) -> Any:
        api = self._client.api
        exec_id = api.exec_create(
            self._container_id, [self._python, "-I", "-c", RELAY, inside], stdin=True, stdout=True, stderr=False,
            tty=False, user=self._user,
        )["Id"]  # fmt: skip
        return api.exec_start(exec_id, socket=True)

    def _carry(self, conn: socket.socket, inside: str) -> None:
        remote = None
        try:
            remote = self._exec_socket(inside)
            remote.settimeout(None)
            with self._lock:
                if self._closed:  # closed while the exec started: close() could not reach this socket
                    return
                self._open[conn] = remote
            self._pump(conn, remote)
        except (OSError, docker.errors.DockerException) as exc:  # the engine or the kernel went away
            self._log.debug("envpin: a channel connection to %s ended: %s", self._container_id[:12], exc)
        finally:
            with self._lock:
                self._open.pop(conn, None)
            for s in (conn, remote):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    @staticmethod
    def _pump(conn: socket.socket, remote: Any) -> None:
        """Copy both ways until either side ends; the exec's output comes in frames (8-byte headers)."""
        selector = selectors.DefaultSelector()
        selector.register(conn, selectors.EVENT_READ, "local")
        selector.register(remote, selectors.EVENT_READ, "remote")
        pending = b""
        try:
            while True:
                # TLS may hold decrypted bytes the socket no longer shows as readable: read those first.
                buffered = bool(getattr(remote, "pending", lambda: 0)())
                ready = [key.data for key, _ in selector.select(timeout=0 if buffered else 5)]
                if buffered and "remote" not in ready:
                    ready.append("remote")
                if "local" in ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    remote.sendall(data)
                if "remote" in ready:
                    data = remote.recv(65536)
                    if not data:
                        return
                    pending += data
                    while len(pending) >= 8:
                        size = int.from_bytes(pending[4:8], "big")
                        if len(pending) < 8 + size:
                            break
                        if pending[0] == 1:  # stdout: the kernel's bytes (stderr is not attached)
                            conn.sendall(pending[8 : 8 + size])
                        pending = pending[8 + size :]
        finally:
            selector.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners, self._listeners = self._listeners, []
            conns = list(self._open.items())
        for s in listeners:
            s.close()
        for conn, remote in conns:
            # Shut down, not close: the connection's thread may be inside a call on either socket; it closes them.
            for s in (conn, remote):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        for local, bound in self._bound.items():
            try:
                st = os.lstat(local)
                if (st.st_ino, st.st_ctime_ns) == bound:  # not a name the next kernel's relay took over (a move)
                    os.unlink(local)
            except FileNotFoundError:
                pass


_relays: dict[str, ChannelRelay] = {}  # container id -> its relay
_relays_lock = threading.Lock()


def start(client: Any, launch: kernel_launch.KernelLaunch, log: logging.Logger | logging.LoggerAdapter) -> Any:
    """Create and start the kernel container on the TLS engine, then its channel relay.  Blocking."""
    package = package_volume.ensure(client, launch.image.id) if launch.mount_envpin else None
    engine = re.sub(r"^https://", "tcp://", client.api.base_url)  # as DOCKER_HOST names it
    options = container_options(launch, package, engine)
    try:
        container = dialect.create(client, **options)
    except docker.errors.APIError as exc:
        raise KernelStartFailed(
            f"The Docker engine at {client.api.base_url} refused to create a kernel container from image "
            f"'{launch.image.reference}': {exc.explanation or exc}. Check the kernel's options (mounts, network, "
            "limits, extra options): with an engine on another machine, paths name that machine's folders."
        ) from exc
    uid, _, gid = options["user"].partition(":")
    entries: list[tuple[str, bytes | None, int]] = [
        (os.path.basename(CHANNEL_DIR), None, 0o700),
        (os.path.basename(WORK_DIR), None, 0o700),
        (os.path.basename(names.CONTAINER_CONTROL_DIR), None, 0o700),  # %use_image (remote.control_relay)
        (os.path.basename(names.CONTAINER_TCP_CONNECTION_FILE), _in_container_info(launch.connection_info), 0o600),
    ]
    sockets = relay_sockets(launch)
    try:
        container.put_archive("/tmp", _tar(entries, int(uid), int(gid or uid)))
        container.start()
        relay = ChannelRelay(client, container.id, options["user"], launch.python, sockets)
        relay.start()
    except BaseException:
        kernel_container.remove(container)
        raise
    with _relays_lock:
        _relays[container.id] = relay
    log.info(
        "envpin: kernel %s started in container %s of image %s on %s (channels over the engine's TLS)",
        launch.kernel_id, container.short_id, launch.image.reference, client.api.base_url,
    )  # fmt: skip
    return container


def stop(container_id: str) -> None:
    """End the relay of ``container_id``'s kernel (its local sockets go).  Never raises; nothing to do if none."""
    with _relays_lock:
        relay = _relays.pop(container_id, None)
    if relay is not None:
        relay.close()


def reclaim(container_id: str) -> None:
    """A move failed: the relay of ``container_id`` (the kernel that stays) binds its local names again.  Blocking.

    The new kernel's relay had taken them over (its own listeners are gone
    with it); established connections were never affected.
    """
    with _relays_lock:
        relay = _relays.get(container_id)
    if relay is not None and not relay._closed:
        relay.start()


def remove(container: Any) -> None:
    """End the relay and remove the container (a start cancelled midway, a shutdown).  Blocking."""
    stop(container.id)
    kernel_container.remove(container)


def reset() -> None:
    """End every relay (``envpin_provisioner.STATEFUL_MODULES``; tests, with no kernel running)."""
    with _relays_lock:
        relays = list(_relays.values())
        _relays.clear()
    for relay in relays:
        relay.close()


def private_folders(user: str) -> bytes:
    """The archive that makes the container's channel and working folders (0700, ``user``'s) before it starts."""
    uid, _, gid = user.partition(":")
    entries: list[tuple[str, bytes | None, int]] = [
        (os.path.basename(CHANNEL_DIR), None, 0o700),
        (os.path.basename(WORK_DIR), None, 0o700),
    ]
    return _tar(entries, int(uid), int(gid or uid))


def start_relay(client: Any, container: Any, user: str, launch: kernel_launch.KernelLaunch) -> None:
    """The channel relay of a kernel started otherwise than by :func:`start` (a remote pool's, ``remote_pool``)."""
    relay = ChannelRelay(client, container.id, user, launch.python, relay_sockets(launch))
    relay.start()
    with _relays_lock:
        _relays[container.id] = relay


def relay_sockets(launch: kernel_launch.KernelLaunch) -> dict[str, str]:
    """Each channel's local socket path (where the server connects) -> the kernel's socket path in the container."""
    info = launch.connection_info
    return {
        f"{info['ip']}-{info[f'{ch}_port']}": posixpath.join(CHANNEL_DIR, f"k-{info[f'{ch}_port']}")
        for ch in channels.CHANNELS
    }
