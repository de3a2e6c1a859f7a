"""Every private or undocumented entry point of another library that envpin uses: one registry, checked.

envpin reaches into libraries where they offer no public way to do what it
needs: the Docker SDK (a container in Podman's ``keep-id`` user namespace, a
pull that can be cancelled, the engine's socket path), ipykernel (the
successor kernel answering a moved cell), IPython (an envpin error shown as
one paragraph), ytsaurus-client, flytekit and Ray (stamping every job they
submit), distributed and dask-gateway (the check at ``Client`` connect, the
image of a gateway's cluster, ``envpin.DaskCluster``).  Any release of those may move such a thing.  This module is the
only place that names them:

* each library is a :class:`Library` section below: the versions envpin
  supports (``supported``, lowest and newest; ``pyproject.toml`` bounds the
  dependency to the same range) and an :class:`EntryPoint` per internal,
  saying where it is, what envpin uses it for and what envpin relies on
  (parameter names, a value);
* code reaches an internal only through its section: ``DOCKER.get(key)`` for
  an object a module defines, ``DOCKER.attr(obj, key)`` for an attribute of an
  object the library made, ``RAY.site(key)`` for a function envpin wraps,
  ``FLYTEKIT.position(key, parameter)`` for a parameter passed by position.
  So the private name is written here and nowhere else, and one that is gone
  is a one-paragraph :class:`InternalMissing` naming the installed version and
  the supported range, not an ``AttributeError`` from deep inside a call;
* ``tests/test_library_internals.py`` resolves every entry (``missing()``)
  against the lowest and the newest supported version of each library (the
  lowest fetched once by ``tools/library_versions.py``, which
  ``scripts/_setup.sh`` runs), and a unit test fails when envpin's code names
  a registered private attribute anywhere but here.

One module with a section per library, rather than a module per library:
the list is the point.  Whoever upgrades a dependency, or asks what envpin
relies on, reads one page; the look-up, the checks and the message exist
once; each section is a screenful.  What an internal is *for* stays with the
code that uses it (``adapters/ray_compat`` keeps Ray's fallbacks and their
warning; its list is the Ray section here).

Standard library only, and no library is imported until one of its entries
is used: the kernel side is mounted into images that have none of these
libraries, and importing this module must not import them (nor ``inspect``
and ``ast``, which only the checks need: kernels import this at start).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envpin.errors import EnvpinError

_NOT_GIVEN: Any = object()


class InternalMissing(EnvpinError):
    """The installed version of a library lacks an internal envpin uses (the message names which and where).

    Fix: install a version of that library inside the range the message gives (``pip install 'LIB>=LOW,<=HIGH'``,
    the range envpin's tests resolve every internal in), or upgrade envpin to one that supports the newer release.
    """


@dataclass(frozen=True)
class EntryPoint:
    """One internal: ``module:attribute``, why envpin uses it, and what it relies on."""

    key: str  #: the name code asks for: ``DOCKER.get("create_container_args")``
    module: str
    attribute: str  #: dotted, inside ``module``
    why: str
    required: bool = True  #: False: the code using it does without it (said in ``why``)
    parameters: tuple[str, ...] = ()  #: parameter names envpin relies on (all present)
    older: str | None = None  #: the same thing's ``attribute`` in older versions (same module), tried second
    #: the last part of ``attribute`` is set on the library's objects (``self.x = ...`` in its source),
    #: not on the class: code reads it with ``attr``; the check reads the class's source
    instance: bool = False
    check: Callable[[Any], bool] | None = None  #: a fact about the value envpin relies on ...
    expects: str = ""  #: ... in words, for the failure

    @property
    def name(self) -> str:
        return f"{self.module}:{self.attribute}"

    def member(self, attribute: str | None = None) -> str:
        """The attribute's last part: the name looked up on the owner (a class, a module, an object)."""
        return (attribute or self.attribute).rsplit(".", 1)[-1]

    def locate(self) -> tuple[Any, str, Any]:
        """``(owner, member, value)``, or raises ``ImportError``/``AttributeError``/``TypeError``/``ValueError``.

        ``value`` is the owner itself for an ``instance`` attribute (objects carry it, the class does not).
        """
        module = importlib.import_module(self.module)
        try:
            return self._locate(module, self.attribute)
        except AttributeError:
            if self.older is None:
                raise
            return self._locate(module, self.older)

    def resolve(self) -> Any:
        """The object (for an ``instance`` entry: the class whose objects carry it), checked."""
        return self.locate()[2]

    def _locate(self, module: Any, dotted: str) -> tuple[Any, str, Any]:
        owner = module
        *path, member = dotted.split(".")
        for part in path:
            owner = getattr(owner, part)
        if self.instance:
            if not _sets_attribute(owner, member):
                raise AttributeError(f"{owner.__qualname__} objects no longer get an attribute {member!r}")
            return owner, member, owner
        value = getattr(owner, member)
        if self.parameters:
            import inspect

            found = tuple(inspect.signature(value).parameters)
            if not set(self.parameters) <= set(found):
                raise TypeError(f"{self.name} takes {found}, not {self.parameters}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{self.name} is not {self.expects}")
        return owner, member, value


def _sets_attribute(cls: type, name: str) -> bool:
    """Whether ``cls`` or a base defines ``name`` or assigns ``<something>.name`` in its class body's code."""
    import inspect

    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        if name in vars(klass):
            return True
        try:
            filename = inspect.getsourcefile(klass)
        except TypeError:  # a built-in class
            filename = None
        if filename and name in _assigned_attributes(filename).get(klass.__name__, ()):
            return True
    return False


def reset() -> None:
    """Forget the source files parsed for assigned attributes (``envpin.reset_caches``)."""
    _assigned_attributes.cache_clear()


@functools.lru_cache(maxsize=64)
def _assigned_attributes(filename: str) -> dict[str, frozenset[str]]:
    """Per class name in a source file, the attribute names its code assigns (a file is parsed once)."""
    import ast

    try:
        with open(filename, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[str, frozenset[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            stored = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
            out[node.name] = out.get(node.name, frozenset()) | stored
    return out


class Library:
    """A library's section: its supported versions and the internals envpin uses."""

    def __init__(self, distribution: str, import_name: str, supported: tuple[str, str], *entries: EntryPoint):
        self.distribution = distribution  #: the name pip knows (``ytsaurus-client``)
        self.import_name = import_name  #: the top-level import (``yt``)
        self.supported = supported  #: (lowest, newest), both tested; ``pyproject.toml`` says the same
        self.entries = entries
        self._by_key = {e.key: e for e in entries}
        if len(self._by_key) != len(entries):
            raise ValueError(f"{distribution}: two entries share a key")

    def __repr__(self) -> str:
        return f"<internals of {self.distribution} {self.supported[0]} to {self.supported[1]}>"

    def entry(self, key: str) -> EntryPoint:
        return self._by_key[key]

    def version(self) -> str:
        """The installed version (``?`` when the library has no metadata here)."""
        from importlib import metadata

        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return "?"

    def requirement(self) -> str:
        """The pip requirement for the supported range, as ``pyproject.toml`` writes it."""
        return f"{self.distribution}>={self.supported[0]},<={self.supported[1]}"

    def missing(self, required_only: bool = False) -> list[str]:
        """``name: reason`` of every entry the installed version does not have (empty: all resolve)."""
        out = []
        for entry in self.entries:
            if required_only and not entry.required:
                continue
            try:
                entry.locate()
            except (ImportError, AttributeError, TypeError, ValueError) as exc:
                out.append(f"{entry.name}: {type(exc).__name__}: {exc}")
        return out

    # ---- what code calls ---------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The object registered under ``key`` (a function, a class, a constant), checked."""
        return self._located(key)[2]

    def site(self, key: str) -> tuple[Any, str]:
        """``(owner, name)`` of a function envpin wraps (``patches.wrap(*RAY.site("remote"), ...)``)."""
        owner, member, _ = self._located(key)
        return owner, member

    def attr(self, obj: Any, key: str, default: Any = _NOT_GIVEN) -> Any:
        """``obj``'s attribute registered under ``key`` (``default`` when it has none, if given).

        Only the name is looked up: this runs where the library calls envpin
        (every task, every job), and the test checks the rest.
        """
        entry = self._by_key[key]
        names = [entry.member()] + ([entry.member(entry.older)] if entry.older else [])
        for name in names:
            try:
                return getattr(obj, name)
            except AttributeError:
                continue
        if default is not _NOT_GIVEN:
            return default
        raise self._missing(entry, AttributeError(f"{type(obj).__qualname__} object has no attribute {names[0]!r}"))

    def assign(self, obj: Any, key: str, value: Any) -> None:
        """Set ``obj``'s attribute registered under ``key`` (an object of the library's, which reads it)."""
        setattr(obj, self._by_key[key].member(), value)

    def position(self, key: str, parameter: str) -> int | None:
        """Index of ``parameter`` among the positional arguments after ``self`` (None: keyword only)."""
        import inspect

        target = self.get(key)
        positional = [
            p.name
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ][1:]
        return positional.index(parameter) if parameter in positional else None

    def _located(self, key: str) -> tuple[Any, str, Any]:
        entry = self._by_key[key]
        try:
            return entry.locate()
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise self._missing(entry, exc) from exc

    def _missing(self, entry: EntryPoint, exc: BaseException) -> InternalMissing:
        low, high = self.supported
        return InternalMissing(
            f"envpin needs {entry.name} from {self.distribution} (for {entry.why}), and {self.distribution} "
            f"{self.version()} installed here does not have it ({type(exc).__name__}: {exc}). envpin is tested with "
            f"{self.distribution} {low} to {high}: install one of those (pip install '{self.requirement()}')."
        )


# ---- Docker SDK (server side, and the kernel side on a host) -----------------------------------------

DOCKER = Library(
    "docker",
    "docker",
    ("7.0.0", "7.2.0"),
    EntryPoint(
        "create_container_args",
        "docker.models.containers",
        "_create_container_args",
        "a container in Podman's keep-id user namespace: the SDK's HostConfig refuses any userns_mode but "
        "'host', so envpin builds the create arguments the way containers.create does, then sets UsernsMode",
        parameters=("kwargs",),
    ),
    EntryPoint(
        "api_version",
        "docker.api.client",
        "APIClient._version",
        "the API version the client negotiated, which _create_container_args needs",
        instance=True,
    ),
    EntryPoint(
        "api_url",
        "docker.api.client",
        "APIClient._url",
        "the URL of an engine endpoint the SDK has no method for (Podman's /libpod/info; a cancellable pull)",
        parameters=("pathfmt",),
    ),
    EntryPoint(
        "api_get",
        "docker.api.client",
        "APIClient.get",
        "a GET the SDK has no method for (Podman's /libpod/info; the client is a requests.Session)",
    ),
    EntryPoint(
        "api_post",
        "docker.api.client",
        "APIClient._post",
        "a pull whose HTTP response envpin keeps, so closing it cancels the pull on the engine",
    ),
    EntryPoint(
        "api_raise_for_status",
        "docker.api.client",
        "APIClient._raise_for_status",
        "the SDK's own errors (ImageNotFound, APIError) for that pull's response",
        parameters=("response",),
    ),
    EntryPoint(
        "api_stream_helper",
        "docker.api.client",
        "APIClient._stream_helper",
        "the pull's progress events, decoded as the SDK's pull decodes them",
        parameters=("response", "decode"),
    ),
    EntryPoint(
        "auth_config_header",
        "docker.auth",
        "get_config_header",
        "the registry login for that pull (X-Registry-Auth), as the SDK's pull sends it",
        parameters=("client", "registry"),
    ),
    EntryPoint(
        "auth_resolve_repository_name",
        "docker.auth",
        "resolve_repository_name",
        "the registry a repository lives on, to pick its login",
        parameters=("repo_name",),
    ),
    EntryPoint(
        "api_custom_adapter",
        "docker.api.client",
        "APIClient._custom_adapter",
        "the engine's socket path: every unix-socket client has the same base_url, so the path tells engines apart",
        instance=True,
    ),
    EntryPoint(
        "unix_socket_path",
        "docker.transport.unixconn",
        "UnixHTTPAdapter.socket_path",
        "the engine's socket path (on the client's unix-socket adapter)",
        instance=True,
    ),
    EntryPoint(
        "api_base_url",
        "docker.api.client",
        "APIClient.base_url",
        "the engine's address when it is not a unix socket (tcp://, ssh://)",
        instance=True,
    ),
    EntryPoint(
        "api_timeout",
        "docker.api.client",
        "APIClient.timeout",
        "a short timeout for the first ping, then the usual one (an unresponsive engine is said within seconds)",
        instance=True,
    ),
    EntryPoint(
        "parse_bytes",
        "docker.utils",
        "parse_bytes",
        "memory and size options written as Docker writes them ('512m', '2g')",
        parameters=("s",),
    ),
    EntryPoint(
        "attach_socket_raw",
        "socket",
        "SocketIO._sock",
        "the plain socket under Container.attach_socket's result (a SocketIO for a unix socket): envpin run "
        "shuts down its writing half when stdin ends, which SocketIO cannot",
        instance=True,
    ),
)


# ---- ipykernel (kernel side, in the image) ---------------------------------------------------------------

IPYKERNEL = Library(
    "ipykernel",
    "ipykernel",
    ("6.29.0", "7.4.0"),
    EntryPoint(
        "get_parent",
        "ipykernel.kernelbase",
        "Kernel.get_parent",
        "the header of the cell %use_image runs in, which the successor kernel answers",
        parameters=("channel",),
    ),
    EntryPoint(
        "parent_ident",
        "ipykernel.kernelbase",
        "Kernel._parent_ident",
        "the client's routing identity of that cell, by channel, so the successor's reply reaches it",
        instance=True,
    ),
    EntryPoint(
        "shell_stream",
        "ipykernel.kernelbase",
        "Kernel.shell_stream",
        "the successor sends the moved cell's reply on the shell socket, from that stream's own event loop",
        instance=True,
    ),
    EntryPoint(
        "session",
        "ipykernel.kernelbase",
        "Kernel.session",
        "signing the reply and the status messages the successor sends for the moved cell",
        instance=True,
    ),
    EntryPoint(
        "iopub_socket",
        "ipykernel.kernelbase",
        "Kernel.iopub_socket",
        "the moved cell's note and 'idle' status, published by the successor",
        instance=True,
    ),
    EntryPoint(
        "shell_kernel",
        "ipykernel.zmqshell",
        "ZMQInteractiveShell.kernel",
        "the kernel under the notebook's shell (%use_image hands over from there)",
        instance=True,
    ),
    EntryPoint(
        "launch_new_instance",
        "ipykernel.kernelapp",
        "launch_new_instance",
        "a warm pooled process becoming a kernel, exactly as python -m ipykernel_launcher does",
    ),
    # The old kernel of a move answers what a client queued behind the moving cell (Run All), then ends.
    EntryPoint(
        "shell_handlers",
        "ipykernel.kernelbase",
        "Kernel.shell_handlers",
        "the execute_request handler replaced: each request queued behind a move is answered 'aborted' with a note",
        instance=True,
    ),
    EntryPoint(
        "dispatch_shell",
        "ipykernel.kernelbase",
        "Kernel.dispatch_shell",
        "ipykernel 7: wrapped to see the last message queued behind a move reach the main shell (then the end)",
    ),
    EntryPoint(
        "abort_queues",
        "ipykernel.kernelbase",
        "Kernel._abort_queues",
        "made a no-op during a move: the moving cell ends in an error, whose stop_on_error would abort the queue "
        "without the note",
    ),
    EntryPoint(
        "shell_channel_thread",
        "ipykernel.kernelbase",
        "Kernel.shell_channel_thread",
        "ipykernel 7 reads the shell socket in that thread; absent in 6, where the old kernel ends when its queue is "
        "quiet instead",
        required=False,
    ),
    EntryPoint(
        "subshell_manager",
        "ipykernel.shellchannel",
        "ShellChannelThread.manager",
        "ipykernel 7: the inproc socket to the main shell, through which the last message of a move is queued",
        required=False,
    ),
    EntryPoint(
        "main_shell_socket",
        "ipykernel.subshell_manager",
        "SubshellManager.get_shell_channel_to_subshell_socket",
        "ipykernel 7: that socket (subshell None: the main shell)",
        parameters=("subshell_id",),
        required=False,
    ),
    EntryPoint(
        "channel_loop",
        "ipykernel.thread",
        "BaseThread.io_loop",
        "ipykernel 7: the shell thread's event loop, where the last message of a move is sent from",
        instance=True,
        required=False,
    ),
    EntryPoint(
        "channel_lock",
        "ipykernel.shellchannel",
        "ShellChannelThread.asyncio_lock",
        "ipykernel 7: the shell thread passes requests on under it; the last message of a move waits its turn",
        instance=True,
        required=False,
    ),
)


# ---- IPython (kernel side) -------------------------------------------------------------------------------

IPYTHON = Library(
    "ipython",
    "IPython",
    ("8.0.0", "9.19.1"),
    EntryPoint(
        "showtraceback",
        "IPython.core.interactiveshell",
        "InteractiveShell._showtraceback",
        "showing an envpin error as one paragraph: in a kernel it also fills the reply's ename and evalue",
        parameters=("etype", "evalue", "stb"),
    ),
    EntryPoint(
        "custom_exceptions",
        "IPython.core.interactiveshell",
        "InteractiveShell.custom_exceptions",
        "whether another extension holds the shell's one custom-exception handler (envpin then leaves it)",
        instance=True,
    ),
)


# ---- ytsaurus-client (kernel side) -----------------------------------------------------------------------

#: The configuration keys the YTsaurus adapter reads and writes, by section.
_YT_CONFIG_KEYS = {
    "user_job_spec_defaults": (),
    "pickling": ("framework", "check_python_version", "python_binary", "use_local_python_in_jobs"),
}


def _has_yt_config_keys(config: Any) -> bool:
    return all(section in config and set(keys) <= set(config[section]) for section, keys in _YT_CONFIG_KEYS.items())


YTSAURUS = Library(
    "ytsaurus-client",
    "yt",
    ("0.13.20", "0.13.55"),
    EntryPoint(
        "job_spec_build",
        "yt.wrapper.spec_builders",
        "UserJobSpecBuilder.build",
        "every user job of every operation: a client older than the pin is stamped, the job checked",
        parameters=("self", "client"),
    ),
    EntryPoint(
        "job_spec",
        "yt.wrapper.spec_builders",
        "UserJobSpecBuilder._spec",
        "the image a job names itself, before it is built (such a job keeps it)",
        instance=True,
    ),
    EntryPoint(
        "job_name",
        "yt.wrapper.spec_builders",
        "UserJobSpecBuilder._job_name",
        "the job's name in envpin's messages (else its type)",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "job_type",
        "yt.wrapper.spec_builders",
        "UserJobSpecBuilder._job_type",
        "the job's type in envpin's messages (else 'user job')",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "default_config",
        "yt.wrapper.default_config",
        "default_config",
        "the template every new YtClient copies: stamped, so clients created after the pin have it",
        check=_has_yt_config_keys,
        expects=f"a configuration with {_YT_CONFIG_KEYS}",
    ),
    EntryPoint(
        "get_config",
        "yt.wrapper.config",
        "get_config",
        "the configuration a call uses (a client's own, or the global one)",
        parameters=("client",),
    ),
    EntryPoint(
        "forced_shortcuts",
        "yt.wrapper.default_config",
        "FORCED_SHORTCUTS",
        "a YtClient created inside a job reads YT_BASE_LAYER as its operation_base_layer, so nested "
        "operations keep the image (envpin.adapters.yt_adapter.job_environment)",
        check=lambda shortcuts: shortcuts.get("YT_BASE_LAYER") == "operation_base_layer",
        expects="mapping YT_BASE_LAYER to operation_base_layer",
    ),
)


# ---- flytekit (kernel side) ------------------------------------------------------------------------------

#: The variable flytekit reads its default image from; the adapter sets it before flytekit is imported.
FLYTE_DEFAULT_IMAGE_VARIABLE = "FLYTE_INTERNAL_IMAGE"

FLYTEKIT = Library(
    "flytekit",
    "flytekit",
    ("1.13.0", "1.16.31"),
    EntryPoint(
        "task_init",
        "flytekit.core.python_auto_container",
        "PythonAutoContainerTask.__init__",
        "every Python task declared after the pin gets the image and the ENVPIN_* variables; plugins pass "
        "name, container_image and environment by position",
        parameters=("self", "name", "container_image", "environment"),
    ),
    EntryPoint(
        "default_image_variable",
        "flytekit.core.constants",
        "FLYTE_INTERNAL_IMAGE_ENV_VAR",
        "the default image of everything serialized without one, pyflyte included",
        check=lambda value: value == FLYTE_DEFAULT_IMAGE_VARIABLE,
        expects=repr(FLYTE_DEFAULT_IMAGE_VARIABLE),
    ),
    EntryPoint(
        "get_serializable_task",
        "flytekit.tools.translator",
        "get_serializable_task",
        "every task's serialization (pyflyte register/package, FlyteRemote, @dynamic): a task whose image holds "
        "the code is serialized without the fast-registration wrapper (get_serializable calls it by module name)",
        parameters=("entity_mapping", "settings", "entity"),
    ),
    EntryPoint(
        "package",
        "flytekit.tools.repo",
        "package",
        "pyflyte package and serialize_and_package: no code archive when no task needs one (fast_options from "
        "1.14, the bool fast before)",
        parameters=("serializable_entities",),
    ),
    EntryPoint(
        "remote_fast_package",
        "flytekit.remote.remote",
        "FlyteRemote.fast_package",
        "pyflyte register and FlyteRemote.register_script scan and upload the code here: skipped when every task "
        "of the registration holds its code in the image",
        parameters=("self", "root"),
    ),
    EntryPoint(
        "register_script",
        "flytekit.remote.remote",
        "FlyteRemote.register_script",
        "FlyteRemote's script-mode registration: its tasks decide whether fast_package uploads anything",
        parameters=("self", "entity", "image_config", "fast_package_options"),
    ),
    EntryPoint(
        "flyte_entities",
        "flytekit.core.context_manager",
        "FlyteEntities",
        "the tasks pyflyte register loaded (its registration), which decide whether a bundle is needed",
        check=lambda value: isinstance(getattr(value, "entities", None), list),
        expects="a class with a list 'entities'",
    ),
    EntryPoint(
        "plugins_entry_point_group",
        "flytekit",
        "load_implicit_plugins",
        "pyflyte started from a pinned notebook loads envpin's rules through the 'flytekit.plugins' entry points "
        "this function loads at import flytekit (envpin/adapters/flyte_hook)",
    ),
)


# ---- flyte, Flyte 2's SDK (kernel side: adapters/flyte2_adapter) ----------------------------------------

FLYTE = Library(
    "flyte",
    "flyte",
    ("2.12.1", "2.12.1"),
    EntryPoint(
        "task_environment_post_init",
        "flyte._task_environment",
        "TaskEnvironment.__post_init__",
        "every TaskEnvironment created after the pin (clone_with too): the pin for image 'auto'/None, the "
        "ENVPIN_* variables in env_vars",
        parameters=("self",),
    ),
    EntryPoint(
        "runner_build_task_spec",
        "flyte._run",
        "_Runner._build_task_spec_from_template",
        "flyte.run / with_runcontext(...).run of a local task (remote and dry run): where the code bundle is built "
        "from the runner's copy_style, interactive mode and version, which envpin sets when the image holds the code",
        parameters=("self", "obj"),
    ),
    EntryPoint(
        "runner_run_local",
        "flyte._run",
        "_Runner._run_local",
        "local mode runs the task in this process: warned about (refused with --strict) outside the pinned image",
        parameters=("self", "obj"),
    ),
    EntryPoint(
        "runner_copy_style",
        "flyte._run",
        "_Runner._copy_files",
        "the run's copy_style ('none' when every environment's image holds the code)",
        instance=True,
    ),
    EntryPoint(
        "runner_interactive_mode",
        "flyte._run",
        "_Runner._interactive_mode",
        "a notebook's runs pickle the task (interactive mode) whatever copy_style says: off for such runs",
        instance=True,
    ),
    EntryPoint(
        "runner_version",
        "flyte._run",
        "_Runner._version",
        "copy_style 'none' needs a version: envpin's, from the image id and the modules, when none is given",
        instance=True,
    ),
    EntryPoint(
        "deploy_apply",
        "flyte._deploy",
        "apply",
        "flyte.deploy's per-plan step, which builds the bundle from copy_style (called by module name)",
        parameters=("deployment_plan", "copy_style"),
    ),
    EntryPoint(
        "plan_deploy",
        "flyte._deploy",
        "plan_deploy",
        "the environments a run needs (the task's and those it depends on)",
    ),
    EntryPoint(
        "default_task_resolver",
        "flyte._internal.resolvers.default",
        "DefaultTaskResolver",
        "the module a Flyte 2 pod imports for a task (loader_args: mod M instance T), checked in the image",
    ),
    EntryPoint(
        "get_init_config",
        "flyte._initialize",
        "get_init_config",
        "the root_dir task modules are named from (flyte.init(root_dir=...))",
    ),
)


# ---- Ray (kernel side; the fallbacks and their warning: adapters/ray_compat) ----------------------------

RAY = Library(
    "ray",
    "ray",
    ("2.40.0", "2.60.0"),
    EntryPoint(
        "remote_function_remote",
        "ray.remote_function",
        "RemoteFunction._remote",
        "every driver-side task submission (f.remote(), f.options(...).remote())",
        parameters=("self", "args", "kwargs", "serialized_runtime_env_info"),
    ),
    EntryPoint(
        "function_name",
        "ray.remote_function",
        "RemoteFunction._function_name",
        "the task's name in envpin's messages (else 'this task')",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "actor_remote",
        "ray.actor",
        "ActorClass._remote",
        "every driver-side actor creation",
        parameters=("self", "args", "kwargs"),
    ),
    EntryPoint(
        "actor_metadata",
        "ray.actor",
        "ActorClass.__ray_metadata__",
        "the runtime_env an actor class was declared with (@ray.remote(runtime_env=...)), which the stamp keeps",
        instance=True,
    ),
    EntryPoint(
        "actor_runtime_env",
        "ray.actor",
        "_ActorClassMetadata.runtime_env",
        "the runtime_env an actor class was declared with",
        instance=True,
    ),
    EntryPoint(
        "actor_class",
        "ray.actor",
        "_ActorClassMetadata.modified_class",
        "the actor's class name in envpin's messages (else 'this actor')",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "set_task_options",
        "ray.util.client.common",
        "set_task_options",
        "Ray Client tasks and actors (ray.init('ray://...')), which bypass RemoteFunction/ActorClass",
        parameters=("task", "options", "field"),
    ),
    EntryPoint(
        "client_task_function",
        "ray.core.generated.ray_client_pb2",
        "ClientTask.FUNCTION",
        "tells Ray Client tasks from the rest",
    ),
    EntryPoint(
        "client_task_actor",
        "ray.core.generated.ray_client_pb2",
        "ClientTask.ACTOR",
        "tells Ray Client actors from the rest",
    ),
    EntryPoint("submit_job", "ray.dashboard.modules.job.sdk", "JobSubmissionClient.submit_job", "Ray Jobs submissions"),
    EntryPoint(
        "job_client_address",
        "ray.dashboard.modules.job.sdk",
        "JobSubmissionClient._address",
        "the dashboard a job goes to, checked before submitting (else no check)",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "job_client_headers",
        "ray.dashboard.modules.job.sdk",
        "JobSubmissionClient._headers",
        "the job client's own headers (a token) for that check",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "parse_runtime_env_for_task_or_actor",
        "ray._private.utils",
        "parse_runtime_env_for_task_or_actor",
        "turns the stamped runtime_env into what RemoteFunction._remote expects",
        older="parse_runtime_env",
    ),
    EntryPoint(
        "get_runtime_env_info",
        "ray._private.utils",
        "get_runtime_env_info",
        "serializes the stamped runtime_env for RemoteFunction._remote",
    ),
    EntryPoint(
        "canonicalize_bootstrap_address",
        "ray._private.services",
        "canonicalize_bootstrap_address",
        "Ray's own answer to 'does ray.init() start a local cluster?' (else envpin's simpler reading)",
        required=False,
    ),
    EntryPoint(
        "get_image_uri_plugin_cls",
        "ray._private.runtime_env.default_impl",
        "get_image_uri_plugin_cls",
        "Ray's own list of runtime_env fields allowed beside image_uri (else image_uri, config, env_vars)",
        required=False,
        check=lambda get_cls: {"image_uri", "env_vars"} <= set(get_cls().get_compatible_keys()),
        expects="a plugin that allows env_vars beside image_uri",
    ),
    EntryPoint(
        "get_auth_headers_if_auth_enabled",
        "ray._private.authentication.http_token_authentication",
        "get_auth_headers_if_auth_enabled",
        "Ray's token for a dashboard with token auth (Ray >= 2.52; older Rays have no token auth)",
        required=False,
    ),
)


# ---- distributed (kernel side: adapters/dask_adapter, dask_check, dask_cluster) ----------------------------

#: The scheduler's HTTP routes envpin.DaskCluster serves: Dask's defaults without ``distributed.http.proxy`` (with
#: jupyter-server-proxy in the image it forwards requests to any host and port the scheduler reaches).
DASK_DASHBOARD_ROUTES = (
    "distributed.http.scheduler.prometheus",
    "distributed.http.scheduler.info",
    "distributed.http.scheduler.json",
    "distributed.http.health",
    "distributed.http.statics",
)
#: Dask's configuration keys envpin.DaskCluster sets in its containers (as ``DASK_...`` variables): mutual TLS.
DASK_TLS_KEYS = (
    "distributed.comm.require-encryption",
    "distributed.comm.tls.ca-file",
    *(f"distributed.comm.tls.{role}.{part}" for role in ("scheduler", "worker", "client") for part in ("cert", "key")),
)


def _dask_config_has(config: Any) -> bool:
    """Every key envpin sets is one Dask defines (an unknown one is silently ignored), and the routes exist."""
    missing = object()
    keys = (*DASK_TLS_KEYS, "distributed.scheduler.http.routes")
    if any(config.get(key, missing) is missing for key in keys):
        return False
    return set(DASK_DASHBOARD_ROUTES) <= set(config.get("distributed.scheduler.http.routes"))


def _temporary_security_fields(temporary: Any) -> bool:
    """``Security.temporary()`` gives PEM text in the fields envpin copies into the containers."""
    security = temporary()
    return all(
        "-----BEGIN" in str(getattr(security, f, "")) for f in ("tls_ca_file", "tls_worker_cert", "tls_worker_key")
    )


DISTRIBUTED = Library(
    "distributed",
    "distributed",
    ("2025.1.0", "2026.8.0"),
    EntryPoint(
        "client_start",
        "distributed.client",
        "Client._start",
        "the check at connect: Client(...) refuses a cluster that cannot load this session's pickles before it "
        "returns (wrapped; its coroutine awaits the connection first)",
        parameters=("self", "timeout"),
    ),
    EntryPoint(
        "client_graph_to_futures",
        "distributed.client",
        "Client._graph_to_futures",
        "the gate before every submission (submit, map, compute, persist, get go through it): a worker that "
        "joined later and cannot load the pickles is refused before the graph is sent",
    ),
    EntryPoint(
        "client_handle_event",
        "distributed.client",
        "Client._handle_event",
        "the scheduler's add-worker / remove-worker events, which start the check of a late joiner",
        parameters=("self", "topic", "event"),
    ),
    EntryPoint(
        "client_close",
        "distributed.client",
        "Client._close",
        "envpin's event subscription is dropped before the stream closes, and a refused client is closed",
    ),
    EntryPoint(
        "client_send_to_scheduler",
        "distributed.client",
        "Client._send_to_scheduler",
        "subscribing to (and leaving) the scheduler's 'all' event topic, as Client.subscribe_topic does",
        parameters=("self", "msg"),
    ),
    EntryPoint(
        "client_start_arg",
        "distributed.client",
        "Client._start_arg",
        "the address Client(...) was given: after a connect the scheduler dropped, envpin asks that address for "
        "its versions to say whether the cluster could load this session's pickles at all",
        instance=True,
    ),
    EntryPoint(
        "client_event_handlers",
        "distributed.client",
        "Client._event_handlers",
        "whether the user subscribed to the same topic (then their handler runs, and the topic stays)",
        instance=True,
    ),
    EntryPoint(
        "client_scheduler_identity",
        "distributed.client",
        "Client._scheduler_identity",
        "the workers the scheduler last reported, checked before a submission (else only the announced ones)",
        required=False,
        instance=True,
    ),
    EntryPoint(
        "scheduler_broadcast",
        "distributed.scheduler",
        "Scheduler.broadcast",
        "asks every worker (or the new ones) for their versions: the 'versions' op, answered in msgpack",
        parameters=("self", "msg", "workers", "on_error"),
    ),
    EntryPoint(
        "versions",
        "distributed.node",
        "ServerNode.versions",
        "the scheduler's and workers' 'versions' handler: Python, cloudpickle, dask, distributed (no pickle)",
        parameters=("self", "packages"),
    ),
    EntryPoint(
        "local_cluster_init",
        "distributed.deploy.local",
        "LocalCluster.__init__",
        "the notice that a LocalCluster of a host kernel runs on the host, not in the pinned image",
    ),
    EntryPoint(
        "spec_cluster_init",
        "distributed.deploy.spec",
        "SpecCluster.__init__",
        "envpin.DaskCluster is a SpecCluster of container processes, with its own certificate",
        parameters=(
            "self",
            "workers",
            "scheduler",
            "worker",
            "asynchronous",
            "loop",
            "security",
            "name",
            "shutdown_on_close",
        ),
    ),  # fmt: skip
    EntryPoint(
        "new_worker_name",
        "distributed.deploy.spec",
        "SpecCluster._new_worker_name",
        "envpin.DaskCluster overrides it so scale(n)'s workers are named after the cluster's containers",
        parameters=("self", "worker_number"),
    ),
    EntryPoint(
        "process_interface",
        "distributed.deploy.spec",
        "ProcessInterface",
        "the scheduler's and each worker's container (start, close, address)",
    ),
    EntryPoint(
        "temporary_security",
        "distributed.security",
        "Security.temporary",
        "each envpin.DaskCluster's own TLS key and certificate, copied into its containers",
        check=_temporary_security_fields,
        expects="giving PEM text in tls_ca_file, tls_worker_cert and tls_worker_key",
    ),
    EntryPoint(
        "config",
        "distributed.config",
        "dask.config",
        "the TLS and dashboard settings envpin.DaskCluster gives its containers as DASK_* variables",
        check=_dask_config_has,
        expects=f"defining {', '.join(DASK_TLS_KEYS)} and the dashboard routes {', '.join(DASK_DASHBOARD_ROUTES)}",
    ),
    EntryPoint(
        "dask_spec",
        "distributed.cli.dask_spec",
        "main",
        "the program each container runs (python -m distributed.cli.dask_spec --spec JSON); its scheduler logs "
        "'Scheduler at:', its workers 'Start worker at:' and 'Registered to:', which envpin waits for",
    ),
)


# ---- dask-gateway (kernel side: adapters/dask_adapter) ------------------------------------------------------

DASK_GATEWAY = Library(
    "dask-gateway",
    "dask_gateway",
    ("2025.4.0", "2026.3.0"),
    EntryPoint(
        "gateway_submit",
        "dask_gateway.client",
        "Gateway._submit",
        "every cluster request (new_cluster, submit, GatewayCluster) gets the pinned image as its cluster option",
        parameters=("self", "cluster_options"),
    ),
    EntryPoint(
        "gateway_cluster_options",
        "dask_gateway.client",
        "Gateway._cluster_options",
        "the deployment's cluster options and their defaults (does it offer 'image', 'environment'?)",
        parameters=("self", "use_local_defaults"),
    ),
    EntryPoint(
        "gateway_config_cluster_options",
        "dask_gateway.client",
        "Gateway._config_cluster_options",
        "the options the user configured (gateway.cluster.options): an image named there is the user's choice",
    ),
)


#: Every section, by the name pip knows the library by.
LIBRARIES: dict[str, Library] = {
    lib.distribution: lib
    for lib in (DOCKER, IPYKERNEL, IPYTHON, YTSAURUS, FLYTEKIT, FLYTE, RAY, DISTRIBUTED, DASK_GATEWAY)
}
