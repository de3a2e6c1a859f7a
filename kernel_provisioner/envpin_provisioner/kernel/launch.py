"""What one kernel's container is made of: :class:`KernelLaunch`, built from the options, and its create arguments.

Pure: no engine calls, no jupyter_client.  The provisioner and ``envpin
launch`` (the fallback for clients that ignore provisioners) both build their
launch with :func:`build` from the same options (``ProvisionerOptions``), so
the container a kernelspec's ``argv`` starts is the one the provisioner would
have started: same image choice (the notebook's pin included), same
environment passed through, same limits and mounts.  :func:`container_options`
turns a launch into the keyword arguments of ``containers.create``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docker.types import DeviceRequest, Mount

from envpin import names, safe_files
from envpin.entry import boot
from envpin.host.container_spec import base_options
from envpin.host.images import ResolvedImage
from envpin.internals import DOCKER
from envpin.session.options import SessionOptions
from envpin_provisioner.errors import ConfigError
from envpin_provisioner.kernel import channels

if TYPE_CHECKING:
    from envpin_provisioner.images.selection import ImageChoice
    from envpin_provisioner.options import ProvisionerOptions

#: Names of warm containers while they wait; a kernel that takes one renames it ``envpin-<kernel id>-...``.
WARM_NAME_PREFIX = "envpin-warm-"
#: Never forwarded: ipykernel's parent poller would watch a pid that means nothing in the container.
NEVER_FORWARDED = frozenset({"JPY_PARENT_PID", "PYTHONEXECUTABLE", "PYTHONPATH", "HOME", "PATH"})


@dataclass
class KernelLaunch:
    """Everything needed to start one kernel container; built by :func:`build`."""

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
    #: ipc only: the channel directory is one of ``channels.make_channel_dir``'s (mount its parts, not all of it).
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


# ---- from the options --------------------------------------------------------------------


def container_env(
    env: Mapping[str, str],
    passthrough: Iterable[str],
    kernelspec_env: Iterable[str] = (),
    environment: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of ``env`` (the server's, or the launcher's) that go into the container.

    Those matching a ``passthrough`` pattern (``env_passthrough``) and those
    the kernelspec names (``kernelspec_env``), never :data:`NEVER_FORWARDED`;
    then the fixed ``environment`` option on top.
    """
    patterns = list(passthrough)
    out = {
        k: v
        for k, v in env.items()
        if any(fnmatch.fnmatchcase(k, pat) for pat in patterns) and k not in NEVER_FORWARDED
    }
    for k in kernelspec_env:
        if k in env and k not in NEVER_FORWARDED:
            out[k] = env[k]
    out.update(environment or {})
    return out


def extra_mounts(specs: Iterable[str], remote: bool = False) -> list[Mount]:
    """The ``mounts`` option ('HOST_PATH:CONTAINER_PATH[:ro]' each) as bind mounts; ConfigError for a bad one.

    ``remote``: the engine is another machine's, so the sources are its paths, taken as written and checked
    there (``remote.ssh_kernel.prepare``), not here.
    """
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ConfigError(
                f"Mount '{spec}' is not 'HOST_PATH:CONTAINER_PATH[:ro]'; fix the mounts option of this kernel."
            )
        src = parts[0] if remote else os.path.abspath(os.path.expanduser(parts[0]))
        if not remote and not os.path.exists(src):
            raise ConfigError(f"Mount source '{src}' (from mounts option '{spec}') does not exist.")
        out.append(Mount(target=parts[1], source=src, type="bind", read_only=len(parts) == 3 and parts[2] == "ro"))
    return out


def session_env(
    choice: ImageChoice, *, moved: bool, control_dir: str | None, mount_envpin: bool
) -> tuple[dict[str, str], list[str]]:
    """What envpin tells the kernel about its session: (variables, extra ipykernel arguments).

    A pinned notebook (or a kernel moved by ``%use_image``) starts with the
    extension loaded, pinned to its image, with the pin's session options.
    """
    extra_env = {names.IMAGE_NAME: choice.name}
    kernel_args: list[str] = []
    if control_dir:
        extra_env[names.CONTROL_DIR] = control_dir
    if choice.pinned or moved:
        extra_env[names.PINNED] = "1"
        if mount_envpin:
            kernel_args = ["--ext", "envpin"]  # the pinned session is active from the start
    # Which pin decided the image, or which did not apply: said in the kernel's first output (a move says its own).
    said = [] if moved else choice.first_output()
    if said:
        extra_env[names.PIN_NOTES] = json.dumps(said)
        if mount_envpin:
            kernel_args = ["--ext", "envpin"]
    if moved:
        extra_env[names.HANDOFF_EXPECTED] = "1"
    extra_env.update(SessionOptions.parse(choice.options, strict_schema=False).as_env())
    if choice.latest_id:
        extra_env[names.IMAGE_LATEST_ID] = choice.latest_id
    return extra_env, kernel_args


def check_transport(transport: str, network_mode: str, image: str) -> None:
    """tcp needs a network to publish the ports on: refuse the one combination that cannot work."""
    if transport == "tcp" and network_mode == "none":
        raise ConfigError(
            f"transport='tcp' cannot work with network_mode='none' (image '{image}'): "
            "use transport='ipc' with a local engine, or another network mode."
        )


def build(
    options: ProvisionerOptions,
    choice: ImageChoice,
    *,
    kernel_id: str,
    connection_info: dict[str, Any],
    connection_file: str,
    folder: safe_files.PinnedDir,
    env: Mapping[str, str],
    kernelspec_env: Iterable[str] = (),
    engine_memory: int | None = None,
    control_dir: str | None = None,
    moved: bool = False,
    private_channels: bool = False,
    channel_root: str | None = None,
    remote: bool = False,
) -> KernelLaunch:
    """The launch of a kernel in ``choice``: everything but the image and the channels comes from ``options``.

    ``env``: the environment the start was asked with (filtered through
    ``env_passthrough``); ``folder``: the notebook folder, pinned;
    ``engine_memory``: the engine's memory, for ``shm_size='auto'``; ``remote``: the engine is another
    machine's (the ``mounts`` sources are that machine's paths).
    """
    extra_env, kernel_args = session_env(
        choice, moved=moved, control_dir=control_dir, mount_envpin=options.mount_envpin
    )
    return KernelLaunch(
        image=choice.resolved,
        kernel_id=kernel_id,
        connection_info=connection_info,
        connection_file=connection_file,
        python=options.python,
        cwd=folder.path,
        folder=folder,
        env=container_env(env, options.env_passthrough, kernelspec_env, options.environment),
        user=options.user,
        network_mode=options.network_mode,
        extra_mounts=extra_mounts(options.mounts, remote),
        mem_limit=options.mem_limit,
        shm_size=shm_size_for(options.shm_size, options.mem_limit, engine_memory),
        cpu_limit=options.cpu_limit or None,
        gpus=options.gpus,
        extra_options=dict(options.extra_container_options),
        mount_envpin=options.mount_envpin,
        extra_env=extra_env,
        kernel_args=kernel_args,
        private_channels=private_channels,
        channel_root=channel_root,
    )


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
        limit = DOCKER.get("parse_bytes")(mem_limit) if isinstance(mem_limit, str) else int(mem_limit)
        return max(64 * 2**20, limit // 2)
    return max(64 * 2**20, engine_memory // 2) if engine_memory else None


# ---- as containers.create arguments ----------------------------------------------------------


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
        mounts[:0] = channels.channel_mounts(launch)
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
        ports = [launch.connection_info[f"{ch}_port"] for ch in channels.CHANNELS]
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
