"""``EnvpinProvisioner``: a jupyter_client kernel provisioner that runs ipykernel in a container.

Registered as ``envpin-docker`` in the ``jupyter_client.kernel_provisioners``
entry point group.  A kernelspec selects it with::

    "metadata": {"kernel_provisioner": {"provisioner_name": "envpin-docker",
                                        "config": {"image": "python-ml:3.11"}}}

Its options, and the one precedence order they follow, are in ``options``
(``ProvisionerOptions``).

Every Docker call runs in a worker thread (``engine.call``) on the server's
one shared client (``engine.shared``), so the event loop keeps serving other
notebooks while an image is pulled or a container starts.  The provisioner
extends ``LocalProvisioner`` only to reuse its ``pre_launch`` (ports,
connection file, CurveZMQ keys); every hook that touches the kernel process
is replaced by its container equivalent.  What is not a jupyter_client hook
lives elsewhere: the kernel's container (``kernel``: ``launch``, ``container``,
``channels``, ``folder``, ``readiness``), the image choice (``images.selection``),
the ``%use_image`` conversation (``moves``), warm containers (``warm``), how a starting
kernel is listed by jupyter_server (``server_listing``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
from typing import Any

import docker.errors
from docker.models.containers import Container
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from envpin import names, safe_files
from envpin.errors import for_dialog
from envpin.host import docker_client, ssh_tunnel
from envpin.host.images import ResolvedImage
from envpin_provisioner import engine
from envpin_provisioner.errors import ConfigError, EnvpinError, shown_in_dialogs
from envpin_provisioner.images import pulling, selection, start_pulls
from envpin_provisioner.images.pull_budget import PullBudget
from envpin_provisioner.kernel import channels, client_sockets, folder, ownership, readiness
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.kernel.launch import KernelLaunch
from envpin_provisioner.moves.control_requests import ControlChannel
from envpin_provisioner.moves.mover import MoveServer
from envpin_provisioner.options import ProvisionerOptions, byte_count, check_options
from envpin_provisioner.pins import follow
from envpin_provisioner.remote import control_relay, remote_pool, ssh_kernel, tls_kernel
from envpin_provisioner.server_listing import listable_while_starting
from envpin_provisioner.warm.standbys import WarmKernels

#: Threads that remove channel folders: their own, so a few crowded folders (up to a minute each) never
#: hold the threads every Docker call of every kernel runs in (asyncio's default executor).
_REMOVALS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="envpin-removal")


# (mypy cannot evaluate jupyter_client's metaclass, KernelProvisionerMeta(ABCMeta, type(LoggingConfigurable)),
# which derives from traitlets' MetaHasTraits: at run time the two bases agree.)
class EnvpinProvisioner(ProvisionerOptions, LocalProvisioner):  # type: ignore[metaclass]
    """Starts ipykernel inside a Docker container of the configured image (options: ``ProvisionerOptions``)."""

    # ---- state -------------------------------------------------------------------------

    _container: Container | None = None
    _engine: engine.Engine | None = None
    _channel_dir: str | None = None
    _choice: selection.ImageChoice | None = None
    _launch: KernelLaunch | None = None
    _watcher: asyncio.Task | None = None
    _control: ControlChannel | None = None
    _mover: MoveServer | None = None
    _warm: WarmKernels
    #: The notebook folder (mounted, the kernel's working folder) and the folder of its pin file: named by
    #: jupyter_server's first start request (never by the kernel), pinned then, and used through their
    #: descriptors from then on (``safe_files.PinnedDir``): a kernel that relinks either path later moves nothing.
    _folder: safe_files.PinnedDir | None = None
    _pin_dir: safe_files.PinnedDir | None = None
    _notebook: str | None = None
    #: The kernel's socket files as it bound them (ipc): a name replaced since is not the kernel's any more.
    _sockets: dict[str, tuple[int, int]] | None = None
    _pull_budget: PullBudget | None = None
    #: With an ssh:// engine: this kernel's side of the remote host (``remote.ssh_kernel``).
    _remote: ssh_kernel.RemoteKernel | None = None
    #: With an ssh:// engine: the address whose SSH connection this kernel holds (``ssh_tunnel.hold``).
    _ssh_held: str | None = None
    #: The container whose death the log has explained (Jupyter says only "appears to have died").
    _told_dead: str | None = None
    #: whether the running container was a warm one (the shared pool's or a standby) rather than a cold start
    _started_warm = False

    def __init__(self, **kwargs: Any) -> None:
        try:
            check_options(type(self), kwargs, kwargs.get("kernel_spec"))
        except ConfigError as exc:  # what JupyterLab's start dialog shows: fix first, short lines
            raise for_dialog(exc) from None
        super().__init__(**kwargs)
        self._warm = WarmKernels(self)
        self._remote_warm = remote_pool.RemoteWarmKernels(self)  # the pool on another machine's engine
        follow.attach(self.parent, self.log)  # pins follow renames made in this server (no-op outside one)
        listable_while_starting(self.parent)

    @property
    def kernelspec_name(self) -> str | None:
        """The kernelspec this kernel was started from (a folder pin applies only to its own kernelspec)."""
        return getattr(self.parent, "kernel_name", None) or None

    @property
    def _resolved(self) -> ResolvedImage | None:
        return self._choice.resolved if self._choice else None

    # ---- helpers -----------------------------------------------------------------------

    async def _docker(self) -> Any:
        """The server's shared Docker client (connected on first use, off the event loop).

        Over SSH this kernel holds the host's SSH connection from here until its shutdown (or its failed
        first start): the last kernel of a host to let go ends the ssh process (``ssh_tunnel.Master.release``).
        """
        if self.over_ssh and self._ssh_held is None:
            address = docker_client.engine_address(self.engine or None)
            await engine.call(ssh_tunnel.hold, address)
            self._ssh_held = address
        if self._engine is None:
            self._engine = await engine.call(engine.shared, self.engine or None)
        return self._engine.client

    async def _let_go_of_remote(self) -> None:
        """This kernel's folder and forwards on the remote host go, and its hold on the SSH connection.  Never raises."""
        if self._remote is not None:
            remote, self._remote = self._remote, None
            await engine.call_through(ssh_kernel.teardown, remote)
        if self._ssh_held is not None:
            address, self._ssh_held = self._ssh_held, None
            await engine.call_through(ssh_tunnel.release, address)

    @property
    def ssh_side(self) -> ssh_kernel.RemoteKernel | None:
        """With an ssh:// engine: this kernel's folder R and forwards there (a remote pool container's, once taken)."""
        return self._remote

    @ssh_side.setter
    def ssh_side(self, remote: ssh_kernel.RemoteKernel | None) -> None:
        self._remote = remote

    @property
    def _moving(self) -> bool:
        return self._mover is not None and self._mover.moving

    @property
    def over_ssh(self) -> bool:
        """The engine is another machine's, reached through SSH: nothing of this machine is mounted there."""
        return docker_client.engine_address(self.engine or None).startswith("ssh://")

    @property
    def over_tls(self) -> bool:
        """The engine is another machine's, reached over TCP+TLS: channels ride the engine's TLS (``tls_kernel``)."""
        from envpin.host import engine_urls

        return engine_urls.wants_tls(docker_client.engine_address(self.engine or None))

    @property
    def on_other_machine(self) -> bool:
        """ssh:// or TLS: no bind mount of this machine, no warm pool or standbys; the control folder is relayed."""
        return self.over_ssh or self.over_tls

    def _transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        # Over SSH the server side is ipc too: its socket names are forwards of the kernel's (remote.ssh_kernel).
        return "ipc" if docker_client.is_local_engine(self.engine or None) or self.on_other_machine else "tcp"

    @property
    def _control_dir(self) -> str | None:
        return os.path.join(self._channel_dir, channels.CONTROL_DIR) if self._channel_dir else None

    def _kernel_owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give the kernel's files to: only when root starts a kernel as another user."""
        if os.getuid() != 0:
            return None
        uid, _, gid = self.user.partition(":")
        try:
            uid_i, gid_i = int(uid), int(gid or uid)
        except ValueError:
            raise ConfigError(
                f"user='{self.user}' is not 'UID:GID' (numbers); fix the user option of this kernel."
            ) from None
        return None if uid_i == 0 else (uid_i, gid_i)

    def build_launch(self, choice: selection.ImageChoice, env: dict[str, str], moved: bool = False) -> KernelLaunch:
        """The KernelLaunch for ``choice``: everything but the image comes from the options, the folder is the pinned one."""
        km = self.parent
        if self._folder is None:
            raise EnvpinError("build_launch ran before pre_launch pinned the notebook folder; this is a bug in envpin.")
        return kernel_launch.build(
            self,
            choice,
            kernel_id=self.kernel_id,
            connection_info=dict(self.connection_info),
            connection_file=km.connection_file if km else "",
            folder=self._folder,
            env=env,
            kernelspec_env=(self.kernel_spec.env or {}) if self.kernel_spec else (),
            # asked (off the event loop) by pre_launch, only when 'auto' needs it; cached by then
            engine_memory=self._engine.memory_total() if self._engine and self.shm_size == "auto" else None,
            control_dir=(
                names.CONTAINER_CONTROL_DIR
                if self.on_other_machine
                else self._control_dir
                if self.transport_supports_control
                else None
            ),
            moved=moved,
            private_channels=not self.on_other_machine,
            remote=self.on_other_machine,
            channel_root=self._channel_dir,
        )

    @property
    def transport_supports_control(self) -> bool:
        """The control folder lives in the channel directory, which only ipc mounts into the container."""
        return bool(
            self.parent is not None and getattr(self.parent, "transport", "") == "ipc" and not self.on_other_machine
        )

    @property
    def serves_moves(self) -> bool:
        """``%use_image`` can move this kernel: its control folder is shared (local ipc) or relayed (remote)."""
        return self.transport_supports_control or self.on_other_machine

    async def engine_client(self) -> Any:
        """The Docker client of this kernel's engine (a move resolves and pulls there)."""
        return await self._docker()

    async def abandon(self, container: Container) -> None:
        """A move's new container goes, and the kernel that stays gets its channel names back.  Never raises.

        Locally the old kernel's sockets kept their names until the new one
        bound; on another machine's engine they were handed on: over SSH set
        aside (``ssh_kernel.set_aside``), over TLS taken by the new relay.
        """
        await engine.call_through(tls_kernel.remove, container)
        try:
            if self._remote is not None:
                await engine.call_through(ssh_kernel.put_back, self._remote)
            elif self.over_tls and self._container is not None:
                await engine.call_through(tls_kernel.reclaim, self._container.id)
        except (OSError, ssh_tunnel.TunnelError, subprocess.TimeoutExpired) as exc:
            self.log.warning("envpin: kernel %s could not take its channels back after a failed move: %s",
                             self.kernel_id, exc)  # fmt: skip

    def _remove_other_containers(self, client: Any, keep: Container) -> None:
        """Remove this kernel's containers other than ``keep``.  Blocking.

        They exist when the engine went away before it could remove them (a
        restart during an engine restart), or when two restarts overlapped.
        A failure here is not the start's failure: the next start or
        ``envpin gc`` tries again.
        """
        standbys = self._warm.standby_ids()
        try:
            for other in ownership.envpin_containers(client, f"{names.LABEL_KERNEL_ID}={self.kernel_id}"):
                if other.id != keep.id and other.id not in standbys:
                    kernel_container.remove(other)
                    self.log.info("envpin: removed stale container %s of kernel %s", other.short_id, self.kernel_id)
        except engine.ENGINE_ERRORS as exc:
            self.log.warning("envpin: could not sweep stale containers of kernel %s: %s", self.kernel_id, exc)

    async def start_container(
        self, launch: KernelLaunch, replacing: dict[str, tuple[int, int]] | None = None
    ) -> Container:
        """Start a kernel for ``launch``; return once it answers (else remove its container and raise).

        A warm container that fits (the shared pool's taken by ``pre_launch``,
        or this kernel's standby for the image) becomes the kernel; else a new
        container is created (a cold start).
        """
        ready = False
        moving_remote = replacing is not None and self.on_other_machine
        if moving_remote:
            # Readiness must hear the new kernel, not the old one on the same names: over SSH the old names go
            # aside first; over TLS the new relay binds the local names to the new container only.
            if self._remote is not None:
                await engine.call(ssh_kernel.set_aside, self._remote)
            replacing = None
        try:
            client = await self._docker()
            container = await self._warm.hand_over(launch) or await self._remote_warm.hand_over(launch)
            warm = container is not None
            if container is None and self._remote is not None:  # another machine's engine, over SSH
                container = await engine.create_owned(
                    ssh_kernel.start, client, launch, self._remote, self.log, dispose=kernel_container.remove
                )
            elif container is None and self.over_tls:  # another machine's engine, over TCP+TLS
                container = await engine.create_owned(
                    tls_kernel.start, client, launch, self.log, dispose=tls_kernel.remove
                )
            elif container is None:  # a cancelled start (a shutdown meanwhile) still removes what it created
                container = await engine.create_owned(
                    kernel_container.start, client, launch, self.log, dispose=kernel_container.remove
                )
            try:
                await engine.call(readiness.wait_ready, container, launch, self.launch_timeout, self.log, replacing)
            except BaseException:  # a failed or cancelled start leaves no container behind (nor a TLS kernel's relay)
                if moving_remote:
                    await self.abandon(container)
                else:
                    await engine.call_through(tls_kernel.remove, container)
                raise
            ready = True
        except BaseException:
            if moving_remote and not ready and self._remote is not None:  # the new container never came
                await engine.call_through(ssh_kernel.put_back, self._remote)
            raise
        finally:  # the pool's refill and the rename wait until the start is over, whatever its outcome
            self._warm.start_done(ready)
            self._remote_warm.start_done(ready)
        self._started_warm = warm
        return container

    # ---- what the JupyterLab extension reports (envpin_provisioner.lab.report) --------------

    @property
    def started_warm(self) -> bool:
        """Whether the running container was taken warm (pool or standby) rather than started cold."""
        return self._started_warm

    @property
    def container_short_id(self) -> str | None:
        return self._container.short_id if self._container is not None else None

    @property
    def mover(self) -> MoveServer | None:
        """The server of this kernel's %use_image requests (None before its first start, or without ipc)."""
        return self._mover

    # ---- what the move server uses (moves.mover.MovableKernel) ----------------------------

    @property
    def choice(self) -> selection.ImageChoice | None:
        return self._choice

    def set_choice(self, choice: selection.ImageChoice) -> None:
        self._choice = choice

    @property
    def pull_budget(self) -> PullBudget:
        """The pulls this kernel may still cause: one allowance for the provisioner's life (restarts included)."""
        if self._pull_budget is None:
            self._pull_budget = PullBudget(
                self.max_pulls_per_kernel, byte_count(self.max_pull_bytes, "max_pull_bytes"), self.pull_interval
            )
        return self._pull_budget

    def pin_location(self) -> tuple[safe_files.PinnedDir, str | None, tuple[int, int] | None]:
        """Where this kernel's pin is recorded: the folder pinned at its first start, by descriptor."""
        if self._pin_dir is None:
            raise EnvpinError("This kernel has not finished starting; run %use_image again in a moment.")
        return self._pin_dir, self._notebook, self._kernel_owner()

    def swap(self, container: Container, launch: KernelLaunch, choice: selection.ImageChoice) -> Container | None:
        moved_from = self._launch
        previous, self._container, self._launch, self._choice = self._container, container, launch, choice
        self._sockets = channels.socket_inodes(launch) if launch.private_channels else None
        self._warm.keep_standbys(launch, moved_from)
        if self._control is not None:
            self._control.follow(container)  # a relayed folder listens to the new container now
        return previous

    # ---- jupyter_client hooks ----------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._container is not None

    @shown_in_dialogs
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Choose and resolve the image, prepare the private channel directory, write the connection file.

        Runs before every start, restarts included: the notebook's pin is read
        again (a move recorded one) and the image re-resolved, so a moved tag is
        noticed.  Pulls happen here, before the launch timeout starts counting.
        """
        first = self._launch is None
        try:
            return await self._prepare_launch(**kwargs)
        except BaseException:  # a first start that failed here leaves nothing on a remote host either
            if first:
                await self._remote_warm.discard()  # a pool container taken for it
                await self._let_go_of_remote()
            raise

    async def _prepare_launch(self, **kwargs: Any) -> dict[str, Any]:
        client = await self._prepare_engine()
        env = kwargs.get("env") or {}
        await self._pin_notebook(env, kwargs.get("cwd"))
        # Over SSH (no pool to take a folder from) the kernel's folder there, a round trip of its own, is
        # made while the image is chosen (Engine API requests): the two need nothing of each other.
        early = self._remote is None and self.over_ssh and not self.pool_size
        folder_there = asyncio.ensure_future(self._prepare_remote()) if early else None
        try:
            with start_pulls.tracked(self.image or "", self.kernel_id) as progress:  # shown by the JupyterLab extension
                self._choice = await engine.call(
                    selection.choose,
                    client,
                    self.image,
                    self.pull_policy,
                    self._notebook,
                    self._pin_dir,
                    self.log,
                    self.allowed_images,
                    kernelspec=self.kernelspec_name,
                    progress=progress,
                )
        except BaseException:  # the folder made meanwhile is the kernel's: pre_launch's failure path removes it
            if folder_there is not None:
                await asyncio.wait([folder_there])
                if not folder_there.cancelled() and folder_there.exception() is None:
                    self._remote = folder_there.result()
            raise
        if folder_there is not None:
            self._remote = await folder_there
        transport = self._transport()
        kernel_launch.check_transport(transport, self.network_mode, self._choice.name)
        await self._set_up_channels(transport, env)
        if self.over_tls and self.remote_root:
            raise ConfigError(
                f"remote_root='{self.remote_root}' needs an engine reached over SSH: over TCP+TLS envpin reaches "
                "only the engine, not that machine's folders, and the kernel works in its container's own folder. "
                "Use engine='ssh://USER@HOST' for a working folder on that machine, or leave remote_root empty."
            )
        if self.on_other_machine and self._launch is None and self.pool_size:  # over SSH: its folder R is the kernel's
            await self._remote_warm.take(self._choice, env)
        if self.over_ssh and self._remote is None:
            self._remote = await self._prepare_remote()
        if transport == "tcp" and self.network_mode != "none":
            await self._require_encryption(client, self._choice, kwargs)
        kwargs = await super().pre_launch(**kwargs)
        self._give_connection_file()
        return kwargs

    async def _prepare_remote(self) -> ssh_kernel.RemoteKernel:
        """Over SSH: make this kernel's folder R on the remote host (``ssh_kernel.prepare``)."""
        assert self._folder is not None  # pinned first
        return await engine.call(
            ssh_kernel.prepare,
            docker_client.engine_address(self.engine or None),
            self.remote_root,
            self.local_root,
            self._folder.path,
            list(self.mounts),
        )

    async def _prepare_engine(self) -> Any:
        """The shared client, after this server's first collection of orphans; the engine's memory if 'auto' needs it."""
        client = await self._docker()
        assert self._engine is not None  # set by _docker()
        await engine.call(self._engine.collect_garbage_once, self.log)
        if self.shm_size == "auto":
            await engine.call(self._engine.memory_total)  # asked once per engine, before build_launch needs it
        return client

    async def _pin_notebook(self, env: dict[str, str], cwd: str | None) -> None:
        """The notebook and its folder come from jupyter_server's start request, and from nowhere else.

        The first start pins the folders; restarts and moves use what was pinned,
        except the pin file's folder, which follows a notebook renamed, moved or
        saved as another file in Jupyter (``pins.follow.follow_session``).
        """
        previous, self._notebook = self._notebook, env.get(names.SESSION_NAME) or None
        if self._folder is None:
            self._folder, self._pin_dir = await engine.call(folder.pin_folders, self._notebook, cwd)
        elif self._pin_dir is not None:
            self._pin_dir = await engine.call(
                follow.follow_session, previous, self._notebook, self._folder, self._pin_dir, self.log
            )

    async def _set_up_channels(self, transport: str, env: dict[str, str]) -> None:
        """This kernel's channel folder, kept across restarts: a warm container's when the pool has one, else new."""
        km = self.parent
        if km is None or self._channel_dir is not None:
            return
        assert self._choice is not None  # chosen by pre_launch first
        if transport == "ipc" and self.pool_size and not self.on_other_machine:
            warm = await self._warm.take_pooled(self._choice, env)
            if warm is not None and warm.channel_dir:  # its channel folder becomes this kernel's
                handed_over = os.path.join(warm.handoff_dir, channels.CONNECTION_FILE)
                self._use_channels(km, warm.channel_dir, handed_over, transport)
                return
        channel_dir = channels.make_channel_dir(self._kernel_owner())
        self._use_channels(km, channel_dir, os.path.join(channel_dir, channels.CONNECTION_FILE), transport)

    def _use_channels(self, km: Any, channel_dir: str, connection_file: str, transport: str) -> None:
        """Make ``channel_dir`` this kernel's: its control folder watched, the kernel manager's channels in it."""
        self._channel_dir = channel_dir
        self._control = ControlChannel(os.path.join(channel_dir, channels.CONTROL_DIR), self.log, self._kernel_owner())
        km.connection_file = connection_file
        km.transport = transport
        client_sockets.reconnect_quickly(km)  # a move's successor is found in milliseconds, not 100-200
        km.ip = os.path.join(channel_dir, channels.SOCKET_DIR, "k") if transport == "ipc" else "127.0.0.1"

    async def _require_encryption(self, client: Any, choice: selection.ImageChoice, kwargs: dict[str, Any]) -> None:
        """tcp: the channels must be encrypted (CurveZMQ), or the kernel does not start.

        tcp ports are reachable by every local user and, on a bridge network,
        by every other container on it (publishing on 127.0.0.1 does not stop
        container-to-container traffic).  Sets ``transport_encryption`` in
        ``kwargs`` (jupyter_client's ``pre_launch`` then writes the keys).
        """
        if not await engine.call(pulling.supports_curve, client, choice.resolved, self.python):
            raise ConfigError(
                f"Image '{choice.name}' has an ipykernel that cannot encrypt its channels (CurveZMQ), "
                "and with transport='tcp' its ports would be open to every container on the engine's network "
                "and every user of this machine, so envpin does not start it. Use transport='ipc' with a local "
                "engine, or an image with a newer ipykernel (pip install -U ipykernel pyzmq)."
            )
        if kwargs.get("transport_encryption", "required") != "required":
            raise ConfigError(
                f"transport_encryption={kwargs['transport_encryption']!r} with transport='tcp' would leave the "
                "kernel's ports unencrypted and open to other containers; envpin requires 'required' there."
            )
        kwargs["transport_encryption"] = "required"

    def _give_connection_file(self) -> None:
        """Root starting a kernel as another user: that user must read the connection file.

        Its folder (the channel directory, or a warm container's hand-over
        folder) is never writable by a kernel: it is chowned by descriptor anyway.
        """
        km = self.parent
        owner = self._kernel_owner()
        if owner and self._channel_dir and km is not None:
            channels.give_connection_file(os.path.dirname(km.connection_file), owner)

    @shown_in_dialogs
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the container and return once the kernel answers its heartbeat."""
        if self._choice is None or self._folder is None:
            raise EnvpinError("launch_kernel ran before pre_launch chose an image; this is a bug in the caller.")
        launch = self.build_launch(self._choice, kwargs.get("env") or {})
        restarting = self._launch is not None
        if restarting:  # the old container is gone: drop whatever the kernel left at its socket names
            await engine.call(channels.clear_sockets, launch)
        try:
            container = await self.start_container(launch)
        except BaseException:  # a first start that failed: nothing of it stays on the remote host
            if not restarting:
                await self._let_go_of_remote()
            raise
        # Two restarts can overlap (the server's auto-restarter and a user's): one kernel, one container.
        previous, self._container, self._launch = self._container, container, launch
        if previous is not None and previous.id != container.id:
            self.log.warning(
                "envpin: kernel %s was started twice at once; removing %s", self.kernel_id, previous.short_id
            )
        if restarting:  # a first start has no earlier containers to sweep: spare it the Docker call
            await engine.call(self._remove_other_containers, await self._docker(), container)
        self.cwd = self._folder.path
        self._sockets = await engine.call(channels.socket_inodes, launch) if launch.private_channels else None
        self._warm.keep_standbys(launch)
        if self.on_other_machine:  # the control folder is in the container, relayed (remote.control_relay)
            if not isinstance(self._control, control_relay.RemoteControlChannel):
                if self._control is not None:
                    self._control.close()  # the local folder _use_channels opened: unused on another machine
                self._control = control_relay.RemoteControlChannel(self.python, self.log, f"kernel {self.kernel_id}")
            self._control.follow(container)
        if self.serves_moves and self._control is not None and (self._watcher is None or self._watcher.done()):
            self._mover = MoveServer(self, self._control, kwargs.get("env") or {})
            self._watcher = asyncio.ensure_future(self._mover.serve())
        return self.connection_info

    async def poll(self) -> int | None:
        """``None`` while the container runs (or is being replaced by a move), else its exit code."""
        if self._moving:
            return None
        if self._container is None:
            return 0
        if (
            self._sockets
            and self._launch is not None
            and self._sockets != await engine.call(channels.socket_inodes, self._launch)
        ):
            return await self._channels_tampered()
        try:
            _, code = await engine.call(kernel_container.state, self._container)
            if code is not None and self._launch is not None and not self._moving:
                if self._told_dead != self._container.id:  # the first poll that sees it dead says why, once
                    self._told_dead = self._container.id
                    note = await engine.call(readiness.death_note, self._container)
                    self.log.warning(
                        "envpin: kernel %s (container %s, image %s) %s",
                        self.kernel_id, self._container.short_id, self._launch.image.reference, note,
                    )  # fmt: skip
                # Dead: until a restart binds them anew, reconnects must find nothing at the socket names.
                self._sockets = None
                await engine.call(channels.clear_sockets, self._launch)
        except (
            engine.ENGINE_ERRORS
        ) as exc:  # engine unreachable or restarting: do not declare the kernel dead on a guess
            self.log.warning(
                "envpin: cannot reach the Docker engine to check kernel %s (%s: %s); "
                "it counts as alive until the engine answers again",
                self.kernel_id, type(exc).__name__, exc,
            )  # fmt: skip
            return None
        return None if self._moving else code

    async def _channels_tampered(self) -> int:
        """The kernel replaced one of its socket files (by a link to another socket, say): it is dead to us.

        Its clients reconnect by path; a name the kernel swapped would lead
        them elsewhere.  The names go at once and the container is killed, so
        the server's restarter sees a dead kernel within one poll.
        """
        self.log.warning(
            "envpin: kernel %s replaced its channel sockets; it is stopped (its clients must not follow them)",
            self.kernel_id,
        )
        self._sockets = None
        if self._launch is not None:
            await engine.call(channels.clear_sockets, self._launch)
        if self._container is not None:
            try:
                await engine.call(self._container.kill)
            except docker.errors.APIError as exc:  # stopped meanwhile (404/409)
                self.log.debug("envpin: kill after tampering: %s", exc)
        return -1

    async def wait(self) -> int | None:
        """Wait until the container stops (callers bound this with a timeout)."""
        if self._container is None:
            return 0
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return code

    async def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to the kernel: docker-init (PID 1) forwards it to ipykernel."""
        if self._container is None:
            return
        try:
            await engine.call(self._container.kill, signal=int(signum))
        except docker.errors.APIError as exc:  # container already stopped or gone (409/404): nothing to signal
            self.log.debug("envpin: signal %s to %s failed: %s", signum, self._container.short_id, exc)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the container; keep the channel directory only across a restart."""
        if self._watcher is not None and not restart:
            if self._mover is not None:
                self._mover.close()
                self._mover = None
            self._watcher.cancel()
            self._watcher = None
        if self._container is not None:
            container, self._container = self._container, None
            if self._launch is not None:
                # Before the container goes (and the clients reconnect): no name the kernel may have
                # replaced by a link stays at its socket paths.
                self._sockets = None
                await engine.call(channels.clear_sockets, self._launch)
            try:
                await engine.call(tls_kernel.remove, container)  # a TLS kernel's relay, then the container
                self.log.info("envpin: removed kernel container %s", container.short_id)
            except engine.ENGINE_ERRORS as exc:  # the engine is unreachable: do not break the shutdown or restart
                self.log.warning(
                    "envpin: could not remove kernel container %s (%s); it goes at this kernel's next "
                    "start, or with envpin gc, once the engine answers", container.short_id, exc,
                )  # fmt: skip
        if not restart:
            await self._warm.discard()
            await self._remote_warm.discard()
        if not restart:
            await self._let_go_of_remote()
        if not restart and self._channel_dir:
            if self._control is not None:
                self._control.close()
                self._control = None
            # The key goes now; the rest (whatever the kernel filled its folders with) in the background,
            # bounded in time: never on the event loop, never an exception out of cleanup.
            channel_dir, self._channel_dir = self._channel_dir, None
            try:
                await engine.call(channels.remove_connection_files, channel_dir)
            except OSError as exc:
                self.log.warning("envpin: could not remove the connection file in %s: %s", channel_dir, exc)
            removal = asyncio.get_running_loop().run_in_executor(_REMOVALS, self._remove_channel_dir, channel_dir)
            try:  # usually done in milliseconds: then the folder is gone when the shutdown returns
                await asyncio.wait_for(asyncio.shield(removal), 1.0)
            except asyncio.TimeoutError:
                self.log.info(
                    "envpin: kernel %s left a crowded channel folder; removing it in the background", self.kernel_id
                )
        if not restart:
            for pinned in {id(p): p for p in (self._folder, self._pin_dir) if p is not None}.values():
                pinned.close()
            self._folder = self._pin_dir = None
        await super().cleanup(restart=restart)

    def _remove_channel_dir(self, path: str) -> None:
        if not channels.remove_channel_dir(path):
            self.log.warning(
                "envpin: the channel folder %s of kernel %s was not fully removed within %.0f s (the kernel filled "
                "it); its key is gone, remove the rest by hand", path, self.kernel_id, channels.REMOVAL_BUDGET,
            )  # fmt: skip

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel was asked to exit: take its socket names away now, before it closes them.

        Its clients reconnect by path as soon as the kernel's sockets close; a
        name the kernel replaced by a link would lead them elsewhere (see
        ``channels.clear_sockets``).  Established connections are not affected.
        """
        await super().shutdown_requested(restart=restart)
        if self._launch is not None:
            self._sockets = None
            await engine.call(channels.clear_sockets, self._launch)

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended

    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a restarted server needs to find this kernel's container again."""
        info = await super().get_provisioner_info()
        info.update(
            container_id=self._container.id if self._container is not None else None,
            channel_dir=self._channel_dir,
            image=self._resolved.reference if self._resolved else self.image,
            image_id=self._resolved.immutable if self._resolved else None,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Re-attach to the container named in ``provisioner_info`` and take ownership of it."""
        await super().load_provisioner_info(provisioner_info)
        self._channel_dir = provisioner_info.get("channel_dir")
        control_dir = self._control_dir
        if control_dir and self._control is None and os.path.isdir(control_dir):
            self._control = ControlChannel(control_dir, self.log, self._kernel_owner())
        cid = provisioner_info.get("container_id")
        if not cid:
            return
        client = await self._docker()
        try:
            container = await engine.call(client.containers.get, cid)
        except docker.errors.NotFound:
            self.log.warning("envpin: container %s of kernel %s is gone", cid[:12], self.kernel_id)
            self._container = None
            return
        if not await engine.call(ownership.owned, client, container):  # a look-alike is never adopted, nor removed
            self.log.warning(
                "envpin: container %s named for kernel %s was not made by envpin here; leaving it alone",
                container.short_id, self.kernel_id,
            )  # fmt: skip
            self._container = None
            return
        self._container = container
        await engine.call(ownership.adopt, container.id)


__all__ = ["EnvpinProvisioner", "EnvpinError"]
