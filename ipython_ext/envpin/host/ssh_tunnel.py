"""One OpenSSH ControlMaster per remote host: its engine socket, and kernels' channel sockets, as local unix sockets.

Why not docker-py's own SSH transport (``tests/remote/README.md`` has the
measurements): its OpenSSH mode starts one ``ssh`` per HTTP request and
ignores the client's ``timeout`` (a stopped remote engine blocked a call for
as long as it stayed stopped); its paramiko mode ignores most of
``~/.ssh/config``, can block 3600 s opening a channel, and never recovers
from a dropped connection.  Here one ``ssh -M`` per destination holds the
connection (so ``~/.ssh/config``, the agent, ``known_hosts``, ProxyJump all
apply, as for the user's own ``ssh``), and forwards the remote engine's
socket to a socket in a private 0700 folder of this machine: docker-py
talks ``unix://`` to it, with its timeouts working, and needs no ``docker``
CLI on the remote host.  Kernels' ZMQ sockets are added to the same master
with ``ssh -O forward -L local.sock:remote.sock`` and removed with ``-O cancel``.

Only ``-L`` (local to remote) forwards exist: nothing on the remote host,
and nothing in a container there, can open a connection to this machine
through the tunnel.  Forwards are unix sockets: no port listens on either side.

A dropped link: the master exits within ``ServerAliveInterval`` x
``ServerAliveCountMax`` (6 s); a watcher thread notices, starts a new master
(``ConnectTimeout`` 5 s) with the same socket paths and re-adds the forwards,
so clients holding the paths keep working.  Until then a connection to a
forwarded socket is refused at once: a call fails in seconds, never hangs.

Standard library only (the kernel side's host entry points use it too).
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from envpin.errors import EnvpinError

#: The remote engine's socket when the URL does not name one (Docker's; a Podman URL carries its own path).
DEFAULT_REMOTE_SOCKET = "/var/run/docker.sock"
#: Seconds for the TCP+SSH handshake; keep-alives every 2 s, 3 missed = the link is dead (6 s).
CONNECT_TIMEOUT = 5
ALIVE_INTERVAL = 2
ALIVE_COUNT = 3
#: Seconds between the watcher's looks at a master.
WATCH_INTERVAL = 0.5

_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]%-]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


class TunnelError(EnvpinError):
    """The SSH connection to a remote engine could not be made or was lost.

    Fix: check that ``ssh USER@HOST true`` works for this user without a prompt (a key in the agent or
    ``~/.ssh/config``, the host in ``known_hosts``) and that the remote host is up.
    """


@dataclass(frozen=True)
class SshTarget:
    """Where an ``ssh://[user@]host[:port][/path/to/engine.sock]`` URL leads."""

    user: str
    host: str
    port: int | None
    remote_socket: str

    @property
    def destination(self) -> str:
        """The canonical URL (without the socket path when it is Docker's default)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        path = "" if self.remote_socket == DEFAULT_REMOTE_SOCKET else self.remote_socket
        return f"ssh://{user}{self.host}{port}{path}"

    def ssh_args(self) -> list[str]:
        """The destination part of an ``ssh`` command line (after ``--``, so a host is never read as an option)."""
        args = []
        if self.user:
            args += ["-l", self.user]
        if self.port:
            args += ["-p", str(self.port)]
        return [*args, "--", self.host]


def parse(url: str) -> SshTarget:
    """Parse an ``ssh://`` engine URL (Docker's, or Podman's with the socket path); refuse anything odd."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname or parts.query or parts.fragment:
        raise EnvpinError(
            f"'{url}' is not an SSH engine address: use ssh://[USER@]HOST[:PORT] (Docker) or "
            "ssh://[USER@]HOST[:PORT]/run/user/UID/podman/podman.sock (Podman)."
        )
    user = unquote(parts.username or "")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise EnvpinError(f"The port in engine address '{url}' is not a number.") from None
    path = unquote(parts.path or "") or DEFAULT_REMOTE_SOCKET
    if (
        (user and not _USER_RE.match(user))
        or not _HOST_RE.match(host)
        or host.startswith("-")
        or not path.startswith("/")
        or "\0" in path
        or "\n" in path
    ):
        raise EnvpinError(f"Engine address '{url}' has a user, host or socket path envpin does not accept.")
    return SshTarget(user, host, port, path)


def silent_socket_message(url: str, cause: object) -> str | None:
    """The error for an ``ssh://`` URL naming a socket path that nothing serves; None for Docker's default path.

    The SSH connection stands and the forward is accepted (OpenSSH checks the
    remote path only on connect): what does not answer is the service behind
    the path, on a Podman host most often the user's ``podman.socket`` unit,
    which does not run without a login unless lingering is on.
    """
    try:
        target = parse(url)
    except EnvpinError:
        return None
    if target.remote_socket == DEFAULT_REMOTE_SOCKET:
        return None
    login = f"{target.user}@{target.host}" if target.user else target.host
    user = target.user or "that user"
    return (
        f"Nothing answers at {target.remote_socket} on {target.host} ({cause}), so envpin cannot reach the engine "
        f"at {url}. For rootless Podman that socket is served by the user's podman.socket unit: as {user} there, "
        f"run systemctl --user enable --now podman.socket, and sudo loginctl enable-linger {user} so that it runs "
        f"without a login session (or keep podman system service --time=0 unix://{target.remote_socket} running); "
        f"ssh {login} podman info --format '{{{{.Host.RemoteSocket.Path}}}}' prints the path to use. "
        "For a Docker engine, leave the path out: ssh://USER@HOST."
    )


def _private_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.access(base, os.W_OK):
        base = None
    return tempfile.mkdtemp(prefix="envpin-ssh-", dir=base)  # 0700; short: socket paths max 107 bytes


class Master:
    """One ControlMaster to ``target`` and its forwards (local socket -> remote socket).  Thread-safe, blocking."""

    def __init__(self, target: SshTarget, ssh: str = "ssh") -> None:
        self.target = target
        self.ssh = shutil.which(ssh) or ssh
        self.folder = _private_dir()
        self.control = os.path.join(self.folder, "ctl")
        self.engine_socket = os.path.join(self.folder, "engine.sock")
        self._forwards: dict[str, str] = {}  # local path -> remote path (channel sockets)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._last_error = ""
        self._watcher: threading.Thread | None = None
        self._holders = 0  #: kernels (and their starts) using this host now; none: the master process ends

    # -- the master process ------------------------------------------------------------

    def _options(self) -> list[str]:
        return [
            "-o", "BatchMode=yes",  # never a password prompt: a server process has no one to ask
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes",
            "-o", "StreamLocalBindMask=0177",
            "-o", "ClearAllForwardings=no",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "PermitLocalCommand=no",
        ]  # fmt: skip

    def hold(self) -> None:
        """A kernel start begins using this host: connect (or check the connection) and keep it until :meth:`release`."""
        with self._lock:
            self._holders += 1
        try:
            self.start()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """A kernel is done with this host; the last one ends the master process (no ssh stays behind idle).

        The master stays known with the same socket paths: the next :meth:`hold` starts a new process, and
        the engine client holding the forwarded engine socket works again.
        """
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders or self._proc is None:
                return
            self._stop_process()
            self._forwards.clear()

    def start(self) -> None:
        """Make the connection (or check it is up); raise :class:`TunnelError` within seconds when it cannot be."""
        with self._lock:
            if self._closed:
                raise TunnelError(f"The SSH connection to {self.target.destination} was closed.")
            if self._proc is not None and self._proc.poll() is None:
                return
            self._spawn()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="envpin-ssh-watch", daemon=True)
            self._watcher.start()

    def _spawn(self) -> None:
        try:  # a killed master leaves its control socket, and a new one would then run without multiplexing
            os.unlink(self.control)
        except FileNotFoundError:
            pass
        argv = [
            self.ssh, "-M", "-S", self.control, "-N", "-n", *self._options(),
            "-L", f"{self.engine_socket}:{self.target.remote_socket}",
            *self.target.ssh_args(),
        ]  # fmt: skip
        with tempfile.TemporaryFile() as err:  # the master keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + CONNECT_TIMEOUT + 10
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    err.seek(0)
                    self._last_error = err.read().decode(errors="replace").strip()[-600:]
                    raise TunnelError(
                        f"envpin could not open an SSH connection to {self.target.destination} for its Docker "
                        f"engine: {self._last_error or 'ssh exited with code ' + str(proc.returncode)}. Check that "
                        f"'ssh {' '.join(self.target.ssh_args()[:-2] + [self.target.host])} true' works for this "
                        "user without a prompt (a key in the agent or ~/.ssh/config, the host in known_hosts)."
                    )
                if os.path.exists(self.engine_socket) and self._listening():
                    break
                time.sleep(0.01)  # a kernel's start waits on this: the connection is up within ~0.2 s
            else:
                proc.kill()
                proc.wait()
                raise TunnelError(
                    f"The SSH connection to {self.target.destination} did not come up within "
                    f"{CONNECT_TIMEOUT + 10}s; check that the host is reachable (ssh {self.target.host} true)."
                )
        self._proc = proc
        for local, remote in list(self._forwards.items()):  # a new master after a drop: the same paths again
            self._forward(local, remote)

    def _control_cmd(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.ssh, "-S", self.control, *args, *self.target.ssh_args()],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _listening(self) -> bool:
        """The master accepts on its control socket: what ``ssh -O check`` asks, without starting a process.

        ssh binds its ``-L`` forwards, then the control socket, once the connection is authenticated: the
        engine socket and an accepting control socket together mean the master is up.
        """
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(self.control)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def alive(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def _watch(self) -> None:
        """Restart a master that died (a dropped link), until closed; never raises."""
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                if self._closed:
                    return
                if self._proc is None or self._proc.poll() is None:  # idle (released) or up
                    continue
                try:
                    self._spawn()
                except (TunnelError, OSError, subprocess.SubprocessError):
                    pass  # try again; meanwhile connections to the forwarded sockets are refused at once

    # -- forwards ------------------------------------------------------------------------

    def _forward(self, local: str, remote: str) -> None:
        done = self._control_cmd("-O", "forward", "-L", f"{local}:{remote}")
        if done.returncode != 0:
            raise TunnelError(
                f"Could not forward {remote} on {self.target.destination} through SSH: {done.stderr.strip()[-300:]}"
            )

    def forward(self, local: str, remote: str) -> None:
        """Make ``local`` (a socket path in a private folder here) lead to ``remote`` (a socket path there)."""
        with self._lock:
            self.start()
            if self._forwards.get(local) == remote:
                if os.path.exists(local):
                    return
                # The socket file went while ssh still listens on it: jupyter_client removes a kernel's ipc
                # files at each restart (cleanup_ipc_files).  Drop that forward, then make it again.
                try:
                    self._control_cmd("-O", "cancel", "-L", f"{local}:{remote}")
                except subprocess.TimeoutExpired:
                    pass
            self._forward(local, remote)
            self._forwards[local] = remote

    def forward_all(self, pairs: list[tuple[str, str]]) -> None:
        """:meth:`forward` for many at once: one ``ssh -O forward`` with every ``-L`` (a kernel's five channels).

        Each ``-O`` call is a process and a round trip through the master (~12 ms); a start used to pay five.
        """
        with self._lock:
            self.start()
            wanted = [(local, remote) for local, remote in pairs if not (
                self._forwards.get(local) == remote and os.path.exists(local)
            )]  # fmt: skip
            stale = [(local, remote) for local, remote in wanted if self._forwards.get(local) == remote]
            if stale:  # their socket files went while ssh still listens (see forward): drop them first
                try:
                    self._control_cmd("-O", "cancel", *[a for lr in stale for a in ("-L", f"{lr[0]}:{lr[1]}")])
                except subprocess.TimeoutExpired:
                    pass
            if not wanted:
                return
            done = self._control_cmd("-O", "forward", *[a for lr in wanted for a in ("-L", f"{lr[0]}:{lr[1]}")])
            if done.returncode != 0:
                raise TunnelError(
                    f"Could not forward {len(wanted)} socket(s) on {self.target.destination} through SSH: "
                    f"{done.stderr.strip()[-300:]}"
                )
            self._forwards.update(wanted)

    def cancel(self, local: str) -> None:
        """Remove a forward and its socket file (ssh leaves the file behind)."""
        with self._lock:
            remote = self._forwards.pop(local, None)
            if remote is not None and self.alive():
                try:
                    self._control_cmd("-O", "cancel", "-L", f"{local}:{remote}")
                except subprocess.TimeoutExpired:
                    pass
        try:
            os.unlink(local)
        except FileNotFoundError:
            pass

    # -- commands on the remote host -----------------------------------------------------

    def run(self, script: str, timeout: float = 30) -> str:
        """Run ``script`` (a POSIX shell script envpin wrote, never user text) on the remote host; its stdout."""
        self.start()
        done = subprocess.run(
            [
                self.ssh,
                "-S",
                self.control,
                "-o",
                "BatchMode=yes",
                *self.target.ssh_args(),
                "sh -c " + shlex.quote(script),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise TunnelError(
                f"A command envpin runs on {self.target.destination} failed ({done.returncode}): "
                f"{done.stderr.strip()[-400:]}"
            )
        return done.stdout

    def _stop_process(self) -> None:
        """End the master process, its forwards with it (under the lock); ssh leaves the socket files: remove them."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                self._control_cmd("-O", "exit", timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in [self.engine_socket, self.control, *self._forwards]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """End the master (its forwards with it) and remove the private folder."""
        with self._lock:
            self._closed = True
            self._stop_process()
            self._forwards.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The master process's id while it runs (tests and ``envpin doctor`` look at it)."""
        with self._lock:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def kill_for_test(self) -> None:
        """Kill the master process (tests: a dropped link) without closing the tunnel."""
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()


_masters: dict[SshTarget, Master] = {}
_masters_lock = threading.Lock()


def master_for(url: str) -> Master:
    """This process's master for ``url`` (made and connected on first use).  Blocking."""
    target = parse(url)
    with _masters_lock:
        master = _masters.get(target)
        if master is None:
            master = _masters[target] = Master(target)
    master.start()
    return master


def hold(url: str) -> Master:
    """:func:`master_for`, held for one kernel until :func:`release` (blocking: connects when idle)."""
    target = parse(url)
    with _masters_lock:
        master = _masters.get(target)
        if master is None:
            master = _masters[target] = Master(target)
    master.hold()
    return master


def release(url: str) -> None:
    """One kernel is done with ``url``'s host (see :meth:`Master.release`).  Blocking, never raises for a lost host."""
    master = known(url)
    if master is not None:
        master.release()


def known(url: str) -> Master | None:
    """The master for ``url`` if this process has one (no connection made)."""
    try:
        target = parse(url)
    except EnvpinError:
        return None
    with _masters_lock:
        return _masters.get(target)


def url_of_socket(path: str) -> str | None:
    """The ``ssh://`` URL whose engine socket is ``path``, or None (a real local engine)."""
    with _masters_lock:
        for master in _masters.values():
            if master.engine_socket == path:
                return master.target.destination
    return None


def close_all() -> None:
    """Close every SSH master of this process (its forwards with it): at exit, and as ``reset()`` for tests."""
    with _masters_lock:
        masters = list(_masters.values())
        _masters.clear()
    for master in masters:
        master.close()


def reset() -> None:
    """``envpin.STATEFUL_MODULES``: listed after docker_client, whose clients talk through these masters."""
    close_all()


atexit.register(close_all)
