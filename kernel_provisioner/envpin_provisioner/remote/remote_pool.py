"""Warm kernels on an engine of another machine (issue 28): the shared pool over SSH and over TCP+TLS.

Locally a warm container waits on a FIFO in a folder of the server's,
mounted read-only (``warm.pool``).  On another machine's engine nothing of
the server may be mounted, so a pool container there waits otherwise
(``envpin.entry.warm_kernel --poll``): it makes :data:`HANDOFF_DIR`, a 0700
folder of the kernel's user *inside its own container*, imports ipykernel,
writes ``waiting`` there (the readiness probe reads it with ``get_archive``)
and looks for ``go`` every 10 ms.  Taking it is one ``put_archive`` into that
running container: the connection file (the key), the hand-over message,
then ``go``.  The key crosses only the engine's API connection (inside SSH
or TLS) into that one container: never a command line, a variable, a label
or a file on the remote host's disk outside the container.  Each pool
container is used once, by one kernel, and shares no writable folder with
any other container, so a kernel cannot reach another kernel's key.

Channels as a cold start has them: over SSH each pool container gets its own
folder ``R`` on the remote host (``ssh_kernel.prepare``; ``R/sock`` mounted),
which becomes its kernel's, and the server adds the forwards of the kernel's
socket names when it is taken; over TLS the relays (``tls_kernel``) exec into
the taken container.  Keys, folders, drains, refills and the removal at the
server's exit are the shared ``warm.pool.pools``'; the key names the engine,
so a local pool never serves a remote kernel, nor one engine's another's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import docker.errors
from docker.models.containers import Container

from envpin import names
from envpin.entry import warm_kernel
from envpin.host import dialect, docker_client, ssh_tunnel
from envpin_provisioner import engine
from envpin_provisioner.images import selection
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.remote import package_volume, ssh_kernel, tls_kernel
from envpin_provisioner.remote.handover import HANDOFF_DIR, KEY_FILE, handover_archive, handover_message
from envpin_provisioner.warm import pool
from envpin_provisioner.warm.standbys import TakesWarm


class RemoteKernelSide(Protocol):
    """What :class:`RemoteWarmKernels` needs from the provisioner that owns it."""

    kernel_id: str | None
    log: logging.Logger | logging.LoggerAdapter
    pool_size: int
    mount_envpin: bool
    engine: str
    user: str
    remote_root: str
    local_root: str
    mounts: Any
    _folder: Any
    ssh_side: ssh_kernel.RemoteKernel | None

    @property
    def over_ssh(self) -> bool: ...

    async def _docker(self) -> Any: ...

    def build_launch(self, choice: selection.ImageChoice, env: dict[str, str], moved: bool = False) -> Any: ...


@dataclass
class RemoteWarm(pool.Warm):
    """A pool container on another machine's engine, waiting in :data:`HANDOFF_DIR`."""

    url: str = ""  #: the engine's address
    remote: ssh_kernel.RemoteKernel | None = None  #: over SSH: its folder R there (its kernel's, once taken)
    held: bool = False  #: over SSH: it holds the host's SSH connection (``ssh_tunnel.hold``)
    user: str = ""  #: uid:gid it runs as

    def waiting(self) -> bool:
        """True once its waiting process has imported ipykernel and waits (it wrote ``waiting``)."""
        try:
            self.container.get_archive(posixpath.join(HANDOFF_DIR, warm_kernel.POLL_READY))
        except docker.errors.NotFound:
            return False
        return True

    def discard(self) -> None:
        """Remove the container, its folder R over there and its hold on the SSH connection.  Blocking."""
        try:
            tls_kernel.remove(self.container)
        finally:
            remote, self.remote = self.remote, None
            if remote is not None:
                ssh_kernel.teardown(remote)
            if self.held:
                self.held = False
                ssh_tunnel.release(self.url)


def _waiting_options(options: dict[str, Any]) -> dict[str, Any]:
    """A cold start's create arguments, made a pool container's: it waits in :data:`HANDOFF_DIR`."""
    options["command"] = [names.ENTRY_WARM_KERNEL, "--poll", HANDOFF_DIR]
    options["name"] = f"{kernel_launch.WARM_NAME_PREFIX}remote-{os.urandom(4).hex()}"
    return options


# ---- making one (blocking) --------------------------------------------------------------------


def create_over_ssh(
    url: str, template: kernel_launch.KernelLaunch, shape: str, prepare_args: tuple[Any, ...]
) -> RemoteWarm:
    """A started pool container on the SSH engine ``url``, with its own folder R there.  Blocking."""
    ssh_tunnel.hold(url)
    warm: RemoteWarm | None = None
    remote: ssh_kernel.RemoteKernel | None = None
    try:
        client = engine.shared(url).client
        remote = ssh_kernel.prepare(url, *prepare_args)
        package = package_volume.ensure(client, template.image.id)
        options = _waiting_options(ssh_kernel.container_options(template, remote, package))
        container = dialect.create(client, **options)
        warm = RemoteWarm(
            container, HANDOFF_DIR, template.image.id, shape, env=dict(options["environment"]),
            url=url, remote=remote, held=True, user=options["user"],
        )  # fmt: skip
        container.start()
        ssh_kernel.check_workdir(container, remote, template.python)  # mounted once: checked once, before any key
        return warm
    except BaseException:
        if warm is not None:
            warm.discard()
        else:
            if remote is not None:
                ssh_kernel.teardown(remote)
            ssh_tunnel.release(url)
        raise


def create_over_tls(url: str, template: kernel_launch.KernelLaunch, shape: str) -> RemoteWarm:
    """A started pool container on the TLS engine ``url`` (its channel and working folders its own).  Blocking."""
    client = engine.shared(url).client
    package = package_volume.ensure(client, template.image.id)
    options = _waiting_options(tls_kernel.container_options(template, package, url))
    container = dialect.create(client, **options)
    warm = RemoteWarm(
        container, HANDOFF_DIR, template.image.id, shape, env=dict(options["environment"]), url=url,
        user=options["user"],
    )  # fmt: skip
    try:
        container.put_archive("/tmp", tls_kernel.private_folders(options["user"]))
        container.start()
    except BaseException:
        warm.discard()
        raise
    return warm


# ---- the hand-over (blocking) -----------------------------------------------------------------


#: Threads that overlap a hand-over's independent steps (forwards, the container's state).
_SIDE = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="envpin-rpool")


def _hand_over_ssh(
    warm: RemoteWarm, launch: kernel_launch.KernelLaunch, remote: ssh_kernel.RemoteKernel
) -> Container | None:
    """Over SSH: the archive goes in while the five forwards are added (one ``ssh -O forward``).  Blocking."""
    options = ssh_kernel.container_options(launch, remote, None)
    message = handover_message(launch, options["environment"], remote.workdir, warm.env)
    archive = handover_archive(launch.connection_info, posixpath.join(remote.socket_dir, "k"), message, warm.user)
    forwards = _SIDE.submit(ssh_kernel.forward_channels, launch, remote)
    alive = _SIDE.submit(_still_waiting, warm.container)
    try:
        warm.container.put_archive(HANDOFF_DIR, archive)
    finally:
        forwards.result()
    return warm.container if alive.result() else None


def _hand_over_tls(client: Any, warm: RemoteWarm, launch: kernel_launch.KernelLaunch) -> Container | None:
    """Over TLS: the archive goes in, then the relay of the kernel's channels starts.  Blocking."""
    options = tls_kernel.container_options(launch, None, warm.url)
    message = handover_message(launch, options["environment"], tls_kernel.WORK_DIR, warm.env)
    prefix = posixpath.join(tls_kernel.CHANNEL_DIR, "k")
    alive = _SIDE.submit(_still_waiting, warm.container)
    warm.container.put_archive(HANDOFF_DIR, handover_archive(launch.connection_info, prefix, message, warm.user))
    if not alive.result():
        return None
    tls_kernel.start_relay(client, warm.container, options["user"], launch)
    return warm.container


def _still_waiting(container: Container) -> bool:
    """The container still runs (its waiting process did not die while it waited): asked beside the hand-over."""
    return kernel_container.state(container)[1] is None


# ---- one kernel's side ----------------------------------------------------------------------------


class RemoteWarmKernels(TakesWarm):
    """One kernel's use of the remote pool: take one at its first start, hand it over, refill, let go."""

    def __init__(self, kernel: RemoteKernelSide) -> None:
        self.kernel = kernel
        self._taken: RemoteWarm | None = None
        self._refill: Callable[[], None] | None = None
        self._to_rename: Container | None = None
        self._folder_key: str | None = None

    def _template(self, choice: selection.ImageChoice, env: dict[str, str]) -> kernel_launch.KernelLaunch:
        """A pool container's launch: this kernel's, without what only a start knows (as ``WarmKernels._template``)."""
        template = self.kernel.build_launch(choice, {k: v for k, v in env.items() if k != names.SESSION_NAME})
        template.kernel_id = ""
        template.extra_env = {}
        template.kernel_args = []
        template.role = "pool"
        # placeholders: the ports are chosen per start (the hand-over's key); create arguments need some
        template.connection_info = {
            "transport": "ipc",
            "ip": "/pool/k",
            **{f"{ch}_port": 0 for ch in channels.CHANNELS},
        }
        template.connection_file = "/pool/kernel.json"
        template.channel_root = "/pool"  # not the kernel's own channel folder: the shape must not name it
        return template

    async def take(self, choice: selection.ImageChoice, env: dict[str, str]) -> RemoteWarm | None:
        """A pool container of this configuration on this kernel's engine (None: start cold); refill either way.

        Over SSH the container's folder R becomes the kernel's (``kernel.ssh_side``) at once.
        """
        kernel = self.kernel
        if not kernel.pool_size or not kernel.mount_envpin or kernel._folder is None:
            return None
        address = docker_client.engine_address(kernel.engine or None)
        template = self._template(choice, env)
        shape = pool.shape_of(kernel_launch.container_options(template))
        where = f"{kernel._folder.identity[0]}:{kernel._folder.identity[1]}"
        folder_key = f"{address}|{kernel.user}|{where}"
        place = json.dumps([kernel.remote_root, kernel.local_root])
        key = f"{folder_key}|{place}|{choice.resolved.id}|{shape}"
        config = hashlib.sha256(json.dumps(sorted(template.env.items())).encode()).hexdigest()[:16]
        group = f"{folder_key}|{place}|{choice.resolved.reference}|{config}"
        if self._folder_key != folder_key and kernel.kernel_id:
            self._folder_key = folder_key
            pool.pools.hold(folder_key, kernel.kernel_id)
        taken = pool.pools.take(key)
        over_ssh = kernel.over_ssh
        prepare_args = (
            kernel.remote_root,
            kernel.local_root,
            kernel._folder.path,
            list(kernel.mounts),
        )
        log = kernel.log

        async def make() -> pool.Warm:
            launch = dataclasses.replace(template)
            if over_ssh:
                warm = await engine.create_owned(
                    create_over_ssh, address, launch, shape, prepare_args, dispose=RemoteWarm.discard
                )
            else:
                warm = await engine.create_owned(create_over_tls, address, launch, shape, dispose=RemoteWarm.discard)
            try:
                await engine.call(pool.wait_warm, warm, log)
            except BaseException:  # dead, or cancelled while it warmed up: nothing left over there
                await engine.call_through(warm.discard)
                raise
            return warm

        self._refill = functools.partial(pool.pools.refill, key, kernel.pool_size, make, log, group, folder_key)
        if not isinstance(taken, RemoteWarm):
            return None
        self._taken = taken
        if taken.remote is not None:  # its folder R is the kernel's from now on (torn down with the kernel)
            kernel.ssh_side, taken.remote = taken.remote, None
        if taken.held:  # the kernel holds the connection itself (``_docker``)
            taken.held = False
            await engine.call(ssh_tunnel.release, taken.url)
        log.info("envpin: kernel %s takes warm container %s on %s", kernel.kernel_id, taken.container.short_id, address)
        return taken

    async def hand_over(self, launch: kernel_launch.KernelLaunch) -> Container | None:
        """The taken container becomes the kernel of ``launch``; None when none was taken or it stopped waiting."""
        warm, self._taken = self._taken, None
        if warm is None:
            return None
        client = await self.kernel._docker()
        remote = self.kernel.ssh_side
        try:
            if remote is not None:
                container = await engine.call(_hand_over_ssh, warm, launch, remote)
            else:
                container = await engine.call(_hand_over_tls, client, warm, launch)
        except BaseException:
            await engine.call_through(warm.discard)
            raise
        if container is None:
            self.kernel.log.warning("envpin: warm container %s stopped waiting; starting cold", warm.container.short_id)
            await engine.call_through(warm.discard)
            return None
        self._to_rename = container
        return container

    async def discard(self) -> None:
        """The kernel goes for good: a taken container it never used goes too; its folder lets go of the pool."""
        taken, self._taken, self._to_rename = self._taken, None, None
        refill, self._refill = self._refill, None
        if refill is not None:
            refill()
        if self._folder_key is not None and self.kernel.kernel_id:
            pool.pools.release(self._folder_key, self.kernel.kernel_id)
            self._folder_key = None
        if taken is not None:
            try:
                await engine.call(taken.discard)
            except engine.ENGINE_ERRORS as exc:  # gone with the engine: envpin gc removes it later
                self.kernel.log.warning("envpin: could not remove warm container %s: %s", taken.container.short_id, exc)


__all__ = ["HANDOFF_DIR", "KEY_FILE", "RemoteWarm", "RemoteWarmKernels", "handover_archive", "handover_message"]
