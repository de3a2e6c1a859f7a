"""One kernel on the engine of another machine reached over SSH: its folders there, its channels, its container.

What crosses the network, all of it inside the one SSH connection of that
host (``envpin.host.ssh_tunnel``):

* the Docker API (the remote engine's socket forwarded to a private local one);
* the kernel's five ZMQ channels: the kernel binds ``ipc`` sockets in a 0700
  folder of the remote user (``R/sock``), and each is forwarded to the same
  name in the kernel's local 0700 channel folder, which is where the Jupyter
  server connects.  No port listens on either machine; only ``-L`` forwards
  exist, so nothing over there can open a connection to this machine;
* the connection file (the key) travels once, in a ``put_archive`` into the
  container (right after its start, while it imports ipykernel; ``remote.handover``),
  mode 0600 for the kernel's user: never a command line,
  an environment variable, a label or a file on the remote host's disk
  outside the container.

The remote host's side of a kernel is one ``mktemp -d`` folder ``R`` of the
SSH user there: ``R/sock`` for the channels and, without ``remote_root``,
``R/work``, the kernel's scratch working folder.  All of ``R`` goes at
shutdown.  The kernel runs as the SSH user's uid:gid there (its files in
``remote_root`` are that user's, as if they had been made over SSH).

Nothing of this machine is mounted: envpin's package comes from a volume on
that engine (``package_volume``), the working folder is a folder of that
machine (``remote_root`` or the scratch folder), and the ``mounts`` option
names paths there, each checked to exist before the container is made.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import shlex
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from envpin import names
from envpin.host import dialect, ssh_tunnel
from envpin_provisioner.errors import ConfigError, KernelStartFailed
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.remote import handover, package_volume

#: What :func:`prepare` prints: R, uid, gid, the working folder's "device:inode" (empty for R/work), then one
#: "device:inode" line per ``mounts`` source below ``remote_root`` (:func:`_pin_mount_source`).
_OUT_RE = re.compile(r"^(/[^\n\0]+)\n(\d+)\n(\d+)\n(\d+:\d+)?\n((?:\d+:\d+\n)*)$")
#: A kernel's folder R as :func:`prepare` makes it (``mktemp -d .../envpin-XXXXXXXX``): all gc removes there.
_FOLDER_RE = re.compile(r"^/[^\n\0]*/envpin-[A-Za-z0-9]{8}$")


@dataclass
class RemoteKernel:
    """The remote side of one kernel: its folder there, uid:gid there, forwards, working folder."""

    url: str
    folder: str  #: R: made by mktemp -d on the remote host
    uid: int
    gid: int
    workdir: str  #: the kernel's working folder on the remote host (and at the same path in the container)
    scratch: bool  #: workdir is R/work (removed with R)
    #: Below ``remote_root``: the working folder's "device:inode" as :func:`prepare` checked it, which every
    #: container of this kernel must see at its mount (:func:`check_workdir`).  None for the scratch R/work.
    pinned: str | None = None
    #: (target in the container, "device:inode") of each ``mounts`` source below ``remote_root``: a kernel
    #: working in ``remote_root`` can swap such a source for a link, so it is pinned and checked like ``pinned``.
    pinned_mounts: list[tuple[str, str]] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)

    @property
    def socket_dir(self) -> str:
        return posixpath.join(self.folder, "sock")

    @property
    def master(self) -> ssh_tunnel.Master:
        return ssh_tunnel.master_for(self.url)


def _workdir_for(remote_root: str, local_root: str, notebook_folder: str) -> str | None:
    """The notebook folder's place below ``remote_root``, or None when it is not below ``local_root``."""
    local_root = os.path.realpath(local_root or os.getcwd())
    rel = os.path.relpath(os.path.realpath(notebook_folder), local_root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return None
    return posixpath.normpath(posixpath.join(remote_root, *rel.split(os.sep))) if rel != "." else remote_root


def _make_workdir(remote_root: str, workdir: str) -> str:
    """Shell lines making ``workdir`` below ``remote_root`` one folder at a time; exit 4 on a link (a kernel's).

    ``remote_root`` is the user's and may itself be a link; every part below
    it is in some kernel's working folder, so a link there may be a kernel's
    (``os.symlink('/run', 'project')``): ``mkdir -p`` would make folders
    through it and the engine would mount wherever it points (the remote
    host's ``/run``, its engine's socket included) as a later kernel's working
    folder.  Checked part by part, then the physical path is compared as a whole, from
    inside the folder (``cd -P``: the shell then holds it, so the path ``pwd -P``
    prints and the inode ``stat`` prints are one folder's).  The engine mounts
    it later, by path, at every start of the kernel's containers (restarts and
    moves too), and a kernel can swap a part for a link meanwhile: so the
    inode is printed too (``$I``) and compared with what each container sees
    (:func:`check_workdir`).
    """
    root = posixpath.normpath(remote_root)
    rel = posixpath.relpath(workdir, root)
    parts = [] if rel == "." else rel.split("/")
    lines = [f"mkdir -p -- {shlex.quote(root)}\nW={shlex.quote(root)}\n"]
    for part in parts:
        lines.append(
            f'W="$W"/{shlex.quote(part)}\n'
            'if [ -L "$W" ]; then printf "%s\\n" "$W" >&2; exit 4; fi\n'
            'if [ ! -d "$W" ]; then mkdir -- "$W"; fi\n'
        )
    expected = '"${P%/}"/' + shlex.quote(rel) if parts else '"$P"'
    lines.append(
        f"P=$(cd -P -- {shlex.quote(root)} && pwd -P)\n"
        'cd -P -- "$W"\n'
        "I=$(stat -c %d:%i .)\n"
        f'if [ "$(pwd -P)" != {expected} ]; then printf "%s\\n" "$W" >&2; exit 4; fi\n'
        "cd /\n"
    )
    return "".join(lines)


def _below(remote_root: str, path: str) -> bool:
    """``path`` (as written) is ``remote_root`` or below it: a name some kernel's working folder holds.  Pure."""
    root, path = posixpath.normpath(remote_root), posixpath.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _pin_mount_source(remote_root: str, source: str) -> str:
    """Shell lines refusing (exit 5) a ``mounts`` source below ``remote_root`` with a link in its path; print its inode.

    As :func:`_make_workdir`, part by part, then the parent's physical path as
    a whole (a kernel working in ``remote_root`` can rename and link any name
    below it); the source's "device:inode" is printed for every container to
    compare (:func:`check_workdir`), since the engine mounts by path, later.
    """
    root, source = posixpath.normpath(remote_root), posixpath.normpath(source)
    rel = posixpath.relpath(source, root)
    if rel == ".":  # remote_root itself (the user's; it may be a link): what it names now
        return f"(cd -P -- {shlex.quote(root)} && stat -c %d:%i .)\n"
    parts = rel.split("/")
    refuse = f"then echo {shlex.quote(source)} >&2; exit 5; fi\n"
    lines = [f"W={shlex.quote(root)}\n"]
    for part in parts:
        lines.append(f'W="$W"/{shlex.quote(part)}\nif [ -L "$W" ]; {refuse}')
    parent = posixpath.dirname(rel)
    expected = '"${Q%/}"' + ("/" + shlex.quote(parent) if parent else "")
    # From inside the parent (the shell holds it): the leaf's inode (a link's own, never its target's) and
    # the parent's physical path are one folder's, whatever is renamed meanwhile.
    lines.append(
        f"Q=$(cd -P -- {shlex.quote(root)} && pwd -P)\n"
        'cd -P -- "$(dirname -- "$W")"\n'
        f"M=$(stat -c %d:%i -- ./{shlex.quote(parts[-1])})\n"
        f'if [ "$(pwd -P)" != {expected} ]; {refuse}'
        'cd /\nprintf "%s\\n" "$M"\n'
    )
    return "".join(lines)


def prepare(url: str, remote_root: str, local_root: str, notebook_folder: str, mount_specs: list[str]) -> RemoteKernel:
    """Make the kernel's folder on the remote host (and its working folder), check mount sources there.  Blocking.

    ``mount_specs``: the ``mounts`` option ('HOST_PATH:CONTAINER_PATH[:ro]' each, checked by ``kernel.launch``).
    """
    master = ssh_tunnel.master_for(url)
    workdir = _workdir_for(remote_root, local_root, notebook_folder) if remote_root else None
    if remote_root and not remote_root.startswith("/"):
        raise ConfigError(f"remote_root='{remote_root}' is not an absolute path on the remote host; fix the option.")
    mount_sources = [spec.split(":")[0] for spec in mount_specs]
    checks = "".join(
        f"if [ ! -e {shlex.quote(src)} ]; then echo {shlex.quote(src)} >&2; exit 3; fi\n" for src in mount_sources
    )
    below = [
        (spec.split(":")[1], src)
        for spec, src in zip(mount_specs, mount_sources, strict=True)
        if remote_root and ":" in spec and _below(remote_root, src)
    ]
    pin_mounts = "".join(_pin_mount_source(remote_root, src) for _target, src in below)
    make_work = _make_workdir(remote_root, workdir) if workdir else 'mkdir -m 0700 -- "$R/work"\n'
    script = (
        "set -e\numask 077\n"
        + checks
        + 'R=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/envpin-XXXXXXXX")\n'
        + 'mkdir -m 0700 -- "$R/sock"\n'
        + make_work
        + 'printf "%s\\n%s\\n%s\\n%s\\n" "$R" "$(id -u)" "$(id -g)" "${I:-}"\n'
        + pin_mounts
    )
    try:
        out = master.run(script)
    except ssh_tunnel.TunnelError as exc:
        if "(4)" in str(exc) and workdir:
            raise ConfigError(
                f"The kernel's working folder {workdir} on {master.target.destination} is not a folder below "
                f"remote_root='{remote_root}': a part of its path is a link (a kernel can make one in its working "
                "folder), and envpin never mounts a folder a link chose. Remove the link there "
                f"(ssh HOST ls -l {shlex.quote(workdir)}) or open the notebook from another folder."
            ) from None
        if "(5)" in str(exc):
            source = str(exc).rsplit(":", 1)[-1].strip()
            raise ConfigError(
                f"The mount source {source} (from this kernel's mounts option) on {master.target.destination} is "
                f"below remote_root='{remote_root}', and a part of its path is a link (a kernel working there can "
                "make one): envpin never mounts a folder a link chose. Remove the link there "
                f"(ssh HOST ls -l {shlex.quote(source)}) or mount a folder outside remote_root."
            ) from None
        if "(3)" in str(exc):
            missing = str(exc).rsplit(":", 1)[-1].strip()
            raise ConfigError(
                f"The mount source {missing} (from this kernel's mounts option) does not exist on "
                f"{master.target.destination}, where the kernel runs: with an engine on another machine, mounts "
                "name paths of that machine. Create it there (ssh HOST mkdir -p PATH) or fix the mounts option."
            ) from None
        raise
    match = _OUT_RE.match(out)
    if not match:
        raise KernelStartFailed(f"Could not make the kernel's folder on {master.target.destination}: {out[-200:]!r}")
    folder, uid, gid = match.group(1), int(match.group(2)), int(match.group(3))
    return RemoteKernel(
        url=url,
        folder=folder,
        uid=uid,
        gid=gid,
        workdir=workdir or posixpath.join(folder, "work"),
        scratch=workdir is None,
        pinned=match.group(4) if workdir else None,
        pinned_mounts=list(zip([t for t, _s in below], match.group(5).split(), strict=True)),
    )


def _connection_tar(info: dict[str, Any], socket_prefix: str, uid: int, gid: int) -> bytes:
    remote_info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    remote_info.update(transport="ipc", ip=socket_prefix)
    data = json.dumps(remote_info, indent=1).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo(os.path.basename(names.CONTAINER_TCP_CONNECTION_FILE))
        ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), 0o600, uid, gid, int(time.time())
        tar.addfile(ti, io.BytesIO(data))
        # The kernel's control folder, in the container's own layer (remote.control_relay): never on that disk.
        folder = tarfile.TarInfo(os.path.basename(names.CONTAINER_CONTROL_DIR))
        folder.type, folder.mode, folder.uid, folder.gid, folder.mtime = (
            tarfile.DIRTYPE,
            0o700,
            uid,
            gid,
            int(time.time()),
        )
        tar.addfile(folder)
    return buf.getvalue()


def container_options(launch: kernel_launch.KernelLaunch, remote: RemoteKernel, package: str | None) -> dict[str, Any]:
    """``containers.create`` arguments for ``launch`` on the remote engine: no source path of this machine.  Pure."""
    shaped = dataclasses.replace(
        launch,
        connection_info={**launch.connection_info, "transport": "tcp"},  # no channel bind mounts: put_archive
        cwd=remote.workdir,
        folder=None,
        user=f"{remote.uid}:{remote.gid}",
        private_channels=False,
        handoff_dir=None,
    )
    options = kernel_launch.container_options(shaped)
    options["environment"][names.REMOTE_ENGINE] = remote.url
    options.pop("ports", None)  # the channels are ipc sockets, forwarded by SSH: nothing is published
    mounts = []
    for m in options["mounts"]:
        if m.get("Source") == names.PACKAGE_DIR:
            if package:
                mounts.append(package_volume.mount(package))
            continue
        mounts.append(m)
    mounts.append({"Target": remote.socket_dir, "Source": remote.socket_dir, "Type": "bind", "ReadOnly": False})
    options["mounts"] = mounts
    return options


def forward_channels(launch: kernel_launch.KernelLaunch, remote: RemoteKernel) -> None:
    """Forward each of the kernel's local socket names to its name in ``R/sock``.  Blocking; idempotent."""
    info = launch.connection_info
    pairs = [
        (f"{info['ip']}-{info[f'{ch}_port']}", posixpath.join(remote.socket_dir, f"k-{info[f'{ch}_port']}"))
        for ch in channels.CHANNELS
    ]
    remote.master.forward_all(pairs)  # one ssh -O forward for all five
    remote.forwarded.extend(local for local, _ in pairs if local not in remote.forwarded)


def start(
    client: Any, launch: kernel_launch.KernelLaunch, remote: RemoteKernel, log: logging.Logger | logging.LoggerAdapter
):
    """Create and start the kernel container on the remote engine; remove it again if starting fails.  Blocking."""
    package = package_volume.ensure(client, launch.image.id) if launch.mount_envpin else None
    # The forwards (an ssh -O round trip) need nothing of the container: made while it is created and started.
    forwards = _SIDE.submit(forward_channels, launch, remote)
    try:
        container = _create_and_start(client, launch, remote, package, log)
    except BaseException:
        concurrent.futures.wait([forwards])
        raise
    try:
        forwards.result()
    except BaseException:  # no channels: the container goes again
        kernel_container.remove(container)
        raise
    return container


#: Threads that overlap a start's independent steps (the channel forwards).
_SIDE = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="envpin-ssh-start")


def _create_and_start(
    client: Any,
    launch: kernel_launch.KernelLaunch,
    remote: RemoteKernel,
    package: str | None,
    log: logging.Logger | logging.LoggerAdapter,
):
    options = container_options(launch, remote, package)
    if launch.mount_envpin:  # the key follows the start, off its path: see _start_then_hand_over
        options["command"] = [names.ENTRY_WARM_KERNEL, "--given", handover.HANDOFF_DIR]
    try:
        container = dialect.create(client, **options)
    except docker.errors.APIError as exc:
        raise KernelStartFailed(
            f"The Docker engine at {remote.url} refused to create a kernel container from image "
            f"'{launch.image.reference}': {exc.explanation or exc}. Check the kernel's options (mounts, network, "
            "limits, extra options): with an engine on another machine, paths name that machine's folders."
        ) from exc
    try:
        if launch.mount_envpin:
            _start_then_hand_over(container, launch, remote, options["environment"])
        else:  # ipykernel_launcher reads its key at once: it must be there before the start
            container.put_archive(
                os.path.dirname(names.CONTAINER_TCP_CONNECTION_FILE),
                _connection_tar(launch.connection_info, posixpath.join(remote.socket_dir, "k"), remote.uid, remote.gid),
            )
            container.start()
            check_workdir(container, remote, launch.python)  # before any client connects (no code has run)
    except BaseException:
        kernel_container.remove(container)
        raise
    log.info(
        "envpin: kernel %s started in container %s of image %s on %s",
        launch.kernel_id, container.short_id, launch.image.reference, remote.url,
    )  # fmt: skip
    return container


def _start_then_hand_over(container: Any, launch: kernel_launch.KernelLaunch, remote: RemoteKernel, env: dict) -> None:
    """Start the container, then put its key and hand-over in while its Python imports ipykernel.  Blocking.

    An archive into a created container (its file system mounted for the copy) took ~80-100 ms before
    the start could begin; into the running one it overlaps the ~0.3 s the kernel takes to import
    (``envpin.entry.warm_kernel --given``, which waits for ``go``, bounded).  Same key, same place
    (``/tmp/envpin-kernel.json``, 0600 for the kernel's user), only inside the container.
    """
    container.start()
    check_workdir(container, remote, launch.python)  # before the key goes in
    key = names.CONTAINER_TCP_CONNECTION_FILE
    message = handover.handover_message(launch, env, remote.workdir, env, key=key)
    archive = handover.handover_archive(
        launch.connection_info,
        posixpath.join(remote.socket_dir, "k"),
        message,
        f"{remote.uid}:{remote.gid}",
        key=posixpath.basename(key),
        folder=posixpath.basename(handover.HANDOFF_DIR),
    )
    container.put_archive(posixpath.dirname(handover.HANDOFF_DIR), archive)


#: Run in a kernel's new container: its working folder's "device:inode", as the engine mounted it.
_STAT_WORKDIR = "import os,sys\nfor p in sys.argv[1:]:s=os.stat(p);print(f'{s.st_dev}:{s.st_ino}')"


def check_workdir(container: Any, remote: RemoteKernel, python: str) -> None:
    """Refuse a container whose working folder is not the one :func:`prepare` checked.  Blocking.

    The engine mounts ``remote_root``'s folders by path, following links, at
    each start (the first, restarts, moves, a pool container's); every part of
    that path but ``remote_root`` is in some kernel's working folder, so a
    kernel can have swapped one for a link since (``os.rename`` then
    ``os.symlink('/run', ...)``).  The folder the container sees must be the
    pinned one, by device and inode (a bind mount shows its source's).  Called
    before the kernel's key goes in, or before any client connects; the
    caller removes the container.  Nothing to check for the scratch ``R/work``:
    no kernel's container mounts ``R``.
    """
    pinned = ([(remote.workdir, remote.pinned)] if remote.pinned is not None else []) + remote.pinned_mounts
    if not pinned:
        return
    code, out = container.exec_run(
        [python, "-I", "-c", _STAT_WORKDIR, *(target for target, _ in pinned)],
        stdout=True,
        stderr=False,
        user=f"{remote.uid}:{remote.gid}",
    )
    seen = (out or b"").decode(errors="replace").split()
    if code == 0 and len(seen) == len(pinned):
        wrong = [(target, got, want) for (target, want), got in zip(pinned, seen, strict=True) if got != want]
        if not wrong:
            return
        target, got, want = wrong[0]
    else:  # the exec failed (a mount point that is gone): reported against the first pinned folder
        (target, want), got = pinned[0], " ".join(seen)
    what, fix = (
        (f"The kernel's working folder {target}", f" (ssh HOST ls -ld {shlex.quote(target)})")
        if target == remote.workdir
        else (f"The mount at {target} (a mounts source below remote_root)", "")
    )
    raise ConfigError(
        f"{what} on {remote.master.target.destination} is no longer the folder envpin checked when this kernel "
        f"first started (its device:inode is {got or 'unreadable'}, not {want}): a part of its path was replaced since, for "
        "instance by a link a kernel made, and envpin never mounts a folder a link chose. The new container was "
        f"removed. Put the folder back{fix}, or shut this kernel down and start a new one."
    )


#: Before a move (:func:`set_aside`) and after a failed one (:func:`put_back`), run in ``R/sock``: the
#: kernel can write that folder, so a name that is a link is left alone, and ``mv -T`` replaces a link
#: planted at the destination instead of moving into the folder it names (GNU coreutils).
SET_ASIDE = 'for s in k-*; do if [ -S "$s" ] && [ ! -L "$s" ]; then mv -fT -- "$s" ".old-$s"; fi; done; true'
PUT_BACK = 'for s in .old-k-*; do if [ -S "$s" ] && [ ! -L "$s" ]; then mv -fT -- "$s" "${s#.old-}"; fi; done; true'


def set_aside(remote: RemoteKernel) -> None:
    """Before a move: the running kernel's socket names in ``R/sock`` go aside (``.old-k-*``).  Blocking.

    The new kernel binds the same names, and each forward connects to a name
    when a connection is made: with the old kernel's sockets still there, the
    readiness probe could be answered by the old kernel.  Aside, they keep
    every established connection (a renamed unix socket stays connected); a
    new connection waits for the new kernel's bind.  :func:`put_back` undoes
    it when the new kernel does not start; otherwise they go with ``R``.
    """
    remote.master.run(f"cd -- {shlex.quote(remote.socket_dir)} && {SET_ASIDE}", timeout=20)


def put_back(remote: RemoteKernel) -> None:
    """A move failed: the old kernel's socket names (:func:`set_aside`) are its again.  Blocking."""
    remote.master.run(f"cd -- {shlex.quote(remote.socket_dir)} && {PUT_BACK}", timeout=20)


def teardown(remote: RemoteKernel) -> None:
    """Cancel the kernel's forwards and remove its folder on the remote host (scratch working folder included).

    Blocking; never raises for a host that is gone (its folder is in its runtime or temporary folder).
    """
    master = ssh_tunnel.known(remote.url)
    if master is None:
        return
    for local in remote.forwarded:
        master.cancel(local)
    remote.forwarded.clear()
    try:
        master.run(f"rm -rf -- {shlex.quote(remote.folder)}", timeout=20)
    except (ssh_tunnel.TunnelError, OSError, subprocess.TimeoutExpired) as exc:  # the host does not answer
        logging.getLogger("envpin").warning("envpin: could not remove %s on %s: %s", remote.folder, remote.url, exc)


def folder_of(container: Any) -> str | None:
    """R of a kernel container :func:`start` made: the folder holding its ``R/sock`` bind mount (same path inside).

    Read from the engine's record of the container's mounts, which the kernel
    cannot change; and only a name :func:`prepare`'s ``mktemp`` could have
    made is taken, so gc never removes a folder that is not a kernel's.
    """
    for mount in container.attrs.get("Mounts") or []:
        source, target = mount.get("Source"), mount.get("Destination")
        if mount.get("Type") != "bind" or not isinstance(source, str) or source != target:
            continue
        folder, leaf = posixpath.split(source)
        if leaf == "sock" and _FOLDER_RE.match(folder) and posixpath.normpath(folder) == folder:
            return folder
    return None


def remove_folders(url: str, folders: list[str]) -> list[str]:
    """Remove the kernel folders ``folders`` on the host of ``url`` (what a killed server left); return the removed.

    Blocking.  For ``envpin gc --engine ssh://...``: the containers are gone,
    their folders (channel sockets, scratch working folder) go with them.
    """
    safe = [f for f in folders if _FOLDER_RE.match(f) and posixpath.normpath(f) == f]
    if not safe:
        return []
    ssh_tunnel.master_for(url).run("rm -rf -- " + " ".join(shlex.quote(f) for f in safe), timeout=30)
    return safe
