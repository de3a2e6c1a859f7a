"""Start one ipykernel in a container, wait until it answers, and explain when it does not.

This module is synchronous and knows nothing of jupyter_client: the
provisioner calls it from worker threads (so the server's event loop never
waits on Docker), and ``envpin launch`` (the fallback for clients that ignore
provisioners) calls it directly.

How the kernel is reached, without a port and without leaking the key:

* ``ipc`` (default with a local engine): the connection file and the five ZMQ
  unix sockets live in a private 0700 channel directory (``make_channel_dir``),
  parts of which are bind-mounted into the container at the same paths, so
  host and kernel name the same sockets.  The container needs no network for
  the channels at all.  Only what the kernel must write is mounted writable:
  ``sock/`` (its sockets) and ``control/`` (``%use_image`` requests); the
  connection file is mounted read-only and the channel directory itself is
  not mounted, so the kernel cannot replace any name the server later uses
  (the connection file, the two folders) by a link.
* ``tcp``: the kernel binds inside the container and each port is published on
  127.0.0.1 only; the in-container connection file is copied into the created
  (not yet started) container with ``put_archive``, readable by the kernel's
  user alone.

Either way the key travels only in a file: never in the command line, the
environment or the labels, all of which ``docker inspect`` shows to anyone
with engine access.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import zmq
from docker.types import DeviceRequest, Mount

from envpin import names, printable, safe_files
from envpin.entry import boot
from envpin.host import dialect, docker_client, images
from envpin.host.container_spec import base_options
from envpin.host.images import ResolvedImage
from envpin_provisioner.errors import ConfigError, KernelStartFailed
from envpin_provisioner.kernel import quota

#: Names of warm containers while they wait; a kernel that takes one renames it ``envpin-<kernel id>-...``.
WARM_NAME_PREFIX = "envpin-warm-"
#: Never forwarded: ipykernel's parent poller would watch a pid that means nothing in the container.
NEVER_FORWARDED = frozenset({"JPY_PARENT_PID", "PYTHONEXECUTABLE", "PYTHONPATH", "HOME", "PATH"})


@dataclass
class KernelLaunch:
    """Everything needed to start one kernel container; built by the provisioner or the CLI."""

    image: ResolvedImage
    kernel_id: str
    connection_info: dict[str, Any]  #: as the host side sees it
    connection_file: str  #: host path of the connection file
    python: str = "python3"
    cwd: str | None = None  #: the notebook folder, as the user names it: the kernel's working folder, same path
    #: The notebook folder pinned at the kernel's first start (``safe_files.PinnedDir``): its link-free path is
    #: what is mounted, checked before the container is created and again, from inside it, once it runs.
    folder: safe_files.PinnedDir | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    network_mode: str = "bridge"
    extra_mounts: list[Mount] = field(default_factory=list)
    mem_limit: str | int | None = None
    shm_size: int | str | None = None  #: /dev/shm size (None: Docker's default, 64 MB)
    cpu_limit: float | None = None
    gpus: str = ""
    extra_options: dict[str, Any] = field(default_factory=dict)
    role: str = "kernel"
    owner_pid: int | None = None
    mount_envpin: bool = True
    #: Variables envpin itself sets for this kernel (they win over passed-through ones).
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Extra ipykernel arguments, e.g. ``["--ext", "envpin"]`` for a pinned notebook.
    kernel_args: list[str] = field(default_factory=list)
    #: ipc only: the channel directory is one of ``make_channel_dir``'s (mount its parts, not all of it).
    private_channels: bool = False
    #: The channel directory, when the connection file is not directly in it (a warm container's hand-over folder).
    channel_root: str | None = None
    #: A warm container (``pool``): the server's hand-over folder it waits on, mounted read-only.
    handoff_dir: str | None = None

    @property
    def transport(self) -> str:
        return self.connection_info.get("transport", "tcp")

    @property
    def channel_dir(self) -> str:
        return self.channel_root or os.path.dirname(self.connection_file)

    def in_container_connection_file(self) -> str:
        return self.connection_file if self.transport == "ipc" else names.CONTAINER_TCP_CONNECTION_FILE


def parse_gpus(value: str) -> list[DeviceRequest]:
    """``docker run --gpus`` syntax: ``all``, a count, or ``device=0,1``."""
    value = (value or "").strip()
    if not value:
        return []
    if value == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if value.isdigit():
        return [DeviceRequest(count=int(value), capabilities=[["gpu"]])]
    if value.startswith("device="):
        ids = [d for d in value[len("device=") :].split(",") if d]
        return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    raise ConfigError(f"gpus='{value}' is not understood: use 'all', a count like '2', or 'device=0,1'.")


def shm_size_for(setting: str, mem_limit: str | int | None, engine_memory: int | None) -> int | str | None:
    """The /dev/shm size for the ``shm_size`` option: 'auto' is half the memory the container may use."""
    if not setting:
        return None
    if setting != "auto":
        return setting
    if mem_limit:
        from docker.utils import parse_bytes

        limit = parse_bytes(mem_limit) if isinstance(mem_limit, str) else int(mem_limit)
        return max(64 * 2**20, limit // 2)
    return max(64 * 2**20, engine_memory // 2) if engine_memory else None


def container_options(launch: KernelLaunch) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for ``launch``.

    Pure: no engine calls, so it is unit-testable and reviewable in one place.
    What all envpin containers share comes from ``envpin.host.container_spec``.
    """
    options = base_options(
        image_id=launch.image.id,
        reference=launch.image.reference,
        immutable=launch.image.immutable,
        role="pool" if launch.handoff_dir else launch.role,
        image_env=launch.image.env,
        user=launch.user,
        cwd=launch.cwd,
        cwd_source=launch.folder.real if launch.folder is not None else None,
        mount_envpin=launch.mount_envpin,
        owner_pid=launch.owner_pid,
        extra_labels={names.LABEL_KERNEL_ID: launch.kernel_id} if launch.kernel_id else None,
    )
    env = {**launch.env, **options["environment"]}
    env.update(launch.extra_env)
    mounts = options["mounts"]
    if launch.transport == "ipc":
        mounts[:0] = channel_mounts(launch)
    mounts.extend(launch.extra_mounts)
    if launch.handoff_dir:  # a warm container: it waits to be told its kernel's arguments (envpin.entry.warm_kernel)
        mounts.append(Mount(target=launch.handoff_dir, source=launch.handoff_dir, type="bind", read_only=True))
        command = [names.ENTRY_WARM_KERNEL, launch.handoff_dir]
        options["name"] = f"{WARM_NAME_PREFIX}{os.path.basename(launch.handoff_dir)}-{os.urandom(3).hex()}"
    else:
        command = ["ipykernel_launcher", "-f", launch.in_container_connection_file(), *launch.kernel_args]
        if launch.kernel_id:  # named like a pooled kernel's container: docker ps --filter name=envpin-<kernel id>
            options["name"] = f"envpin-{launch.kernel_id}-{os.urandom(3).hex()}"
    options.update(
        entrypoint=boot.entrypoint(launch.python),  # nothing imported from the notebook folder
        command=command,
        environment=env,
        network_mode=launch.network_mode,
        stdin_open=False,
        tty=False,
        detach=True,
    )
    if launch.transport == "tcp" and launch.network_mode != "host":
        ports = [launch.connection_info[f"{ch}_port"] for ch in ("shell", "iopub", "stdin", "control", "hb")]
        options["ports"] = {f"{p}/tcp": ("127.0.0.1", p) for p in ports}
    if launch.mem_limit:
        options["mem_limit"] = launch.mem_limit
    if launch.shm_size:
        options["shm_size"] = launch.shm_size
    if launch.cpu_limit:
        options["nano_cpus"] = int(launch.cpu_limit * 1e9)
    if launch.gpus:
        options["device_requests"] = parse_gpus(launch.gpus)
    options.update(launch.extra_options)
    return options


def _connection_tar(launch: KernelLaunch, uid: int, gid: int) -> bytes:
    info = dict(launch.connection_info)
    info["ip"] = "127.0.0.1" if launch.network_mode == "host" else "0.0.0.0"
    for k, v in list(info.items()):
        if isinstance(v, bytes):
            info[k] = v.decode()
    data = json.dumps(info, indent=1).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo(os.path.basename(names.CONTAINER_TCP_CONNECTION_FILE))
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), 0o600, uid, gid, int(time.time())
        tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _folder_changed(launch: KernelLaunch, why: str) -> KernelStartFailed:
    return KernelStartFailed(
        f"The notebook folder {launch.cwd} is not the folder this kernel started in any more ({why}): it was "
        "renamed, replaced or linked elsewhere since. envpin mounts only the folder it pinned at the kernel's "
        "first start, so it does not start a kernel there. Shut this kernel down and open the notebook again "
        "from where it is now."
    )


def check_folder(launch: KernelLaunch) -> None:
    """Before a container is created: the pinned notebook folder's path still leads to that folder, link-free."""
    if launch.folder is not None:
        try:
            launch.folder.check()
        except safe_files.FolderChanged as exc:
            raise _folder_changed(launch, exc.strerror or str(exc)) from None


def verify_folder_mount(container, launch: KernelLaunch, log: logging.Logger | logging.LoggerAdapter) -> None:
    """Once the container runs: what is mounted at the notebook folder is the pinned folder (same device, inode).

    The check before creation leaves a window (the engine resolves the
    source path itself, later, and a kernel that can write the folder's
    parent can race it); this closes it by looking, from the container's own
    root (``/proc/PID/root``), at what was really mounted.  The walk follows
    no link, inside the container either (an image whose path to the
    notebook folder holds a link would otherwise lead the look elsewhere on
    this machine), and it fails closed: a running container whose folder
    cannot be seen to be the pinned one does not become a kernel.  Only for a
    local engine, whose processes this machine's ``/proc`` shows.
    """
    if launch.folder is None or not launch.cwd:
        return
    container.reload()
    pid = (container.attrs.get("State") or {}).get("Pid") or 0
    if not pid or container.status != "running":
        return  # exited already: waiting for it reports why
    try:
        root = os.open(f"/proc/{int(pid)}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = safe_files.open_below(root, launch.cwd)
        finally:
            os.close(root)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        seen = (st.st_dev, st.st_ino)
    except OSError as exc:
        container.reload()
        if container.status != "running":
            return  # it exited meanwhile: waiting for it reports why
        log.warning("envpin: cannot see the notebook folder inside container %s: %s", container.short_id, exc)
        raise _folder_changed(
            launch, f"its path inside the image cannot be followed without a link ({exc.strerror or exc})"
        ) from None
    if seen != launch.folder.identity:
        raise _folder_changed(launch, "another folder was mounted in its place")


def start(client: docker.DockerClient, launch: KernelLaunch, log: logging.Logger | logging.LoggerAdapter):
    """Create and start the kernel container; remove it again if starting fails."""
    check_folder(launch)
    options = container_options(launch)
    try:
        container = dialect.create(client, **options)
    except docker.errors.APIError as exc:
        raise KernelStartFailed(
            f"The Docker engine refused to create a kernel container from image '{launch.image.reference}': "
            f"{exc.explanation or exc}. Check the kernel's options (mounts, network, limits, extra options)."
        ) from exc
    try:
        if launch.transport == "tcp":
            uid, _, gid = options["user"].partition(":")
            container.put_archive(
                os.path.dirname(names.CONTAINER_TCP_CONNECTION_FILE), _connection_tar(launch, int(uid), int(gid or uid))
            )
        container.start()
        if docker_client.is_local_client(client):
            verify_folder_mount(container, launch, log)
    except docker.errors.APIError as exc:
        remove(container)
        raise KernelStartFailed(_start_error(launch, exc)) from exc
    except BaseException:
        remove(container)
        raise
    log.info(
        "envpin: kernel %s started in container %s of image %s (%s)",
        launch.kernel_id,
        container.short_id,
        launch.image.reference,
        launch.image.immutable,
    )
    return container


def _start_error(launch: KernelLaunch, exc: docker.errors.APIError) -> str:
    text = str(exc.explanation or exc)
    ref = launch.image.reference
    if "executable file not found" in text or "no such file or directory" in text and launch.python in text:
        return (
            f"Image '{ref}' has no '{launch.python}' on its PATH, so no Python kernel can run in it. "
            "Use an image with Python and ipykernel installed, or set the provisioner's python option "
            "to the interpreter's path inside the image."
        )
    if "/tmp" in text and launch.transport == "tcp":
        return f"Could not copy the connection file into a container of '{ref}' (it has no /tmp): {text}."
    return f"The Docker engine could not start a kernel container of image '{ref}': {text}."


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


def _died(launch: KernelLaunch, exit_code: int, logs: str) -> KernelStartFailed:
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


def _heartbeat_url(launch: KernelLaunch) -> str:
    info = launch.connection_info
    if launch.transport == "ipc":
        return f"ipc://{info['ip']}-{info['hb_port']}"
    return f"tcp://127.0.0.1:{info['hb_port']}"


def socket_paths(launch: KernelLaunch) -> list[str]:
    """The five ipc socket paths of ``launch`` (in the kernel's socket folder)."""
    info = launch.connection_info
    return [f"{info['ip']}-{info[f'{ch}_port']}" for ch in ("shell", "iopub", "stdin", "control", "hb")]


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


def _check_sockets(launch: KernelLaunch) -> None:
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
    info, out = launch.connection_info, {}
    for ch in ("shell", "iopub", "stdin", "control", "hb"):
        path = f"{info['ip']}-{info[f'{ch}_port']}"
        try:
            st = os.lstat(path)  # a name in the kernel's socket folder: never follow it
            out[path] = (st.st_ino, st.st_ctime_ns)
        except OSError:
            pass
    return out


def wait_ready(
    container,
    launch: KernelLaunch,
    timeout: float,
    log: logging.Logger | logging.LoggerAdapter,
    replacing: dict[str, tuple[int, int]] | None = None,
) -> None:
    """Return when the kernel answers its heartbeat; raise with its logs if it dies or times out.

    A container that exits (no ipykernel, a crash) is reported at once with its
    last log lines instead of after the timeout.  The heartbeat is a REQ/REP
    echo that ipykernel answers from a thread as soon as its sockets are bound,
    so it works the same for both transports and costs a millisecond.

    ``replacing`` (ipc only): the socket inodes of a kernel still running on
    the same paths (a move).  Its heartbeat would answer for the new one, so
    the new kernel counts as ready only once it has bound every path anew.
    """
    ctx: zmq.Context = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    next_state_check = 0.0
    sock = None
    try:
        while True:
            now = time.monotonic()
            if replacing and any(socket_inodes(launch).get(p) == ino for p, ino in replacing.items()):
                pass  # the old kernel still owns a path: not our heartbeat yet
            elif sock is None:
                sock = ctx.socket(zmq.REQ)
                sock.linger = 0
                sock.setsockopt(zmq.RECONNECT_IVL, 10)
                server_key = launch.connection_info.get("curve_publickey")
                if server_key:  # the kernel's sockets speak CurveZMQ: so must this probe
                    sock.curve_serverkey = server_key.encode() if isinstance(server_key, str) else server_key
                    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.connect(_heartbeat_url(launch))
                sock.send(b"envpin-ready?")
                sent = now
            if sock is None:
                time.sleep(0.02)
            elif sock.poll(20):
                sock.recv()
                _check_sockets(launch)
                return
            elif now - sent > 1.0:  # a reply lost to a half-open connection: start over
                sock.close()
                sock = None
            if now >= next_state_check:
                next_state_check = now + 0.15
                container.reload()
                if container.status in ("exited", "dead"):
                    code = container.attrs.get("State", {}).get("ExitCode", -1)
                    raise _died(launch, code, logs_tail(container))
            if now >= deadline:
                logs = logs_tail(container)
                raise KernelStartFailed(
                    f"The kernel in image '{launch.image.reference}' did not answer within {timeout:.0f}s "
                    "(launch_timeout). Raise launch_timeout if the image is slow to start."
                    + (f" Its last output:\n{logs}" if logs else "")
                )
    finally:
        if sock is not None:
            sock.close()


#: Remove a container whatever its state, tolerating exactly 404 (gone) and 409 (removal in progress).
remove = images.remove


def state(container) -> tuple[str, int | None]:
    """``(status, exit code or None while running)``; a vanished container counts as exited (-1)."""
    try:
        container.reload()
    except docker.errors.NotFound:
        return "removed", -1
    if container.status in ("created", "running", "restarting", "paused"):
        return container.status, None
    return container.status, container.attrs.get("State", {}).get("ExitCode", -1)


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


#: Inside a channel directory: the kernel's ipc sockets, and the %use_image conversation.
SOCKET_DIR = "sock"
CONTROL_DIR = "control"
CONNECTION_FILE = "kernel.json"


def channel_mounts(launch: KernelLaunch) -> list[Mount]:
    """The bind mounts that give the kernel its channels (ipc transport).

    A private channel directory (``make_channel_dir``) is not mounted whole:
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


#: Seconds a channel folder's removal may take before what is left stays (its key is gone first).
REMOVAL_BUDGET = 60.0


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

    The key goes first (``remove_connection_files``); the rest is removed
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
