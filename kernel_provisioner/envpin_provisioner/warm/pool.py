"""Warm kernels: containers created, started and waiting with ipykernel imported, before anyone asks.

A cold start spends most of its time after the request: creating and
starting the container (~0.2-0.3 s) and importing ipykernel in it (~0.5 s).
A warm container has done both and waits (``envpin.entry.warm_kernel``) on a names.WARM_KERNEL_FIFO in a
folder of the server's (its *hand-over folder*, mounted read-only).  Taking
one costs a connection file, one write to that names.WARM_KERNEL_FIFO and ipykernel binding
its sockets.

Two kinds, because a container's mounts and labels are fixed when it is
created:

* **the shared pool** (:class:`Pools`), for starts: ``pool_size`` containers
  per (engine, image id, user, notebook folder, configuration), each with a
  channel folder of its own (which becomes the kernel's) and exactly that
  notebook folder mounted, as a cold start would: a pooled kernel reaches
  no more than a cold one (an earlier design mounted a whole "pool root",
  through which a kernel reached other notebooks' folders and planted code
  for their kernels).  The first start in a folder is therefore cold and
  fills the pool for the next.  Its labels say ``envpin.role=pool`` and carry
  no kernel id (labels cannot change): the container is renamed
  ``envpin-<kernel id>`` when a kernel takes it;
* **standbys**, for restarts and ``%use_image`` moves of one kernel: made
  from that kernel's own launch (its channel folder, notebook folder, labels
  with its kernel id), so the same socket paths can be bound again, which a
  restart and a move need.  One for the kernel's image, one for the image it
  last moved from.

Every warm container is used once, by one kernel.  A pool never hides an
error: a container that dies while it warms up fails the fill, and the
starts of that configuration go cold and fail exactly as a cold start does.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from docker.models.containers import Container

from envpin import names, safe_files
from envpin_provisioner import engine
from envpin_provisioner.kernel import channels, readiness
from envpin_provisioner.kernel import container as kernel_container

#: A fill that failed is not retried for this long (seconds): a broken image must not loop.
RETRY_AFTER = 60.0
#: Seconds a new warm container may take to reach its names.WARM_KERNEL_FIFO (it imports ipykernel; pulls are done by then).
WARM_TIMEOUT = 60.0
#: Seconds a folder's pools stay after the last kernel of that folder has gone (a notebook reopened soon
#: starts warm), before they are drained: a folder opened once does not hold containers until the server exits.
LINGER = 300.0


def make_handoff_dir(channel_dir: str, owner: tuple[int, int] | None) -> str:
    """A new hand-over folder in ``channel_dir``: server-owned, with the names.WARM_KERNEL_FIFO only the kernel's user reads."""
    name = f"handoff-{uuid.uuid4().hex[:8]}"
    with safe_files.directory(channel_dir, nofollow=True) as top:
        os.mkdir(name, 0o755, dir_fd=top)
        with safe_files.directory(os.path.join(channel_dir, name), nofollow=True) as handoff:
            os.mkfifo(names.WARM_KERNEL_FIFO, 0o600, dir_fd=handoff)
            if (
                owner is not None
            ):  # on a descriptor of the names.WARM_KERNEL_FIFO we just made (non-blocking: no writer needed)
                fd = os.open(names.WARM_KERNEL_FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=handoff)
                try:
                    os.fchown(fd, *owner)
                finally:
                    os.close(fd)
    return os.path.join(channel_dir, name)


def _open_writer(handoff_dir: str) -> int | None:
    """The FIFO's write end, or None while nobody waits on it (ENXIO: not ready, or gone)."""
    with safe_files.directory(handoff_dir, nofollow=True) as top:
        try:
            return os.open(
                names.WARM_KERNEL_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top
            )
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise


@dataclass
class Warm:
    """One waiting container."""

    container: Container
    handoff_dir: str
    image_id: str
    shape: str  #: digest of the launch it was made from (see :func:`shape_of`)
    channel_dir: str | None = None  #: the shared pool's: its own channel folder, which becomes the kernel's
    env: dict[str, str] = field(default_factory=dict)  #: the variables it was created with
    created: float = field(default_factory=time.monotonic)

    def waiting(self) -> bool:
        """True while its process waits on the names.WARM_KERNEL_FIFO (the probe's empty write only makes it wait again)."""
        fd = _open_writer(self.handoff_dir)
        if fd is None:
            return False
        os.close(fd)
        return True

    def hand_over(self, message: dict[str, Any], patience: float = 0.5) -> bool:
        """Tell it to become a kernel; False when it no longer waits (then it is of no use).  Blocking.

        Right after a readiness probe the waiting process is briefly between
        two opens of the names.WARM_KERNEL_FIFO: ``patience`` seconds cover that.
        """
        deadline = time.monotonic() + patience
        while (fd := _open_writer(self.handoff_dir)) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if fd is None:
            return False
        try:
            data = json.dumps(message).encode()
            written = 0
            while written < len(data):  # the reader drains the pipe as we go; a pipe holds 64 KB
                try:
                    written += os.write(fd, data[written:])
                except BlockingIOError:
                    time.sleep(0.001)
        finally:
            os.close(fd)
        return True

    def discard(self) -> None:
        """Remove the container (and a shared pool's channel folder).  Blocking."""
        kernel_container.remove(self.container)
        if self.channel_dir:
            channels.remove_channel_dir(self.channel_dir)


#: Variables envpin sets per start (who the kernel is, how it was started), which the hand-over supplies:
#: the only ones left out of a warm container's shape.  Every other variable a container is created with
#: is visible to its kernel for good (``/proc/1/environ``), so it is part of the shape: a container made
#: for a kernelspec with a secret in its ``environment`` is never handed to another configuration.
PER_START_ENV = frozenset(
    {names.SESSION_NAME, names.IMAGE_NAME, names.PINNED, names.PIN_NOTES, names.CONTROL_DIR, names.IMAGE_LATEST_ID}
)


def shape_of(options: dict[str, Any]) -> str:
    """A digest of container options with what differs between two starts of one configuration left out.

    Left out: the command, the name, the role, nonce and proof labels, the hand-over mount
    and the per-start variables (:data:`PER_START_ENV`, the hand-over marker
    and the session options, all envpin's own).  Everything a kernel can
    observe of its container (the rest of its creation environment, mounts,
    labels, user, limits) is in: a warm container of that shape can stand in
    for a cold start, and for nothing else.
    """
    from envpin.session import options as session_options

    kept = {k: v for k, v in options.items() if k not in ("command", "name", "environment")}
    kept["environment"] = {
        k: v
        for k, v in (options.get("environment") or {}).items()
        if k not in PER_START_ENV and k != names.HANDOFF_EXPECTED and not session_options.is_option_env(k)
    }
    # The role differs (pool vs kernel); the nonce and the proof differ for every container made.
    unshaped = (names.LABEL_ROLE, names.LABEL_NONCE, names.LABEL_PROOF)
    kept["labels"] = {k: v for k, v in (options.get("labels") or {}).items() if k not in unshaped}
    kept["mounts"] = sorted(
        (dict(m) for m in options.get("mounts") or () if "/handoff-" not in str(dict(m).get("Target", ""))),
        key=lambda m: str(m.get("Target")),
    )
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def wait_warm(warm: Warm, log: logging.Logger | logging.LoggerAdapter, timeout: float = WARM_TIMEOUT) -> None:
    """Block until ``warm`` waits on its names.WARM_KERNEL_FIFO; raise ``KernelStartFailed`` (with its logs) if it dies first."""
    from envpin_provisioner.errors import KernelStartFailed

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if warm.waiting():
            return
        status, code = kernel_container.state(warm.container)
        if code is not None:
            logs = readiness.logs_tail(warm.container)
            raise KernelStartFailed(f"A warm kernel container exited (code {code}) before it was ready: {logs}")
        time.sleep(0.02)
    raise KernelStartFailed(f"A warm kernel container did not get ready within {timeout:.0f}s.")


class Pools:
    """The server's shared pools, one per key; filled in the background, never on a start's critical path."""

    def __init__(self) -> None:
        self._ready: dict[str, list[Warm]] = {}
        self._filling: dict[str, asyncio.Task] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._groups: dict[str, str] = {}
        self._standbys: dict[str, Warm] = {}  #: every kernel's standbys, by container id, for the exit
        self._folder_of: dict[str, str] = {}  #: pool key -> its folder (engine, user, notebook folder)
        self._holders: dict[str, set[str]] = {}  #: folder -> the kernels open there
        self._lingering: dict[str, asyncio.TimerHandle] = {}  #: folder -> its pending drain
        self._later: set[asyncio.TimerHandle] = set()  #: refills set going for later (``refill_later``)
        self._lock = threading.Lock()

    def take(self, key: str) -> Warm | None:
        """A waiting container of ``key`` for one kernel, or None (the start is then cold)."""
        with self._lock:
            ready = self._ready.get(key) or []
            return ready.pop(0) if ready else None

    def count(self, key: str) -> int:
        with self._lock:
            return len(self._ready.get(key) or [])

    def failure(self, key: str) -> str | None:
        """Why the last fill of ``key`` failed (within :data:`RETRY_AFTER`), else None."""
        when, why = self._failed.get(key, (0.0, ""))
        return why if time.monotonic() - when < RETRY_AFTER else None

    def refill(
        self,
        key: str,
        size: int,
        make: Callable[[], Awaitable[Warm]],
        log: logging.Logger | logging.LoggerAdapter,
        group: str = "",
        folder: str = "",
    ) -> None:
        """Start (in the background) filling ``key`` up to ``size``; pools of the same ``group`` are drained.

        ``folder`` names the notebook folder the key's containers mount: its
        pools go :data:`LINGER` seconds after its last kernel (:meth:`release`).

        ``group`` names what a key replaces: the same image reference and user
        with another image id (the tag moved) or another configuration.
        """
        if size <= 0 or self.failure(key):
            return
        if folder:
            self._folder_of[key] = folder
        task = self._filling.get(key)
        if task is not None and not task.done():
            return
        self._drain_group(group, keep=key)
        self._filling[key] = asyncio.ensure_future(self._fill(key, size, make, log, group))

    def refill_later(self, delay: float, refill: Callable[[], None]) -> None:
        """Call ``refill`` (a :meth:`refill` with its arguments) in ``delay`` s, unless :meth:`drain` runs first."""

        def run() -> None:
            self._later.discard(handle)
            refill()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._later.add(handle)

    async def _fill(self, key: str, size: int, make, log, group: str) -> None:
        while self.count(key) < size:
            try:
                warm = await make()
            except Exception as exc:  # noqa: BLE001  any failure stops this key's fills for a while, said in the log
                self._failed[key] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
                log.warning("envpin: the warm pool could not start a container (%s); starts stay cold", exc)
                return
            with self._lock:
                self._ready.setdefault(key, []).append(warm)
                self._groups[key] = group

    def _drain_group(self, group: str, keep: str) -> None:
        if not group:
            return
        with self._lock:
            stale = [k for k, g in self._groups.items() if g == group and k != keep]
            gone = [w for k in stale for w in self._ready.pop(k, [])]
            for k in stale:
                self._groups.pop(k, None)
        if gone:
            threading.Thread(target=_discard_all, args=(gone,), name="envpin-pool-drain", daemon=True).start()

    def hold(self, folder: str, kernel_id: str) -> None:
        """A kernel of ``folder`` is open: that folder's pools stay."""
        timer = self._lingering.pop(folder, None)
        if timer is not None:
            timer.cancel()
        self._holders.setdefault(folder, set()).add(kernel_id)

    def release(self, folder: str, kernel_id: str, linger: float | None = None) -> None:
        """A kernel of ``folder`` has gone; with none left, the folder's pools are drained after ``linger`` s."""
        holders = self._holders.get(folder)
        if holders is None:
            return
        holders.discard(kernel_id)
        if holders or folder in self._lingering:
            return
        delay = LINGER if linger is None else linger
        self._lingering[folder] = asyncio.get_running_loop().call_later(delay, self._drain_folder, folder)

    def _drain_folder(self, folder: str) -> None:
        self._lingering.pop(folder, None)
        if self._holders.get(folder):
            return
        self._holders.pop(folder, None)
        with self._lock:
            keys = [k for k, f in self._folder_of.items() if f == folder]
            gone = [w for k in keys for w in self._ready.pop(k, [])]
            for k in keys:
                self._folder_of.pop(k, None)
                self._groups.pop(k, None)
        for k in keys:
            task = self._filling.pop(k, None)
            if task is not None:
                task.cancel()
        if gone:
            threading.Thread(target=_discard_all, args=(gone,), name="envpin-pool-drain", daemon=True).start()

    def track(self, warm: Warm) -> None:
        """Remember a kernel's standby, so a server that exits removes it too."""
        with self._lock:
            self._standbys[warm.container.id] = warm

    def untrack(self, warm: Warm) -> None:
        with self._lock:
            self._standbys.pop(warm.container.id, None)

    def waiting(self) -> list[Warm]:
        """Every warm container of this process: pooled and standbys (for envpin doctor and the tests)."""
        with self._lock:
            return [w for ready in self._ready.values() for w in ready] + list(self._standbys.values())

    def drain(self) -> list[Warm]:
        """Take every waiting container out of the pools (the caller removes them)."""
        with self._lock:
            gone = [w for ready in self._ready.values() for w in ready] + list(self._standbys.values())
            self._ready.clear()
            self._standbys.clear()
            self._folder_of.clear()
        for timer in [*self._lingering.values(), *self._later]:
            timer.cancel()
        self._lingering.clear()
        self._later.clear()
        self._holders.clear()
        for task in self._filling.values():
            task.cancel()
        return gone

    async def close(self, timeout: float = 30.0) -> None:
        """:meth:`drain`, then wait (at most ``timeout`` s) for the fills it cancelled, and remove what it took.

        For an owner that stops its event loop next (a test, an embedding
        application): :meth:`drain` only asks the fills to stop, and a fill
        cancelled while its container warms up removes it from its own task,
        which a stopped loop never runs.
        """
        filling = [task for task in self._filling.values() if not task.done()]
        gone = self.drain()
        if filling:
            await asyncio.wait(filling, timeout=timeout)
        await engine.call_through(_discard_all, gone)


def _discard_all(warms: list[Warm]) -> None:
    for warm in warms:
        try:
            warm.discard()
        except engine.ENGINE_ERRORS:  # the engine went away: envpin gc removes them once it is back
            pass


#: The server process's pools (one per process, like the shared Docker client).
pools = Pools()


@atexit.register
def _remove_at_exit() -> None:
    """A server that exits takes its warm containers along (a killed one leaves them to envpin gc)."""
    _discard_all(pools.drain())
