"""Where a ``ContainerExecutor``'s workers run: one interface, two places.

A worker is ``python -m envpin.entry.job_worker SOCKET SLOT`` (``envpin.jobs.worker``)
started somewhere that runs the pinned image:

* :class:`ProcessWorker`: a process of this very container, when the caller
  already runs in the image (a Containerized Python kernel, which has no
  engine access by default), the same interpreter as the caller;
* :class:`ContainerWorker`: a container of the image, when the caller runs
  elsewhere (a kernel on the host); labelled ``envpin.role=job`` with its
  owner.  A job's code is hostile to its caller, so the container gets only
  what a job needs (``WorkerSandbox``): envpin's package and its executor's
  socket folder, both read-only; the caller's working folder only when the
  executor was asked for it (read-only unless asked for ``rw``); a private
  tmpfs ``HOME`` as its working folder otherwise; all capabilities dropped,
  ``no-new-privileges``, and an unprivileged user when the caller is root.

The executor only ever talks to a :class:`Worker`: how to tell whether it
still runs, how to stop it, and why it died.  Everything about one kind of
worker stays in its class.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from envpin import names
from envpin.entry import boot
from envpin.errors import EnvpinError
from envpin.host import dialect
from envpin.jobs.listener import SOCKET_NAME


@dataclass(frozen=True)
class Death:
    """How a worker ended: its exit code (None: unknown) and whether the kernel's OOM killer did it."""

    code: int | None
    oom: bool = False

    def describe(self) -> str:
        if self.oom:
            return "it ran out of memory"
        if self.code in (137, -9):
            return "it was killed (out of memory, or from outside)"
        return f"it exited with code {self.code}"


class Worker(Protocol):
    """A started worker, whatever runs it."""

    def exit_status(self) -> int | None:
        """None while it runs, else its exit code (-1 when it is gone without one)."""

    def stop(self) -> None:
        """Stop it now and release what it holds (idempotent)."""

    def death(self) -> Death:
        """After it stopped by itself: why.  Releases it too."""


def envpin_parent() -> str:
    """The folder holding the ``envpin`` package, for a worker process's ``PYTHONPATH``."""
    return names.PACKAGE_PARENT


#: The user a root caller's worker containers run as unless asked otherwise (``nobody``).
UNPRIVILEGED_USER = "65534:65534"
#: ``workdir`` values: how the caller's working folder is mounted into worker containers.
WORKDIR_MODES = ("ro", "rw", None)


def worker_user(user: str | int | None) -> tuple[int, int]:
    """The ``uid, gid`` worker containers run as, from the executor's ``user`` option.

    Default: the caller's own ids, except for root, whose jobs run as
    ``nobody`` (65534) so that a job cannot create root-owned or setuid-root
    files.  Root only when asked (``user=0`` or ``"0:0"``).
    """
    if user is None:
        if os.geteuid() == 0:
            user = UNPRIVILEGED_USER
        else:
            return os.getuid(), os.getgid()
    text = str(user)
    uid, sep, gid = text.partition(":")
    if not uid.isdigit() or (sep and not gid.isdigit()) or not uid.isascii() or not gid.isascii():
        raise EnvpinError(
            f"ContainerExecutor(user={user!r}) is not a user id: give a numeric uid or uid:gid "
            f"(for example user={UNPRIVILEGED_USER!r}; user='0:0' runs jobs as root, which only makes sense "
            "if the jobs must write root's files). Names are not accepted: the image may not know them."
        )
    return int(uid), int(gid) if sep else int(uid)


def check_workdir(workdir: object) -> str | None:
    """The ``workdir`` option, validated: ``"ro"``, ``"rw"`` or None (``True`` means ``"ro"``)."""
    if workdir is True:
        return "ro"
    if workdir is False:
        return None
    if workdir in WORKDIR_MODES:
        return workdir
    raise EnvpinError(
        f"ContainerExecutor(workdir={workdir!r}) is not a mount mode: give workdir='ro' to mount the current "
        "folder read-only into the workers (jobs can read its files), workdir='rw' to let jobs write it too, "
        "or workdir=None (the default) to mount nothing of the caller's."
    )


@dataclass(frozen=True)
class WorkerSandbox:
    """What a worker container may reach of the caller: decided once per executor.

    ``socket_dir``: the executor's private folder (``job_listener``), mounted
    read-only at ``names.CONTAINER_JOB_SOCKETS``; ``folder_base``: the folder holding
    every executor's folder, hidden by an empty read-only tmpfs when the
    working folder mount would show it; ``workdir``: the caller's working
    folder and its mode, or None.
    """

    socket_dir: str
    folder_base: str
    uid: int
    gid: int
    workdir: str | None
    workdir_mode: str | None

    def options(self) -> dict[str, Any]:
        """The ``containers.create`` keyword arguments this sandbox adds to ``base_options``."""
        mounts = [{"Target": names.CONTAINER_JOB_SOCKETS, "Source": self.socket_dir, "Type": "bind", "ReadOnly": True}]
        tmpfs: dict[str, str] = {}
        if self.workdir:
            mounts.append(
                {"Target": self.workdir, "Source": self.workdir, "Type": "bind", "ReadOnly": self.workdir_mode != "rw"}
            )
            if _contains(self.workdir, self.folder_base):
                tmpfs[self.folder_base] = "ro,size=4k,mode=0"  # other executors' sockets: not in this container
        return {"mounts": mounts, "tmpfs": tmpfs, "cap_drop": ["ALL"]}


def _contains(folder: str, path: str) -> bool:
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder == os.sep else folder + os.sep)


def sandbox(socket_dir: str, folder_base: str, user: str | int | None, workdir: object) -> WorkerSandbox:
    """The sandbox of an executor's worker containers (validating its options; see ``worker_user``, ``check_workdir``)."""
    uid, gid = worker_user(user)
    mode = check_workdir(workdir)
    cwd = os.path.realpath(os.getcwd()) if mode else None
    if cwd and _contains(folder_base, cwd):
        raise EnvpinError(
            f"ContainerExecutor(workdir={mode!r}) from {cwd}: that folder is inside envpin's private job-socket "
            f"folder {folder_base}; change to your project's folder first."
        )
    return WorkerSandbox(socket_dir, folder_base, uid, gid, cwd, mode)


class ProcessWorker:
    """A worker process of this container, on this interpreter (the caller's user, the caller's files)."""

    def __init__(self, socket_path: str, slot_id: str, token: str, envelope_mode: str) -> None:
        env = dict(os.environ)
        env[names.ENVELOPE] = envelope_mode
        env[names.WORKER_TOKEN] = token
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [envpin_parent(), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            boot.argv(sys.executable, names.ENTRY_JOB_WORKER, socket_path, slot_id), env=env, stdin=subprocess.DEVNULL
        )

    def exit_status(self) -> int | None:
        return self._process.poll()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def death(self) -> Death:
        return Death(self._process.wait())


class ContainerWorker:
    """A worker container of the pinned image, created through the Docker SDK's ``client``.

    ``image`` is a ``envpin.host.images.ResolvedImage`` (resolved once per executor);
    ``box`` says what of the caller it may reach; ``token`` is its one-time hello token.
    """

    def __init__(
        self,
        client: Any,
        image: Any,
        name: str,
        box: WorkerSandbox,
        slot_id: str,
        token: str,
        mem_limit: str | None,
        envelope_mode: str,
    ) -> None:
        from envpin.host.container_spec import base_options

        options = base_options(
            image_id=image.id,
            reference=image.reference,
            immutable=image.immutable,
            role="job",
            image_env=image.env,
            user=f"{box.uid}:{box.gid}",
            cwd=None,  # mounted by the sandbox, and only when asked
            extra_labels={"envpin.job-slot": slot_id},
        )
        extra = box.options()
        options["mounts"] += extra["mounts"]
        options["tmpfs"].update(extra["tmpfs"])
        options["cap_drop"] = extra["cap_drop"]
        options["working_dir"] = box.workdir or names.CONTAINER_HOME
        options["environment"][names.IMAGE_NAME] = name
        options["environment"][names.ENVELOPE] = envelope_mode  # the worker checks jobs as strictly as we do
        options["environment"][names.WORKER_TOKEN] = token
        if mem_limit:
            options.update(mem_limit=mem_limit, memswap_limit=mem_limit)
        socket_path = f"{names.CONTAINER_JOB_SOCKETS}/{SOCKET_NAME}"
        self._container = dialect.create(
            client,
            entrypoint=boot.entrypoint("python3"),
            command=[names.ENTRY_JOB_WORKER, socket_path, slot_id],
            **options,
        )
        try:
            self._container.start()
        except BaseException:
            self.stop()
            raise
        self._gone = False

    def exit_status(self) -> int | None:
        import docker.errors

        if self._gone:
            return -1
        try:
            self._container.reload()
        except docker.errors.NotFound:  # removed from outside
            return -1
        if self._container.status in ("created", "running"):
            return None
        return int(self._container.attrs["State"].get("ExitCode", -1))

    def stop(self) -> None:
        from envpin.host.images import remove

        if not self._gone:
            self._gone = True
            remove(self._container)

    def death(self) -> Death:
        import docker.errors
        import requests.exceptions

        try:
            self._container.wait(timeout=10)
            self._container.reload()
            state = self._container.attrs["State"]
            return Death(state.get("ExitCode"), bool(state.get("OOMKilled")))
        except (docker.errors.NotFound, requests.exceptions.RequestException):
            return Death(None)  # removed from outside, or it did not stop within 10 s: unknown
        finally:
            self.stop()
