"""Every Ray internal the Ray adapter uses, in one place, each looked up by name and checked.

Ray offers no public hook that sees every way work is submitted (see
``ray_adapter``), so the adapter wraps a few entry points that are not
public API and calls a few private helpers.  Those can move in any Ray
release.  They are named in the Ray section of ``envpin.internals`` (the one
registry of library internals), and used through it and through this module:

* :data:`ENTRY_POINTS` lists each one with what it is for and whether the
  adapter can do without it;
* :func:`missing` resolves them all against the installed Ray (the tests run
  it against the lowest and the newest supported Ray: ``SUPPORTED``);
* the helpers below call them, and where an optional one is missing they
  degrade in a way that is *said*, with a :class:`RayCompatWarning` naming the
  Ray version and the entry point, never silently.

Supported Ray: ``SUPPORTED`` (``internals.RAY.supported``, also the bounds of
the ``ray`` extra in ``pyproject.toml``); the tests prove both ends.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from envpin.internals import RAY

#: Lowest and highest Ray the adapter is tested against (``pyproject.toml``'s ``ray`` extra says the same).
SUPPORTED = RAY.supported

#: runtime_env fields Ray accepts beside ``image_uri`` when it cannot tell us (its own list wins when it can).
IMAGE_URI_COMPATIBLE_DEFAULT = frozenset({"image_uri", "config", "env_vars"})


class RayCompatWarning(UserWarning):
    """The installed Ray lacks an internal envpin uses; what envpin does instead is in the message."""


#: Every Ray internal envpin uses: the Ray section of the one registry (``envpin.internals.RAY``).
ENTRY_POINTS = RAY.entries
_warned: set[str] = set()


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def missing(required_only: bool = False) -> list[str]:
    """``name: reason`` of every entry point the installed Ray does not have (empty: all resolve)."""
    return RAY.missing(required_only)


def _optional(short: str) -> Any | None:
    """An optional entry point, or None after one warning per Ray process saying what envpin does instead."""
    entry = RAY.entry(short)
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
    entry = RAY.entry("get_auth_headers_if_auth_enabled")
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
        parse = _resolved["parse"] = RAY.entry("parse_runtime_env_for_task_or_actor").resolve()
    return parse(runtime_env)


_resolved: dict[str, Any] = {}


_serialized_cache: dict[str, str] = {}


def serialized_runtime_env_info(runtime_env: Any) -> str:
    """Ray's serialized runtime_env info, cached: a loop submitting 10,000 tasks serializes it once."""
    if not runtime_env:
        return ""
    key = json.dumps(runtime_env, sort_keys=True, default=str)
    info = _serialized_cache.get(key)
    if info is None:
        if len(_serialized_cache) > 256:
            _serialized_cache.clear()
        get_runtime_env_info = RAY.get("get_runtime_env_info")
        info = _serialized_cache[key] = get_runtime_env_info(runtime_env, is_job_runtime_env=False, serialize=True)
    return info


def client_task_kinds() -> tuple[Any, Any]:
    """Ray Client's task-type values for a function and an actor (whose runtime_env envpin stamps)."""
    return RAY.get("client_task_function"), RAY.get("client_task_actor")


def reset() -> None:
    """Forget the resolved Ray internals, the serialized runtime_envs and the warnings given (``envpin.reset_caches``)."""
    _warned.clear()
    _resolved.clear()
    _serialized_cache.clear()
