"""Every Ray internal the Ray adapter uses, in one place, each looked up by name and checked.

Ray offers no public hook that sees every way work is submitted (see
``ray_adapter``), so the adapter wraps a few entry points that are not
public API and calls a few private helpers.  Those can move in any Ray
release.  This module is the only place that names them:

* :data:`ENTRY_POINTS` lists each one with what it is for and whether the
  adapter can do without it;
* :func:`missing` resolves them all against the installed Ray (the tests run
  it against the lowest and the newest supported Ray: ``SUPPORTED``);
* the helpers below call them, and where an optional one is missing they
  degrade in a way that is *said*, with a :class:`RayCompatWarning` naming the
  Ray version and the entry point, never silently.

Supported Ray: ``SUPPORTED`` (also the bounds of the ``ray`` extra in
``pyproject.toml``); the tests prove both ends.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from dataclasses import dataclass
from typing import Any

#: Lowest and highest Ray the adapter is tested against (``pyproject.toml``'s ``ray`` extra says the same).
SUPPORTED = ("2.40.0", "2.60.0")

#: runtime_env fields Ray accepts beside ``image_uri`` when it cannot tell us (its own list wins when it can).
IMAGE_URI_COMPATIBLE_DEFAULT = frozenset({"image_uri", "config", "env_vars"})


class RayCompatWarning(UserWarning):
    """The installed Ray lacks an internal envpin uses; what envpin does instead is in the message."""


@dataclass(frozen=True)
class EntryPoint:
    module: str
    attribute: str  #: dotted, inside ``module``
    why: str
    required: bool = True  #: False: the adapter degrades (with a warning) when it is missing
    parameters: tuple[str, ...] = ()  #: parameter names the wrapper relies on (all present)
    older: str | None = None  #: the same thing's name in older Rays (same module), tried second

    @property
    def name(self) -> str:
        return f"{self.module}:{self.attribute}"

    def resolve(self) -> Any:
        """The object, or raises ``ImportError``/``AttributeError``/``TypeError`` (a changed signature)."""
        module = importlib.import_module(self.module)
        try:
            target = _lookup(module, self.attribute)
        except AttributeError:
            if self.older is None:
                raise
            target = _lookup(module, self.older)
        if self.parameters:
            found = tuple(inspect.signature(target).parameters)
            if not set(self.parameters) <= set(found):
                raise TypeError(f"{self.name} takes {found}, not {self.parameters}")
        return target


def _lookup(module: Any, dotted: str) -> Any:
    target = module
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


ENTRY_POINTS = (
    EntryPoint(
        "ray.remote_function",
        "RemoteFunction._remote",
        "every driver-side task submission (f.remote(), f.options(...).remote())",
        parameters=("self", "args", "kwargs", "serialized_runtime_env_info"),
    ),
    EntryPoint(
        "ray.actor",
        "ActorClass._remote",
        "every driver-side actor creation",
        parameters=("self", "args", "kwargs"),
    ),
    EntryPoint(
        "ray.util.client.common",
        "set_task_options",
        "Ray Client tasks and actors (ray.init('ray://...')), which bypass RemoteFunction/ActorClass",
        parameters=("task", "options", "field"),
    ),
    EntryPoint("ray.core.generated.ray_client_pb2", "ClientTask.FUNCTION", "tells Ray Client tasks from the rest"),
    EntryPoint("ray.core.generated.ray_client_pb2", "ClientTask.ACTOR", "tells Ray Client actors from the rest"),
    EntryPoint("ray.dashboard.modules.job.sdk", "JobSubmissionClient.submit_job", "Ray Jobs submissions"),
    EntryPoint(
        "ray._private.utils",
        "parse_runtime_env_for_task_or_actor",
        "turns the stamped runtime_env into what RemoteFunction._remote expects",
        older="parse_runtime_env",
    ),
    EntryPoint(
        "ray._private.utils",
        "get_runtime_env_info",
        "serializes the stamped runtime_env for RemoteFunction._remote",
    ),
    EntryPoint(
        "ray._private.services",
        "canonicalize_bootstrap_address",
        "Ray's own answer to 'does ray.init() start a local cluster?' (else envpin's simpler reading)",
        required=False,
    ),
    EntryPoint(
        "ray._private.runtime_env.default_impl",
        "get_image_uri_plugin_cls",
        "Ray's own list of runtime_env fields allowed beside image_uri (else image_uri, config, env_vars)",
        required=False,
    ),
    EntryPoint(
        "ray._private.authentication.http_token_authentication",
        "get_auth_headers_if_auth_enabled",
        "Ray's token for a dashboard with token auth (Ray >= 2.52; older Rays have no token auth)",
        required=False,
    ),
)

_BY_ATTRIBUTE = {e.attribute.rsplit(".", 1)[-1]: e for e in ENTRY_POINTS}
_warned: set[str] = set()


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def missing(required_only: bool = False) -> list[str]:
    """``name: reason`` of every entry point the installed Ray does not have (empty: all resolve)."""
    out = []
    for entry in ENTRY_POINTS:
        if required_only and not entry.required:
            continue
        try:
            entry.resolve()
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            out.append(f"{entry.name}: {type(exc).__name__}: {exc}")
    return out


def _optional(short: str) -> Any | None:
    """An optional entry point, or None after one warning per Ray process saying what envpin does instead."""
    entry = _BY_ATTRIBUTE[short]
    try:
        return entry.resolve()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        if entry.name not in _warned:
            _warned.add(entry.name)
            warnings.warn(
                f"envpin: Ray {ray_version()} has no {entry.name} ({type(exc).__name__}: {exc}); it is used for "
                f"{entry.why}. envpin goes on without it. Ray versions envpin is tested with: "
                f"{SUPPORTED[0]} to {SUPPORTED[1]}.",
                RayCompatWarning,
                stacklevel=3,
            )
        return None


def unsupported() -> str | None:
    """Why envpin cannot stamp this Ray's jobs (a required entry point is missing), or None when it can."""
    gaps = missing(required_only=True)
    if not gaps:
        return None
    return (
        f"envpin cannot stamp jobs of Ray {ray_version()}: it lacks {'; '.join(gaps)}. envpin supports Ray "
        f"{SUPPORTED[0]} to {SUPPORTED[1]}: install one of those (pip install 'ray[default]=={SUPPORTED[1]}'). "
        "Until then Ray tasks, actors and jobs from this kernel run without the pinned image."
    )


# ---- the helpers the adapter calls ------------------------------------------------------


def image_uri_compatible_fields() -> set[str]:
    """runtime_env fields Ray allows beside ``image_uri``: Ray's own list, so a Ray that allows more is followed."""
    get_cls = _optional("get_image_uri_plugin_cls")
    if get_cls is None:
        return set(IMAGE_URI_COMPATIBLE_DEFAULT)
    return set(get_cls().get_compatible_keys())


def auth_headers() -> dict[str, str]:
    """Ray's token-auth header when this process has a token (a dashboard with auth answers 401 without it)."""
    entry = _BY_ATTRIBUTE["get_auth_headers_if_auth_enabled"]
    try:
        get = entry.resolve()
    except (ImportError, AttributeError):  # a Ray older than token auth: nothing to send, nothing to say
        return {}
    return dict(get({}) or {})


def starts_local_cluster(address: Any, temp_dir: str | None) -> bool:
    """Whether ``ray.init(address=address)`` starts a new cluster on this machine.

    Ray's own resolution when it is available (it follows ``RAY_ADDRESS`` and
    the address file of a running local cluster); else: no address, or
    ``"local"``, starts one.
    """
    if isinstance(address, str) and address.startswith("ray://"):
        return False
    canonicalize = _optional("canonicalize_bootstrap_address")
    if canonicalize is None:
        import os

        address = address or os.environ.get("RAY_ADDRESS")
        return address in (None, "", "local")
    try:
        return canonicalize(address, temp_dir) is None
    except (ConnectionError, ValueError):  # "auto" with no cluster running, a bad address: ray.init says so itself
        return False


def parse_runtime_env(runtime_env: dict[str, Any]) -> Any:
    """The runtime_env object ``RemoteFunction._remote`` and ``ActorClass._remote`` expect."""
    parse = _resolved.get("parse")
    if parse is None:  # looked up once: the wrapper runs for every task
        parse = _resolved["parse"] = _BY_ATTRIBUTE["parse_runtime_env_for_task_or_actor"].resolve()
    return parse(runtime_env)


_resolved: dict[str, Any] = {}


_serialized_cache: dict[str, str] = {}


def serialized_runtime_env_info(runtime_env: Any) -> str:
    """Ray's serialized runtime_env info, cached: a loop submitting 10,000 tasks serializes it once."""
    from ray._private.utils import get_runtime_env_info

    if not runtime_env:
        return ""
    key = json.dumps(runtime_env, sort_keys=True, default=str)
    info = _serialized_cache.get(key)
    if info is None:
        if len(_serialized_cache) > 256:
            _serialized_cache.clear()
        info = _serialized_cache[key] = get_runtime_env_info(runtime_env, is_job_runtime_env=False, serialize=True)
    return info


def client_task_kinds() -> tuple[Any, Any]:
    """Ray Client's task-type values for a function and an actor (whose runtime_env envpin stamps)."""
    from ray.core.generated import ray_client_pb2

    task = ray_client_pb2.ClientTask  # type: ignore[attr-defined]  # generated protobuf: no stubs
    return task.FUNCTION, task.ACTOR


def reset() -> None:
    """Forget the resolved Ray internals, the serialized runtime_envs and the warnings given (``envpin.reset_caches``)."""
    _warned.clear()
    _resolved.clear()
    _serialized_cache.clear()
