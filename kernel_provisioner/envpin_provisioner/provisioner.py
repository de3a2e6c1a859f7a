"""``EnvpinProvisioner``: a jupyter_client kernel provisioner that runs ipykernel in a container.

Registered as ``envpin-docker`` in the ``jupyter_client.kernel_provisioners``
entry point group.  A kernelspec selects it with::

    "metadata": {"kernel_provisioner": {"provisioner_name": "envpin-docker",
                                        "config": {"image": "python-ml:3.11"}}}

Configuration precedence, highest first (the same for every option):

1. the image pinned for this notebook by ``%use_image`` (image only);
2. the kernelspec's ``metadata.kernel_provisioner.config``;
3. ``c.EnvpinProvisioner.<option>`` in a Jupyter config file
   (``jupyter_server_config.py``, ``jupyter_client_config.py``);
4. ``ENVPIN_<OPTION>`` environment variables of the server;
5. the defaults below.

Every Docker call runs in a worker thread (``asyncio.to_thread``), so the
server's event loop keeps serving other notebooks while an image is pulled or
a container starts.  The provisioner extends ``LocalProvisioner`` only to
reuse its ``pre_launch`` (ports, connection file, CurveZMQ keys); every hook
that touches the kernel process is replaced by its container equivalent.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from docker.types import Mount
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, Unicode, Union, default

from envpin import aliases, control, image_policy, pins
from envpin.hooks import require_digest
from envpin.handoff import EXPECT_ENV as handoff_env

from . import container as kc
from . import engine, image_choice, images, ownership
from .control_server import ControlChannel, ControlRequest
from .errors import ConfigError, EnvpinError
from .options import check_options

_gc_done = False


#: The engine's memory (bytes), asked once per server for shm_size='auto'.
_engine_memory: dict[str, int | None] = {}


def _env(name: str, fallback: Any = None) -> Any:
    return os.environ.get(f"ENVPIN_{name.upper()}", fallback)


class EnvpinProvisioner(LocalProvisioner):
    """Starts ipykernel inside a Docker container of the configured image."""

    # ---- options (every one a documented, configurable traitlet) -------------------

    image = Unicode(
        config=True,
        help="""Image the kernel runs in (NAME[:TAG] or NAME@sha256:DIGEST).
        Default: $ENVPIN_IMAGE, else 'ubuntu-22.04-py3'.""",
    )

    @default("image")
    def _image_default(self) -> str:
        return _env("image", "ubuntu-22.04-py3")

    pull_policy = CaselessStrEnum(
        images.PULL_POLICIES,
        config=True,
        help="""When to pull the image: 'if-missing' (default), 'always' or 'never'.
        Pull time does not count against launch_timeout; progress goes to the server log.""",
    )

    @default("pull_policy")
    def _pull_policy_default(self) -> str:
        return _env("pull_policy", "if-missing")

    network_mode = Unicode(
        config=True,
        help="""Docker network of the kernel container: 'bridge' (default, so the kernel can reach
        clusters), 'none' (no network; the ipc channels still work), 'host', or a network name.""",
    )

    @default("network_mode")
    def _network_mode_default(self) -> str:
        return _env("network_mode", "bridge")

    transport = CaselessStrEnum(
        ("auto", "ipc", "tcp"),
        config=True,
        help="""How the server reaches the kernel. 'ipc': unix sockets in a private 0700 directory
        mounted into the container (no port at all). 'tcp': ports published on 127.0.0.1 only.
        'auto' (default): ipc with a local engine, tcp with a remote one (DOCKER_HOST=tcp://...).""",
    )

    @default("transport")
    def _transport_default(self) -> str:
        return _env("transport", "auto")

    mounts = List(
        Unicode(),
        config=True,
        help="""Extra bind mounts, each 'HOST_PATH:CONTAINER_PATH[:ro]'. The notebook's folder is
        always mounted at its own path and is the working directory.""",
    )

    env_passthrough = List(
        Unicode(),
        default_value=["JPY_SESSION_NAME", "LANG", "LC_*", "TZ"],
        config=True,
        help="""Names (fnmatch patterns) of server environment variables passed into the container.
        Everything else in the server's environment stays out, so the image's own PATH, HOME
        and PYTHONPATH are not overwritten. The kernelspec's 'env' is always passed.""",
    )

    environment = Dict(
        value_trait=Unicode(),
        config=True,
        help="Fixed environment variables set in the kernel container.",
    )

    mem_limit = Union(
        [Integer(), Unicode()],
        allow_none=True,
        default_value=None,
        config=True,
        help="Memory limit of the kernel container, bytes or a string like '4g'. None: no limit.",
    )

    shm_size = Unicode(
        config=True,
        help="""Size of the kernel container's /dev/shm. 'auto' (default): half the engine's memory (half
        of mem_limit when set), as a Linux host has it; Ray's object store and PyTorch's DataLoader
        workers live there, and Docker's own default (64 MB) makes Ray fall back to slow disk with a
        warning. '' keeps Docker's default; otherwise bytes or a string like '2g'. tmpfs takes memory
        only for what is written into it.""",
    )

    @default("shm_size")
    def _shm_size_default(self) -> str:
        return _env("shm_size", "auto")

    cpu_limit = Float(
        0.0, config=True, help="CPU limit of the kernel container in cores (e.g. 1.5). 0: no limit."
    )

    gpus = Unicode(
        "",
        config=True,
        help="""GPUs for the kernel, as `docker run --gpus`: 'all', a count like '2', or 'device=0,1'.
        Empty (default): none. Needs the NVIDIA container toolkit on the engine.""",
    )

    user = Unicode(
        config=True,
        help="""uid:gid the kernel runs as. Default: the uid:gid of the server process, so files
        written to the notebook folder belong to the person running Jupyter.""",
    )

    @default("user")
    def _user_default(self) -> str:
        return _env("user", f"{os.getuid()}:{os.getgid()}")

    python = Unicode(
        config=True,
        help="The Python interpreter inside the image (name on its PATH, or absolute path). Default 'python3'.",
    )

    @default("python")
    def _python_default(self) -> str:
        return _env("python", "python3")

    launch_timeout = Float(
        config=True,
        help="""Seconds from container start until the kernel must answer (image pulls not
        included). A container that exits earlier is reported at once with its last log lines.""",
    )

    @default("launch_timeout")
    def _launch_timeout_default(self) -> float:
        return float(_env("launch_timeout", 60))

    mount_envpin = Bool(
        True,
        config=True,
        help="""Mount envpin's kernel-side package read-only into the container (and put it on
        PYTHONPATH) so `%load_ext envpin` works without installing anything into the image.""",
    )

    allowed_images = List(
        Unicode(),
        config=True,
        help="""fnmatch patterns of the images envpin may run ('registry.example.com/ml/*', 'python:3.11*').
        When set, an image from the kernelspec, a notebook's pin file or %use_image that matches none is
        refused before any pull or container. Default: $ENVPIN_ALLOWED_IMAGES (comma-separated), else
        empty = every image.""",
    )

    @default("allowed_images")
    def _allowed_images_default(self) -> list[str]:
        return image_policy.patterns_from_env()

    extra_container_options = Dict(
        config=True,
        help="""Escape hatch: keyword arguments merged last into docker's containers.create()
        (e.g. {"shm_size": "2g", "cap_add": ["SYS_PTRACE"]}). Use with care: they override envpin's.""",
    )

    # ---- state -------------------------------------------------------------------------

    _container = None
    _client = None
    _channel_dir: str | None = None
    _choice: image_choice.ImageChoice | None = None
    _launch: kc.KernelLaunch | None = None
    _watcher: asyncio.Task | None = None
    _control: ControlChannel | None = None
    _moving = False
    #: Where this kernel's notebook pin lives, from what jupyter_server said at start (never from the kernel).
    _pin_folder: str | None = None
    _notebook: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        check_options(type(self), kwargs, kwargs.get("kernel_spec"))
        super().__init__(**kwargs)

    @property
    def _resolved(self) -> images.ResolvedImage | None:
        return self._choice.resolved if self._choice else None

    # ---- helpers -----------------------------------------------------------------------

    async def _docker(self):
        if self._client is None:
            self._client = await asyncio.to_thread(engine.connect)
        return self._client

    def _extra_mounts(self) -> list[Mount]:
        out = []
        for spec in self.mounts:
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ConfigError(
                    f"Mount '{spec}' is not 'HOST_PATH:CONTAINER_PATH[:ro]'; fix the mounts option of this kernel."
                )
            src = os.path.abspath(os.path.expanduser(parts[0]))
            if not os.path.exists(src):
                raise ConfigError(f"Mount source '{src}' (from mounts option '{spec}') does not exist.")
            out.append(Mount(target=parts[1], source=src, type="bind", read_only=len(parts) == 3 and parts[2] == "ro"))
        return out

    def _container_env(self, env: dict[str, str]) -> dict[str, str]:
        import fnmatch

        out = {
            k: v
            for k, v in env.items()
            if any(fnmatch.fnmatchcase(k, pat) for pat in self.env_passthrough) and k not in kc.NEVER_FORWARDED
        }
        for k in (self.kernel_spec.env or {}) if self.kernel_spec else {}:
            if k in env and k not in kc.NEVER_FORWARDED:
                out[k] = env[k]
        out.update(self.environment)
        return out

    def _transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        return "ipc" if engine.is_local_engine() else "tcp"

    @property
    def _control_dir(self) -> str | None:
        return os.path.join(self._channel_dir, kc.CONTROL_DIR) if self._channel_dir else None

    def _kernel_owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give the kernel's files to: only when root starts a kernel as another user."""
        if os.getuid() != 0:
            return None
        uid, _, gid = self.user.partition(":")
        try:
            uid_i, gid_i = int(uid), int(gid or uid)
        except ValueError:
            raise ConfigError(f"user='{self.user}' is not 'UID:GID' (numbers); fix the user option of this kernel.") from None
        return None if uid_i == 0 else (uid_i, gid_i)

    def _build_launch(self, choice: image_choice.ImageChoice, env: dict[str, str], cwd: str, moved: bool = False):
        """The KernelLaunch for ``choice``: everything but the image comes from the options."""
        km = self.parent
        extra_env = {"ENVPIN_IMAGE_NAME": choice.name}
        kernel_args: list[str] = []
        if self._control_dir and self.transport_supports_control:
            extra_env["ENVPIN_CONTROL_DIR"] = self._control_dir
        if choice.pinned or moved:
            extra_env["ENVPIN_PINNED"] = "1"
            if self.mount_envpin:
                kernel_args = ["--ext", "envpin"]  # the pinned session is active from the start
        if moved:
            extra_env[handoff_env] = "1"
        extra_env.update(control.session_option_env(choice.options))
        if choice.latest_id:
            extra_env["ENVPIN_IMAGE_LATEST_ID"] = choice.latest_id
        return kc.KernelLaunch(
            image=choice.resolved,
            kernel_id=self.kernel_id,
            connection_info=dict(self.connection_info),
            connection_file=km.connection_file if km else "",
            python=self.python,
            cwd=cwd,
            env=self._container_env(env),
            user=self.user,
            network_mode=self.network_mode,
            extra_mounts=self._extra_mounts(),
            mem_limit=self.mem_limit,
            shm_size=kc.shm_size_for(self.shm_size, self.mem_limit, _engine_memory.get("total")),
            cpu_limit=self.cpu_limit or None,
            gpus=self.gpus,
            extra_options=dict(self.extra_container_options),
            mount_envpin=self.mount_envpin,
            extra_env=extra_env,
            kernel_args=kernel_args,
            private_channels=True,
        )

    @property
    def transport_supports_control(self) -> bool:
        """The control folder lives in the channel directory, which only ipc mounts into the container."""
        return bool(self.parent is not None and getattr(self.parent, "transport", "") == "ipc")

    def _remove_other_containers(self, keep) -> None:
        """Remove this kernel's containers other than ``keep``.

        They exist when the engine went away before it could remove them (a
        restart during an engine restart), or when two restarts overlapped.
        """
        try:
            for other in self._client.containers.list(all=True, filters={"label": f"{ownership.KERNEL_ID}={self.kernel_id}"}):
                if other.id != keep.id:
                    kc.remove(other)
                    self.log.info("envpin: removed stale container %s of kernel %s", other.short_id, self.kernel_id)
        except Exception as exc:
            self.log.debug("envpin: could not sweep stale containers: %s", exc)

    async def _start_container(self, launch: kc.KernelLaunch, replacing: dict[str, tuple[int, int]] | None = None):
        client = await self._docker()
        container = await asyncio.to_thread(kc.start, client, launch, self.log)
        try:
            await asyncio.to_thread(kc.wait_ready, container, launch, self.launch_timeout, self.log, replacing)
        except BaseException:
            await asyncio.to_thread(kc.remove, container)
            raise
        return container

    # ---- jupyter_client hooks ----------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._container is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Choose and resolve the image, prepare the private channel directory, write the connection file.

        Runs before every start, restarts included: the notebook's pin is read
        again (a move recorded one) and the image re-resolved, so a moved tag is
        noticed.  Pulls happen here, before the launch timeout starts counting.
        """
        global _gc_done
        km = self.parent
        client = await self._docker()
        if not _gc_done:
            _gc_done = True
            removed = await asyncio.to_thread(ownership.collect_garbage, client)
            if removed:
                self.log.info("envpin: removed %d orphaned container(s): %s", len(removed), ", ".join(removed))

        if self.shm_size == "auto" and "total" not in _engine_memory:
            try:
                _engine_memory["total"] = int((await asyncio.to_thread(client.info)).get("MemTotal") or 0) or None
            except Exception:  # an engine that will not say: Docker's default /dev/shm
                _engine_memory["total"] = None
        env = kwargs.get("env") or {}
        # The notebook and its folder come from jupyter_server's start request, and from nowhere else.
        self._notebook = env.get("JPY_SESSION_NAME") or None
        self._pin_folder = image_choice.notebook_folder(self._notebook, kwargs.get("cwd"))
        self._choice = await asyncio.to_thread(
            image_choice.choose,
            client,
            self.image,
            self.pull_policy,
            self._notebook,
            self._pin_folder,
            self.log,
            self.allowed_images,
        )
        transport = self._transport()
        if transport == "tcp" and self.network_mode == "none":
            raise ConfigError(
                f"transport='tcp' cannot work with network_mode='none' (image '{self._choice.name}'): "
                "use transport='ipc' with a local engine, or another network mode."
            )
        if km is not None:
            if self._channel_dir is None:
                self._channel_dir = kc.make_channel_dir(self._kernel_owner())
                self._control = ControlChannel(self._control_dir, self.log, self._kernel_owner())
                km.connection_file = os.path.join(self._channel_dir, kc.CONNECTION_FILE)
                km.transport = transport
                if transport == "ipc":
                    km.ip = os.path.join(self._channel_dir, kc.SOCKET_DIR, "k")
                else:
                    km.ip = "127.0.0.1"
        if transport == "tcp" and "transport_encryption" not in kwargs:
            # Ports (even on loopback) are reachable by every local user: encrypt when the image can.
            if await asyncio.to_thread(images.supports_curve, client, self._choice.resolved, self.python):
                kwargs["transport_encryption"] = "required"
        kwargs = await super().pre_launch(**kwargs)
        owner = self._kernel_owner()
        if owner and self._channel_dir:
            # The kernel's user must read the connection file. The channel directory itself is
            # never mounted, so the file cannot have been replaced: chown it by descriptor anyway.
            kc.give_connection_file(self._channel_dir, owner)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the container and return once the kernel answers its heartbeat."""
        cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        launch = self._build_launch(self._choice, kwargs.get("env") or {}, cwd)
        restarting = self._launch is not None
        if restarting:  # the old container is gone: drop whatever the kernel left at its socket names
            await asyncio.to_thread(kc.clear_sockets, launch)
        container = await self._start_container(launch)
        # Two restarts can overlap (the server's auto-restarter and a user's): one kernel, one container.
        previous, self._container, self._launch = self._container, container, launch
        if previous is not None and previous.id != container.id:
            self.log.warning("envpin: kernel %s was started twice at once; removing %s", self.kernel_id, previous.short_id)
        if restarting:  # a first start has no earlier containers to sweep: spare it the Docker call
            await asyncio.to_thread(self._remove_other_containers, container)
        self.cwd = cwd
        if self.transport_supports_control and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self._watch_control(kwargs.get("env") or {}))
        return self.connection_info

    async def poll(self) -> int | None:
        """``None`` while the container runs (or is being replaced by a move), else its exit code."""
        if self._moving:
            return None
        if self._container is None:
            return 0
        try:
            _, code = await asyncio.to_thread(kc.state, self._container)
            if code is not None and self._launch is not None and not self._moving:
                # Dead: until a restart binds them anew, reconnects must find nothing at the socket names.
                await asyncio.to_thread(kc.clear_sockets, self._launch)
        except Exception as exc:  # engine unreachable or restarting: do not declare the kernel dead on a guess
            self.log.warning(
                "envpin: cannot reach the Docker engine to check kernel %s (%s: %s); "
                "it counts as alive until the engine answers again",
                self.kernel_id, type(exc).__name__, exc,
            )  # fmt: skip
            return None
        return None if self._moving else code

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
            await asyncio.to_thread(self._container.kill, signal=int(signum))
        except Exception as exc:  # container already stopped: nothing to signal
            self.log.debug("envpin: signal %s to %s failed: %s", signum, self._container.short_id, exc)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    # ---- %use_image: pin requests and moves between images ------------------------------

    async def _watch_control(self, env: dict[str, str]) -> None:
        """Answer the kernel's ``%use_image`` requests (see ``control_server``) until cleanup.

        Everything the kernel writes is hostile input: ``ControlChannel`` reads
        and validates it, and a request that fails for any reason gets an error
        answer while the watcher goes on serving.
        """
        while True:
            channel = self._control
            await asyncio.sleep(channel.delay if channel else 0.1)
            channel = self._control
            if channel is None:
                return
            request = await asyncio.to_thread(channel.take_request)
            if request is None:
                continue
            try:
                await self._answer(channel, request, env)
            except EnvpinError as exc:
                channel.respond(request.id, status="error", message=str(exc))
            except Exception as exc:  # never let one request kill the watcher: the kernel would hang on the next
                self.log.exception("envpin: %%use_image request failed")
                channel.respond(request.id, status="error", message=f"envpin failed: {type(exc).__name__}: {exc}")

    async def _answer(self, channel: ControlChannel, request: ControlRequest, env: dict[str, str]) -> None:
        name = request.image
        channel.respond(request.id, status="working", message=f"envpin: resolving {name} ...")
        image_policy.check(aliases.expand(name), self.allowed_images, "%use_image in this kernel", name)
        client = await self._docker()
        policy = "always" if request.pull else self.pull_policy

        def progress(message: str, fraction: float | None = None) -> None:  # shown under the %use_image cell
            channel.respond(request.id, status="working", message=message, fraction=fraction)

        resolved = await asyncio.to_thread(image_choice.resolve_name, client, name, policy, self.log, progress)
        current = self._choice.resolved
        notes = []
        if self._choice.latest_id and resolved.immutable == self._choice.latest_id:
            notes = list(self._choice.notes)
        answer = {"name": name, "reference": resolved.reference, "image_id": resolved.immutable, "notes": notes}
        options = request.options.as_dict()
        if options.get("by_digest"):
            require_digest(name, resolved.immutable)  # before anything moves
        record = {"image": name, "reference": resolved.reference, "image_id": resolved.immutable}
        if options:
            record["options"] = options
        pin_folder, notebook, owner = self._pin_folder or self.cwd, self._notebook, self._kernel_owner()
        if resolved.id == current.id:
            if request.python:
                record["python"] = request.python
            await asyncio.to_thread(pins.record, pin_folder, notebook, record, owner)
            self._choice = image_choice.ImageChoice(name, current, pinned=True, options=options)
            channel.respond(request.id, status="same", **answer)
            return
        if not request.allow_restart:
            channel.respond(request.id, status="refused", **answer)
            return
        await asyncio.to_thread(pins.read, pin_folder)  # a damaged pin file stops the move before it starts

        def record_pin() -> None:
            pins.record(pin_folder, notebook, record, owner)

        choice = image_choice.ImageChoice(name, resolved, pinned=True, options=options)
        await self._move(channel, request, choice, env, answer, record_pin)

    async def _move(
        self, channel: ControlChannel, request: ControlRequest, choice, env: dict[str, str], answer: dict, record_pin
    ) -> None:
        """Start the kernel in the new image on the same channels, then let the old one hand over and go.

        The new kernel binds the same unix socket paths while the old one still
        runs (clients stay connected to the old one until it exits), so a new
        image that cannot run a kernel is reported while the old kernel is still
        there to report it.
        """
        launch = self._build_launch(choice, env, self.cwd, moved=True)
        old = self._container
        self._moving = True
        try:
            new = await self._start_container(launch, replacing=kc.socket_inodes(launch))
            try:
                await asyncio.to_thread(record_pin)  # before the hand-over: a restart must find it
            except BaseException:
                await asyncio.to_thread(kc.remove, new)
                raise
            channel.respond(request.id, status="moving", **answer)
            await asyncio.to_thread(_wait_exit, old, 15.0)
            await asyncio.to_thread(kc.remove, old)
            self._container, self._launch, self._choice = new, launch, choice
            self.log.info("envpin: kernel %s moved into %s (%s)", self.kernel_id, choice.name, choice.resolved.immutable)
        finally:
            self._moving = False

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the container; keep the channel directory only across a restart."""
        if self._watcher is not None and not restart:
            self._watcher.cancel()
            self._watcher = None
        if self._container is not None:
            container, self._container = self._container, None
            if self._launch is not None:
                # Before the container goes (and the clients reconnect): no name the kernel may have
                # replaced by a link stays at its socket paths.
                await asyncio.to_thread(kc.clear_sockets, self._launch)
            try:
                await asyncio.to_thread(kc.remove, container)
                self.log.info("envpin: removed kernel container %s", container.short_id)
            except Exception as exc:  # the engine is unreachable: do not break the shutdown or restart
                self.log.warning(
                    "envpin: could not remove kernel container %s (%s); it goes at this kernel's next "
                    "start, or with envpin gc, once the engine answers", container.short_id, exc,
                )  # fmt: skip
        if not restart and self._channel_dir:
            if self._control is not None:
                self._control.close()
                self._control = None
            kc.remove_channel_dir(self._channel_dir)
            self._channel_dir = None
        await super().cleanup(restart=restart)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel was asked to exit: take its socket names away now, before it closes them.

        Its clients reconnect by path as soon as the kernel's sockets close; a
        name the kernel replaced by a link would lead them elsewhere (see
        ``container.clear_sockets``).  Established connections are not affected.
        """
        await super().shutdown_requested(restart=restart)
        if self._launch is not None:
            await asyncio.to_thread(kc.clear_sockets, self._launch)

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
        if self._channel_dir and self._control is None and os.path.isdir(self._control_dir or ""):
            self._control = ControlChannel(self._control_dir, self.log, self._kernel_owner())
        cid = provisioner_info.get("container_id")
        if not cid:
            return
        client = await self._docker()
        import docker.errors

        try:
            self._container = await asyncio.to_thread(client.containers.get, cid)
        except docker.errors.NotFound:
            self.log.warning("envpin: container %s of kernel %s is gone", cid[:12], self.kernel_id)
            self._container = None
            return
        await asyncio.to_thread(ownership.adopt, self._container.id)


def _wait_exit(container, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``container`` to stop by itself, then kill it."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kc.state(container)[1] is not None:
            return
        time.sleep(0.05)
    try:
        container.kill()
    except Exception:
        pass


__all__ = ["EnvpinProvisioner", "EnvpinError"]
