"""What one kernel does with warm containers (``pool_size``): take one at start, keep standbys, hand over.

``pool`` holds the mechanics (a warm container, its hand-over FIFO, the
server's shared pools); this module is the provisioner's side of it, one
:class:`WarmKernels` per kernel:

* :meth:`WarmKernels.take_pooled` (``pre_launch`` of a first start): a
  shared-pool container of this configuration made for this notebook
  folder, or None (cold); asks the pool to refill either way;
* :meth:`WarmKernels.hand_over` (every container start: first start,
  restart, move): the taken container, or this kernel's standby for the
  launch's image when its shape still fits, becomes the kernel; None means
  start cold;
* :meth:`WarmKernels.keep_standbys` (after every start and move): in the
  background, one standby for the kernel's image and one for the image it
  last moved from, made from the kernel's own launch;
* :meth:`WarmKernels.discard` (the kernel goes for good): its standbys, and a
  taken container it never used.

It uses exactly the provisioner members :class:`WarmableKernel` lists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from docker.models.containers import Container

from envpin import names
from envpin.host import docker_client
from envpin_provisioner import engine
from envpin_provisioner.images import selection
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel.launch import KernelLaunch, container_options
from envpin_provisioner.warm import pool


class WarmableKernel(Protocol):
    """What :class:`WarmKernels` needs from the provisioner that owns it."""

    kernel_id: str | None
    log: logging.Logger | logging.LoggerAdapter
    pool_size: int
    pool_root: str
    engine: str
    mount_envpin: bool
    _folder: Any
    user: str
    parent: Any
    _channel_dir: str | None

    def _kernel_owner(self) -> tuple[int, int] | None: ...

    async def _docker(self) -> Any: ...

    def build_launch(self, choice: selection.ImageChoice, env: dict[str, str], moved: bool = False) -> KernelLaunch: ...


#: Seconds the shared pool's refill a start sets going waits once the start is over.  Creating a
#: container and importing ipykernel in it takes about a core-second; on a small machine, done at once,
#: it competes for the CPU with the kernel that has just answered its heartbeat and is still finishing
#: its start and answering its client's first requests.
SETTLE = 1.0


def reset() -> None:
    """Report the deprecated pool_root again (``envpin_provisioner.reset_caches``)."""
    WarmKernels._warned_pool_root = False


class TakesWarm:
    """What a start that took a warm container leaves for later, for the local pools and the remote one alike.

    The owner sets ``_to_rename`` (the container it handed over) and ``_refill``
    (the shared pool's refill) during the start, and calls :meth:`start_done` after it.
    """

    kernel: Any
    _to_rename: Container | None = None
    _refill: Callable[[], None] | None = None

    def start_done(self, ready: bool) -> None:
        """The start is over (``ready``: the kernel answered): what it left for later may begin.

        The taken container's rename at once (one Engine API request); the
        shared pool's refill after :data:`SETTLE` seconds.
        """
        container, self._to_rename = self._to_rename, None
        if container is not None and ready:
            asyncio.ensure_future(self._rename(container))
        refill, self._refill = self._refill, None
        if refill is not None:
            pool.pools.refill_later(SETTLE, refill)

    async def _rename(self, container: Container) -> None:
        """Name a taken warm container after its kernel: labels cannot change, the name says whose it is."""
        name = f"envpin-{self.kernel.kernel_id}-{container.short_id}"
        try:
            await engine.call(container.rename, name)
        except engine.ENGINE_ERRORS as exc:  # removed meanwhile, or the engine went away: only the name is lost
            self.kernel.log.warning("envpin: could not name container %s %s: %s", container.short_id, name, exc)


class WarmKernels(TakesWarm):
    _warned_pool_root = False  #: the deprecated pool_root option is reported once per server

    def __init__(self, kernel: WarmableKernel) -> None:
        self.kernel = kernel
        self._taken: pool.Warm | None = None  #: a shared-pool container taken for the coming start
        self._standbys: dict[str, pool.Warm] = {}  #: by image id
        self._task: asyncio.Task | None = None
        self._moved_from: KernelLaunch | None = None  #: the launch before the last move
        self._folder_key: str | None = None  #: the shared pools' folder this kernel holds open (see Pools.hold)
        #: Set going when the start is over (``start_done``): the shared pool's refill, the taken container's rename.
        self._refill: Callable[[], None] | None = None
        self._to_rename: Container | None = None
        self._current: KernelLaunch | None = None  #: the launch standbys are kept for (``keep_standbys``)
        self._again = False  #: keep_standbys was called while its task ran: that task goes round again

    def standby_ids(self) -> set[str]:
        """Container ids of this kernel's standbys (they carry its kernel id, and are not stale)."""
        return {warm.container.id for warm in self._standbys.values()}

    @property
    def standbys(self) -> dict[str, pool.Warm]:
        return dict(self._standbys)

    # ---- the shared pool, for a first start -------------------------------------------------

    def _template(self, choice: selection.ImageChoice, env: dict[str, str]) -> KernelLaunch:
        """A launch for a shared-pool container: this kernel's (its pinned notebook folder included), without
        what only a start knows."""
        template = self.kernel.build_launch(choice, {k: v for k, v in env.items() if k != names.SESSION_NAME})
        template.kernel_id = ""
        template.extra_env = {}
        template.kernel_args = []
        template.connection_info = {"transport": "ipc", "ip": "/pool/sock/k"}  # its own, set when it is made
        template.connection_file = "/pool/handoff/kernel.json"  # placeholders: the shape leaves them out
        template.handoff_dir = "/pool/handoff"
        template.channel_root = "/pool"
        return template

    async def take_pooled(self, choice: selection.ImageChoice, env: dict[str, str]) -> pool.Warm | None:
        """A shared-pool container for this start (None: start cold); the pool refills in the background.

        Pools are per notebook folder (the pinned one, by device and inode, in
        the key and in the container's mounts): a warm container mounts
        exactly the folder of the kernel that takes it, never a folder above
        it, so a pooled kernel reaches what a cold one does and nothing more.
        """
        kernel = self.kernel
        if not kernel.mount_envpin:  # the waiting process is envpin's (envpin.entry.warm_kernel)
            return None
        if kernel.pool_root and not WarmKernels._warned_pool_root:
            WarmKernels._warned_pool_root = True
            kernel.log.warning("envpin: pool_root is ignored: warm containers mount exactly their notebook folder")
        folder = kernel._folder
        template = self._template(choice, env)
        shape = pool.shape_of(container_options(template))
        where = f"{folder.identity[0]}:{folder.identity[1]}" if folder is not None else ""
        # the kernel's engine: a pool of one engine never serves a kernel of another (remote_pool's keys too)
        folder_key = f"{docker_client.engine_address(kernel.engine or None)}|{kernel.user}|{where}"
        key = f"{folder_key}|{choice.resolved.id}|{shape}"
        # What a new pool of this key replaces: the same reference and configuration with another image id
        # (the tag moved). Another configuration in the same folder (a second kernelspec) is another group.
        config = hashlib.sha256(json.dumps(sorted(template.env.items())).encode()).hexdigest()[:16]
        group = f"{folder_key}|{choice.resolved.reference}|{config}"
        if self._folder_key != folder_key and kernel.kernel_id:
            self._folder_key = folder_key
            pool.pools.hold(folder_key, kernel.kernel_id)
        self._taken = pool.pools.take(key)
        owner = kernel._kernel_owner()

        async def make() -> pool.Warm:
            # Its own channel folder: removed again whatever stops the fill (a failed start, a drain meanwhile).
            channel_dir = await engine.create_owned(
                channels.make_channel_dir, owner, dispose=channels.remove_channel_dir
            )
            try:
                # A copy of the template made now: the fill may run after this kernel has gone (start_done
                # sets it going SETTLE s after the start), when the kernel can no longer build a launch.
                launch = dataclasses.replace(template)
                launch.channel_root = channel_dir
                launch.handoff_dir = await engine.call(pool.make_handoff_dir, channel_dir, owner)
                launch.connection_file = os.path.join(launch.handoff_dir, channels.CONNECTION_FILE)
                launch.connection_info = {"transport": "ipc", "ip": os.path.join(channel_dir, channels.SOCKET_DIR, "k")}
                return await self._make(launch, shape, channel_dir=channel_dir)
            except BaseException:
                await engine.call_through(channels.remove_channel_dir, channel_dir)
                raise

        self._refill = functools.partial(pool.pools.refill, key, kernel.pool_size, make, kernel.log, group, folder_key)
        if self._taken is not None:
            kernel.log.info(
                "envpin: kernel %s takes warm container %s", kernel.kernel_id, self._taken.container.short_id
            )
        return self._taken

    async def _make(self, launch: KernelLaunch, shape: str, channel_dir: str | None = None) -> pool.Warm:
        """Create and start a warm container for ``launch`` (its ``handoff_dir`` set); return once it waits.

        Cancelled at any point (the kernel shut down, the pool drained), it
        leaves nothing: a container still being created is removed once the
        engine returns it (``engine.create_owned``).
        """
        client = await self.kernel._docker()
        container = await engine.create_owned(
            kernel_container.start, client, launch, self.kernel.log, dispose=kernel_container.remove
        )
        env = dict(container_options(launch)["environment"])
        warm = pool.Warm(container, launch.handoff_dir or "", launch.image.id, shape, channel_dir, env=env)
        try:
            await engine.call(pool.wait_warm, warm, self.kernel.log)
        except BaseException:  # dead, or cancelled while it warmed up: no container left behind
            await engine.call_through(warm.discard)
            raise
        return warm

    # ---- the hand-over ----------------------------------------------------------------------

    async def hand_over(self, launch: KernelLaunch) -> Container | None:
        """Make a warm container that fits ``launch`` its kernel; None when there is none (start cold)."""
        warm, self._taken = self._taken, None
        if warm is None:
            standby = self._standbys.pop(launch.image.id, None)
            if standby is not None:
                pool.pools.untrack(standby)
                if standby.shape == pool.shape_of(container_options(launch)):
                    warm = standby
                else:  # the kernel's configuration changed since it was made
                    await engine.call(standby.discard)
        if warm is None:
            return None
        env = container_options(launch)["environment"]
        message = {
            "argv": ["-f", launch.in_container_connection_file(), *launch.kernel_args],
            "cwd": launch.cwd,
            "env": env,
            "unset": sorted(set(warm.env) - set(env)),
        }
        if not await engine.call(warm.hand_over, message):  # it died while it waited: a cold start it is
            self.kernel.log.warning("envpin: warm container %s stopped waiting; starting cold", warm.container.short_id)
            await engine.call(kernel_container.remove, warm.container)
            return None
        self._to_rename = warm.container  # once it answers (start_done): off the start's path
        return warm.container

    # ---- standbys, for restarts and moves ----------------------------------------------------

    def keep_standbys(self, current: KernelLaunch, moved_from: KernelLaunch | None = None) -> None:
        """Have (in the background) a standby for ``current``'s image, and one for the image last moved from.

        A call while standbys are being made is not lost: the running task
        makes them again, for the launches named last, once it is done.
        """
        if moved_from is not None:
            self._moved_from = moved_from
        if not self.kernel.pool_size or not self.kernel.mount_envpin or not current.private_channels:
            return
        self._current = current
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._keep_standbys())

    async def _keep_standbys(self) -> None:
        # At once, not SETTLE s later like the pool's refill: a standby being made when its kernel shuts down is
        # removed only once its creation ends, and the later it starts, the likelier that overlap.
        while True:
            self._again = False
            wanted = [launch for launch in (self._current, self._moved_from) if launch is not None]
            if not await self._make_standbys(wanted) or not self._again:
                return

    async def _make_standbys(self, launches: list[KernelLaunch]) -> bool:
        """Standbys for ``launches``' images (and none for others); False when the kernel went meanwhile."""
        kernel = self.kernel
        ids = {launch.image.id for launch in launches}
        for image_id in [i for i in self._standbys if i not in ids]:  # images this kernel no longer uses
            gone = self._standbys.pop(image_id)
            pool.pools.untrack(gone)
            await engine.call(gone.discard)
        for launch in launches:
            channel_dir = kernel._channel_dir
            if launch.image.id in self._standbys or channel_dir is None:
                continue
            standby = KernelLaunch(**{**launch.__dict__})
            standby.handoff_dir = await engine.call(pool.make_handoff_dir, channel_dir, kernel._kernel_owner())
            try:
                warm = await self._make(standby, pool.shape_of(container_options(launch)))
            except Exception as exc:  # noqa: BLE001  no standby: the next restart is cold, and fails as a cold one
                kernel.log.warning(
                    "envpin: no standby for kernel %s in %s: %s", kernel.kernel_id, launch.image.reference, exc
                )
                continue
            if kernel._channel_dir is None:  # the kernel was shut down meanwhile
                await engine.call(warm.discard)
                return False
            self._standbys[launch.image.id] = warm
            pool.pools.track(warm)
        return True

    async def discard(self) -> None:
        """The kernel goes for good: its standbys, and a taken container it never used, go too."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        warms = [*self._standbys.values(), *([self._taken] if self._taken else [])]
        self._standbys, self._taken, self._moved_from, self._to_rename = {}, None, None, None
        self._current, self._again = None, False
        refill, self._refill = self._refill, None  # a start that never ran: the pool refills all the same
        if refill is not None:
            refill()
        if self._folder_key is not None and self.kernel.kernel_id:
            pool.pools.release(self._folder_key, self.kernel.kernel_id)
            self._folder_key = None
        for warm in warms:
            pool.pools.untrack(warm)
            try:
                await engine.call(kernel_container.remove, warm.container)
            except engine.ENGINE_ERRORS as exc:  # gone with the engine: envpin gc removes it later
                self.kernel.log.warning("envpin: could not remove warm container %s: %s", warm.container.short_id, exc)
