"""The provisioner's options: every one a documented, validated traitlet, and the check of a kernelspec's.

Precedence, highest first (the same for every option):

1. the image pinned for this notebook by ``%use_image`` (image only);
2. the kernelspec's ``metadata.kernel_provisioner.config``;
3. ``c.EnvpinProvisioner.<option>`` in a Jupyter config file;
4. ``ENVPIN_<OPTION>`` environment variables of the server;
5. the defaults below.

:func:`check_options` refuses unknown or ill-typed kernelspec keys with one
readable message.  Without it, jupyter_client passes a kernelspec's unknown
keys on and traitlets drops them with a deprecation warning nobody sees, and
a wrong type surfaces as a TraitError from deep inside traitlets.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    HasTraits,
    Integer,
    List,
    TraitError,
    TraitType,
    Unicode,
    default,
)
from traitlets.config import Configurable

from envpin import names
from envpin.images import allowlist
from envpin_provisioner.errors import ConfigError
from envpin_provisioner.images import pulling


def _env(name: str, fallback: Any = None) -> Any:
    """The server's ``ENVPIN_<NAME>`` variable: the lowest configured level, above the defaults."""
    return os.environ.get(f"ENVPIN_{name.upper()}", fallback)


class ByteSize(TraitType):
    """A size in bytes: a whole number, or a string like '20g' or '500m' (docker's units)."""

    info_text = "a size: a whole number of bytes, or a string like '20g' or '500m'"

    def validate(self, obj: Any, value: Any) -> int | str:
        if not isinstance(value, (int, str)):
            self.error(obj, value)
        try:
            byte_count(value, self.name or "size")
        except TraitError:
            self.error(obj, value)
        return value


class EngineAddress(Unicode):
    """An engine address: '', unix:///path, ssh://[user@]host[:port][/socket] or tcp://host:port."""

    info_text = "'' or an engine address: unix:///path, ssh://[USER@]HOST[:PORT] or tcp://HOST:PORT"

    def validate(self, obj: Any, value: Any) -> str:
        value = super().validate(obj, value)
        if not value:
            return value
        if value.startswith("ssh://"):
            from envpin.errors import EnvpinError
            from envpin.host import ssh_tunnel

            try:
                ssh_tunnel.parse(value)
            except EnvpinError:
                self.error(obj, value)
            return value
        if value.startswith("unix:///") or (value.startswith("tcp://") and len(value) > len("tcp://")):
            return value
        self.error(obj, value)
        return value


class ShmSize(Unicode):
    """``shm_size``: 'auto', '' (Docker's default) or a size."""

    info_text = "'auto', '' (Docker's default) or a size like '2g'"

    def validate(self, obj: Any, value: Any) -> str:
        text = super().validate(obj, value)
        if text not in ("auto", ""):
            try:
                byte_count(text, "shm_size")
            except TraitError:
                self.error(obj, value)
        return text


class Checked(Unicode):
    """Text that must match ``pattern`` (the option's syntax, checked where it is written, not at a start)."""

    def __init__(self, pattern: str, info: str, **kwargs: Any) -> None:
        self.pattern = re.compile(pattern)
        self.info_text = info
        super().__init__(**kwargs)

    def validate(self, obj: Any, value: Any) -> str:
        text = super().validate(obj, value)
        if not self.pattern.fullmatch(text):
            self.error(obj, value)
        return text


#: ``docker run --network``: bridge, none, host, container:NAME or a network's name.
NETWORK_MODE = r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9][A-Za-z0-9_.-]*)?"
#: ``docker run --gpus``: '' (none), all, a count, device=ID[,ID...].
GPUS = r"|all|[0-9]+|device=[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*"
#: ``mounts``: HOST_PATH:CONTAINER_PATH[:ro|:rw], the container path absolute.
MOUNT = r"[^:]+:/[^:]*(:(ro|rw))?"


class ProvisionerOptions(Configurable):
    """The options of ``EnvpinProvisioner`` (configure them as ``c.EnvpinProvisioner.<option>``)."""

    image = Unicode(
        config=True,
        help="""Image the kernel runs in (NAME[:TAG] or NAME@sha256:DIGEST).
        Default: $ENVPIN_IMAGE, else 'ubuntu-22.04-py3'.""",
    )

    @default("image")
    def _image_default(self) -> str:
        return _env("image", "ubuntu-22.04-py3")

    pull_policy = CaselessStrEnum(
        pulling.PULL_POLICIES,
        config=True,
        help="""When to pull the image: 'if-missing' (default), 'always' or 'never'.
        Pull time does not count against launch_timeout; progress goes to the server log.""",
    )

    @default("pull_policy")
    def _pull_policy_default(self) -> str:
        return _env("pull_policy", "if-missing")

    network_mode = Checked(
        NETWORK_MODE,
        "'bridge', 'none', 'host', 'container:NAME' or a network's name",
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

    engine = EngineAddress(
        config=True,
        help="""The Docker engine this kernel runs on: '' (default: DOCKER_HOST, else the current Docker
        context, else the local socket), 'unix:///path', 'ssh://[USER@]HOST[:PORT]' (one OpenSSH connection
        per host, ~/.ssh/config applies; a Podman socket path may follow), or 'tcp://HOST:2376' (TLS with
        DOCKER_CERT_PATH). On another machine nothing of this one is mounted: see docs/guide/remote.md.""",
    )

    @default("engine")
    def _engine_default(self) -> str:
        return _env("engine", "")

    remote_root = Unicode(
        config=True,
        help="""With an engine on another machine: the folder there that stands for the server's root folder
        (local_root). The kernel's working folder is the notebook folder's place below it, created there
        if missing. '' (default): a scratch folder per kernel on that machine, removed at shutdown.""",
    )

    @default("remote_root")
    def _remote_root_default(self) -> str:
        return _env("remote_root", "")

    local_root = Unicode(
        config=True,
        help="""The server folder that remote_root stands for (default: the Jupyter server's working
        folder). A notebook outside it gets a scratch folder on the remote machine.""",
    )

    @default("local_root")
    def _local_root_default(self) -> str:
        return _env("local_root", "")

    mounts = List(
        Checked(MOUNT, "'HOST_PATH:CONTAINER_PATH' or 'HOST_PATH:CONTAINER_PATH:ro' (the container path absolute)"),
        config=True,
        help="""Extra bind mounts, each 'HOST_PATH:CONTAINER_PATH[:ro]'. The notebook's folder is
        always mounted at its own path and is the working directory.""",
    )

    env_passthrough = List(
        Unicode(),
        default_value=[names.SESSION_NAME, "LANG", "LC_*", "TZ", names.ENVELOPE],
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

    mem_limit = ByteSize(
        allow_none=True,
        default_value=None,
        config=True,
        help="Memory limit of the kernel container, bytes or a string like '4g'. None: no limit.",
    )

    shm_size = ShmSize(
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
        0.0, min=0.0, config=True, help="CPU limit of the kernel container in cores (e.g. 1.5). 0: no limit."
    )

    gpus = Checked(
        GPUS,
        "'all', a count like '2', 'device=0,1', or '' for none",
        default_value="",
        config=True,
        help="""GPUs for the kernel, as `docker run --gpus`: 'all', a count like '2', or 'device=0,1'.
        Empty (default): none. Needs the NVIDIA container toolkit on the engine.""",
    )

    user = Unicode(
        config=True,
        help="""uid:gid the kernel runs as. Default: the uid:gid of the server process, so files
        written to the notebook folder belong to the person running Jupyter.""",
    ).tag(doc_default="the server's uid:gid")  # the reference is built on another machine than it describes

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
        min=0.001,
        config=True,
        help="""Seconds from container start until the kernel must answer (image pulls not
        included). A container that exits earlier is reported at once with its last log lines.
        Default: $ENVPIN_LAUNCH_TIMEOUT, else 60.""",
    )

    @default("launch_timeout")
    def _launch_timeout_default(self) -> float:
        value = _env("launch_timeout", "60")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ConfigError(f"ENVPIN_LAUNCH_TIMEOUT is '{value}': it must be a number of seconds above 0, like 60.")
        return seconds

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
        return allowlist.patterns_from_env()

    max_pulls_per_kernel = Integer(
        min=0,
        config=True,
        help="""How many image pulls one kernel may cause (%use_image --pull, or %use_image of an image the
        engine lacks), over its whole life, restarts and moves included; 0: none. A pull whose request does
        not end with the kernel in that image (refused, failed) is removed again, but still counts.
        Default: $ENVPIN_MAX_PULLS_PER_KERNEL, else 10.""",
    )

    @default("max_pulls_per_kernel")
    def _max_pulls_per_kernel_default(self) -> int:
        return _whole_number("max_pulls_per_kernel", 10)

    max_pull_bytes = ByteSize(
        config=True,
        help="""How many bytes the pulls one kernel causes may download (the compressed layer sizes the
        registry announces; on disk an image takes about two to three times that), bytes or a string like
        '20g'. A pull that would pass it is cancelled. Default: $ENVPIN_MAX_PULL_BYTES, else '20g'.""",
    )

    @default("max_pull_bytes")
    def _max_pull_bytes_default(self) -> int | str:
        return _env("max_pull_bytes", "20g")

    pull_interval = Float(
        min=0.0,
        config=True,
        help="""Seconds between two pulls one kernel causes; a request sooner is refused, saying how long to
        wait. Default: $ENVPIN_PULL_INTERVAL, else 10.""",
    )

    @default("pull_interval")
    def _pull_interval_default(self) -> float:
        value = _env("pull_interval", "10")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0:  # also NaN
            raise ConfigError(f"ENVPIN_PULL_INTERVAL is '{value}': it must be a number of seconds, 0 or more.")
        return number

    pool_size = Integer(
        min=0,
        config=True,
        help="""Warm kernels: how many containers to keep started and waiting, ipykernel imported, per
        (image id, user, configuration), so that a start takes one instead of starting a container; each
        kernel also keeps a standby for its restarts and %use_image moves. Each waiting container holds
        about 60 MB of memory. The shared pool is kept per notebook folder: a warm container mounts exactly
        the folder it was made for, so the first start in a folder is cold and fills the pool for the next.
        On another machine's engine (ssh://, TCP+TLS) the pool is made on that engine; standbys there are not.
        Default: $ENVPIN_POOL_SIZE, else 0: no pool, nothing runs that nobody asked for.""",
    )

    @default("pool_size")
    def _pool_size_default(self) -> int:
        value = _env("pool_size", "0")
        if not str(value).isdigit():
            raise ConfigError(f"ENVPIN_POOL_SIZE is '{value}': it must be a whole number (0 turns the pool off).")
        return int(value)

    pool_root = Unicode(
        config=True,
        help="""Deprecated and ignored: a shared-pool container used to mount this whole folder, which let its
        kernel reach every notebook folder below it. Warm containers now mount exactly the notebook folder
        they were made for (see pool_size); setting this only logs a warning.""",
    )

    @default("pool_root")
    def _pool_root_default(self) -> str:
        return _env("pool_root", "")

    extra_container_options = Dict(
        config=True,
        help="""Escape hatch: keyword arguments merged last into docker's containers.create()
        (e.g. {"shm_size": "2g", "cap_add": ["SYS_PTRACE"]}). Use with care: they override envpin's.""",
    )


def _whole_number(name: str, fallback: int) -> int:
    value = _env(name, str(fallback))
    if not str(value).isdigit():
        raise ConfigError(f"ENVPIN_{name.upper()} is '{value}': it must be a whole number, 0 or more.")
    return int(value)


def byte_count(value: int | str, option: str) -> int:
    """``value`` (bytes, or a string like '20g') in bytes; raise TraitError naming ``option``."""
    from docker.errors import DockerException

    from envpin.internals import DOCKER

    if isinstance(value, bool):
        raise TraitError(f"{option}={value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise TraitError(f"{option}={value!r} is negative")
        return value
    try:
        number = DOCKER.get("parse_bytes")(value.strip())
    except (DockerException, ValueError):  # text docker's parser does not know
        number = None
    if not isinstance(number, int) or number < 0:
        raise TraitError(f"{option}={value!r} is not a size: use bytes or a string like '20g' or '500m'")
    return number


def check_options(
    cls: type[HasTraits],
    kwargs: dict[str, Any],
    kernel_spec: Any,
    where: str = "kernelspec",
    source: str = "metadata.kernel_provisioner.config",
) -> None:
    """Raise ConfigError naming every unknown or ill-typed key of ``kwargs`` (a kernelspec's config).

    ``where`` the settings are being written or read, which decides what the
    fix says: ``"kernelspec"`` (a kernel start: edit its kernel.json),
    ``"install"`` (``envpin kernelspec install --config``: fix the option on
    that command line), ``"config"`` (a Jupyter config file) or ``"doctor"``.
    ``source``: the part of the kernelspec the options come from (``envpin
    launch`` gets them from its ``argv``).
    """
    base = {"kernel_id", "kernel_spec", "parent", "config", "log", "connection_info"}
    traits = cls.class_traits(config=True)
    problems, fixes = [], []
    unmatched = False
    renames: dict[str, str] = {}  # for the reinstall command: misspelt -> right name, unknown, wrong value
    drop: set[str] = set()
    choose: set[str] = set()
    for key, value in kwargs.items():
        if key in base:
            continue
        if key not in traits:
            close = difflib.get_close_matches(key, traits, n=1)
            if close:
                problems.append(f"unknown option '{key}' (did you mean '{close[0]}'?)")
                renames[key] = close[0]
                fixes.append(f"rename '{key}' to '{close[0]}'" if where != "install" else f"--config {close[0]}=...")
            else:
                problems.append(f"unknown option '{key}'")
                fixes.append(f"remove '{key}'" if where != "install" else f"drop --config {key}=...")
                drop.add(key)
                unmatched = True
            continue
        try:
            traits[key].validate(_Dummy(), value)  # type: ignore[attr-defined]  # every config trait has one
        except TraitError:
            expected = traits[key].info()
            problems.append(f"option '{key}' has the wrong type or value {value!r} ({expected} expected)")
            choose.add(key)
            fixes.append(f"give '{key}' {expected}" if where != "install" else f"--config {key}=<{expected}>")
    if not problems:
        return
    known = f" Known options: {', '.join(sorted(traits))}." if unmatched else ""
    if where == "config":
        raise ConfigError(
            f"The Jupyter config files set bad envpin options (c.EnvpinProvisioner): {'; '.join(problems)}.{known}",
            fix=f"Fix them in the config file that sets them (jupyter --paths lists the folders): {'; '.join(fixes)}.",
        )
    if where == "install":
        raise ConfigError(
            f"envpin kernelspec install was given bad options: {'; '.join(problems)}.{known}",
            fix=f"Fix the command: {'; '.join(fixes)}. Nothing was installed.",
        )
    name = getattr(kernel_spec, "display_name", None) or "this kernel"
    image = kwargs.get("image") or "the default image"
    folder = getattr(kernel_spec, "resource_dir", None)
    file = f"{folder}/kernel.json" if folder else "its kernel.json (envpin kernelspec list shows where)"
    from envpin_provisioner.cli import reinstall  # the CLI's module, imported only for this message

    settings = {k: v for k, v in kwargs.items() if k not in base}
    again = reinstall.command(kernel_spec, settings, renames, drop, choose)
    # The command ends the message, with no full stop that a copy would take along into the last value.
    again = f", or reinstall it: {again}" if again else " (or reinstall it with envpin kernelspec install)."
    raise ConfigError(
        f"The kernelspec '{name}' (image {image}) has bad envpin settings in {source}: {'; '.join(problems)}.{known}",
        fix=f"Fix: {'; '.join(fixes)} in {file}{again}",
    )


class _Dummy(HasTraits):
    """Stand-in owner for trait validators, which look at the object they validate for."""
