"""Ray: tasks, actors and submitted jobs get the pinned image in their ``runtime_env``.

Every way a notebook hands work to Ray carries a ``runtime_env``:
``ray.init(runtime_env=)`` (the job's default, inherited by its tasks),
``@ray.remote(runtime_env=)``, ``.options(runtime_env=)`` and
``JobSubmissionClient.submit_job(runtime_env=)``.  Ray has no
configuration hook that covers all four (``RAY_RUNTIME_ENV_HOOK`` is read by
``ray.init`` only, is inherited by every process the driver starts, and is
switched off under ``uv run``), so the adapter wraps the four entry points
(``ray.init``, ``RemoteFunction._remote``, ``ActorClass._remote`` and
``JobSubmissionClient.submit_job``) and merges the stamp into whatever the
user passed, the user's explicit values winning:

* ``image_uri`` mode (the default): ``image_uri`` = the pinned reference and
  ``env_vars`` = ``ENVPIN_IMAGE``, ``ENVPIN_IMAGE_ID``,
  ``YT_JOB_DOCKER_IMAGE``.  Ray then starts the workers in that image (with
  podman on the nodes; the image needs the cluster's Ray version).  Ray
  accepts ``image_uri`` only beside ``config`` and ``env_vars``, so a
  ``runtime_env`` that also asks for ``pip``, ``uv``, ``conda``,
  ``py_executable``, ``working_dir``, ... is refused here, before anything is
  submitted, with what to do instead (:class:`RuntimeEnvConflict`);
* ``env_vars`` mode, for clusters whose nodes already run the pinned image:
  only ``env_vars`` are stamped, nothing else about the job changes.

Choose the mode with ``%use_image IMAGE --ray-mode env_vars``, or
``ENVPIN_RAY_MODE=env_vars`` in the kernel's environment (the flag wins).
A ``runtime_env`` naming its own ``image_uri`` keeps it, with the
``ImageConflictWarning``.

**Ray Client** (``ray.init("ray://HEAD:10001")``, how a notebook that is not
a cluster node connects): a *job-level* ``image_uri`` breaks the connection
itself (Ray starts the client server's per-connection process through the
image_uri plugin, with arguments its worker script rejects: "Proxy failed to
Connect to backend!").  So through Ray Client, ``ray.init`` gets the
``env_vars`` only, and every task and actor gets ``image_uri`` at its own
level.  Ray Client tasks and actors do not go through ``RemoteFunction`` /
``ActorClass``: their options reach the cluster through
``ray.util.client.common.set_task_options``, which the adapter wraps (for
functions and actors; actor *methods* carry no runtime_env).

**Preflight**: before ``ray.init`` connects to a cluster (``ray://HOST:PORT``
or ``HOST:PORT``) or ``JobSubmissionClient.submit_job`` submits, envpin asks
the cluster's dashboard (``http://HOST:8265``, or ``$ENVPIN_RAY_DASHBOARD``)
for the Ray and Python versions Ray recorded for the cluster
(``/api/v0/cluster_metadata``), and compares them with the pinned image's:
Ray exactly, Python at the level Ray enforces
(``RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL``: ``patch``, the default, or
``minor``).  A mismatch, or an image without Ray, is refused in one paragraph
(:class:`ClusterMismatch`), before anything is submitted; otherwise Ray would
fail each task's runtime_env setup after ~11 s, or run it with a raylet
traceback on the side.  The image's versions come from this process when the
kernel runs in the image, else from the image's fingerprint (cached by image
id); the cluster's are cached for a minute.  A dashboard that does not answer
within two seconds skips the check.

A *local* cluster (``ray.init()`` with no cluster to join, or
``address="local"``) runs its workers on the kernel's own machine.  When the
kernel itself runs in the pinned image, those workers already run the pinned
image: ``image_uri`` would only make Ray look for podman, so until
``ray.shutdown()`` envpin stamps ``env_vars`` alone and says so.  When the
kernel does not run in the image and podman is missing, every task of that
cluster would fail in its runtime_env setup, so ``ray.init`` is refused at
once with the choices (run the notebook in the image, ``--ray-mode env_vars``,
or join a cluster).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

from envpin import names
from envpin.adapters import _imports, ray_compat
from envpin.adapters.base import LibraryAdapter
from envpin.errors import ClusterMismatch, EnvpinError
from envpin.internals import RAY
from envpin.session import state
from envpin.session.options import RAY_MODES
from envpin.session.stamping import Stamp

#: runtime_env fields that install things on the worker: they rebuild the environment the image pins.
INSTALLING_FIELDS = ("pip", "uv", "conda", "py_executable")
_JOB_SDK = RAY.entry("submit_job").module


class RuntimeEnvConflict(EnvpinError):
    """A Ray ``runtime_env`` asks for fields Ray cannot combine with the pinned ``image_uri``.

    Ray accepts ``image_uri`` only beside ``config`` and ``env_vars``; ``pip``, ``uv``,
    ``conda``, ``py_executable``, ``working_dir`` and the like are refused before anything is
    submitted.  Also raised by ``ray.init()`` starting a local cluster from a kernel that does
    not run in the image, whose workers could not start in it.

    Fix: put those dependencies into the image (for a uv project: ``uv sync
    --no-install-project``), or use ``%use_image IMAGE --ray-mode env_vars`` when the cluster's
    nodes already run the image; run the notebook in the image for a local cluster.
    """


class LocalClusterInImage(UserWarning):
    """A local Ray cluster runs in the kernel's own container: envpin stamps env_vars only (a notice)."""


def default_mode() -> str:
    mode = os.environ.get(names.RAY_MODE, "image_uri").strip() or "image_uri"
    if mode not in RAY_MODES:
        raise EnvpinError(
            f"ENVPIN_RAY_MODE is '{mode}', which envpin does not know. Set it to 'image_uri' (Ray starts workers in "
            "the pinned image) or 'env_vars' (the cluster's nodes already run it), or unset it."
        )
    return mode


def stamp_runtime_env(runtime_env: Any, stamp: Stamp, mode: str, what: str) -> dict[str, Any]:
    """``runtime_env`` with the stamp merged in (the user's values win); raises :class:`RuntimeEnvConflict`."""
    env = dict(runtime_env or {})
    named = env.get("image_uri") or (env.get("container") or {}).get("image")
    if named and named not in (stamp.image, stamp.job_image):
        stamp.check_explicit(named, what)  # theirs stays (warned, or refused when strict), without our variables
        return env
    env["env_vars"] = {**stamp.env, **dict(env.get("env_vars") or {})}
    if mode != "image_uri" or named:
        return env
    extra = sorted(
        k for k in set(env) - ray_compat.image_uri_compatible_fields() if not k.startswith("_")
    )  # "_ray_commit": Ray's own
    if extra:
        installing = [f for f in extra if f in INSTALLING_FIELDS]
        fields = ", ".join(f"'{f}'" for f in extra)
        why = (
            "they would rebuild, on every worker, the environment the image pins"
            if installing
            else "the code and files they bring belong in the image"
        )
        raise RuntimeEnvConflict(
            f"{what} asks Ray for {fields} in its runtime_env, but this session is pinned to '{stamp.image}', "
            "which envpin passes to Ray as image_uri, and Ray allows image_uri only together with 'config' and "
            f"'env_vars' ({why}). Put these dependencies into the image and pin that image (for an image built "
            "with uv, install the dependencies without the project, e.g. `uv sync --no-install-project`, so the "
            "runtime does not reinstall it), or, if the cluster's nodes already run this image, re-pin with "
            f"%use_image {stamp.image} --ray-mode env_vars (only env_vars are stamped then). Nothing was submitted."
        )
    env["image_uri"] = stamp.job_image
    return env


class RayAdapter(LibraryAdapter):
    name = "ray"
    module = "ray"

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        self.mode = mode  # None: ENVPIN_RAY_MODE, else image_uri
        self._local_in_image = False  # a local cluster whose workers run in the pinned image (this kernel's)
        self._client_mode = False  # connected through Ray Client: image_uri per task and actor, not per job
        self.unsupported: str | None = None  # why this Ray's jobs cannot be stamped (ray_compat), once imported

    @property
    def effective_mode(self) -> str:
        if self._local_in_image:
            return "env_vars"
        return self.mode or default_mode()

    def summary(self) -> str:
        if self.unsupported:
            return f"ray: NOT stamped (Ray {ray_compat.ray_version()} is not supported)"
        if self._local_in_image:
            return "ray: runtime_env env_vars (the local cluster runs in this kernel's image)"
        if self.effective_mode == "env_vars":
            return "ray: runtime_env env_vars (nodes run the image)"
        return "ray: runtime_env image_uri + env_vars"

    def activate(self, stamp: Stamp) -> None:
        default_mode()  # a bad ENVPIN_RAY_MODE is reported by %use_image, not by the first task
        super().activate(stamp)

    # -- install ----------------------------------------------------------------------

    def install(self, ray, stamp: Stamp) -> None:
        """Wrap the entry points every way to Ray goes through (the wrappers are built below, one per entry point)."""
        self.unsupported = ray_compat.unsupported()
        if self.unsupported:  # a Ray without an entry point we wrap: said at import (never breaks the import)
            warnings.warn(self.unsupported, ray_compat.RayCompatWarning, stacklevel=2)
            return
        self.patches.wrap(*RAY.site("set_task_options"), functools.partial(_client_task_options_wrapper, self))
        self.patches.wrap(ray, "init", functools.partial(_init_wrapper, self))
        self.patches.wrap(ray, "shutdown", functools.partial(_shutdown_wrapper, self))
        self.patches.wrap(*RAY.site("remote_function_remote"), functools.partial(_task_wrapper, self))
        self.patches.wrap(*RAY.site("actor_remote"), functools.partial(_actor_wrapper, self))
        _imports.when_imported(_JOB_SDK, self._install_job_client)

    def _install_job_client(self, sdk) -> None:
        if self.stamp is None:  # deactivated before the job SDK was imported
            return
        self.patches.wrap(*RAY.site("submit_job"), functools.partial(_submit_job_wrapper, self))

    def _init_runtime_env(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The runtime_env ``ray.init(*args, **kwargs)`` gets; notes a local cluster in the image, or Ray Client.

        A local cluster is checked (podman, or the kernel already in the
        image), a remote one preflighted; through Ray Client the job-level
        ``image_uri`` is left out (it breaks the connection: tasks and actors
        get it instead).
        """
        self._local_in_image = self._client_mode = False
        address = _address(args, kwargs)
        if (self.mode or default_mode()) == "image_uri" and _starts_local_cluster(args, kwargs):
            self._local_in_image = self._check_local_cluster()
        elif address:
            self.preflight(_dashboard_for(address), f"the Ray cluster at {address}")
        stamped = self._stamped(kwargs.get("runtime_env"), "ray.init")  # checks conflicts too
        if address.startswith("ray://"):
            self._client_mode = True
            if stamped.get("image_uri") == self._active_stamp().job_image:
                stamped.pop("image_uri")
        return stamped

    def uninstall(self) -> None:
        _imports.cancel(_JOB_SDK, self._install_job_client)
        self._local_in_image = False
        self.unsupported = None

    def _check_local_cluster(self) -> bool:
        """``ray.init`` is about to start a cluster on this machine: True when its workers run the pin already."""
        stamp = self._active_stamp()
        if state.runs_in_image(stamp.image):
            warnings.warn(
                f"envpin: this local Ray cluster runs its workers in this kernel's container, which is "
                f"{stamp.image}: stamping env_vars only (image_uri is for remote clusters).",
                LocalClusterInImage,
                stacklevel=4,  # the user's ray.init: past _init_runtime_env and the init wrapper
            )
            return True
        if shutil.which("podman") is None:
            raise RuntimeEnvConflict(
                f"ray.init() is starting a local Ray cluster, whose workers run on this machine, and this kernel "
                f"does not run in '{stamp.image}': in image_uri mode Ray would start every worker in that "
                "image with podman, which is not installed here, so every task would fail. Run the notebook in "
                "the image (the Containerized Python kernel; its local cluster then runs there), or re-pin with "
                f"%use_image {stamp.image} --ray-mode env_vars, or join a cluster: ray.init(address=...)."
            )
        return False

    def preflight(self, dashboard: str | None, what: str, headers: dict[str, str] | None = None) -> None:
        """Refuse, before anything is submitted, a cluster whose Ray or Python the pinned image does not have."""
        if not dashboard or self.stamp is None:
            return
        cluster = _cluster_versions(dashboard, headers)
        if cluster is None:  # no dashboard answers: nothing to compare with (Ray will say it, later)
            return
        image = _image_versions(self.stamp)
        level = os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch")
        parts = 2 if level == "minor" else 3
        problems = []
        if not image.get("ray"):
            problems.append("has no Ray installed")
        elif image["ray"] != cluster["ray"]:
            problems.append(f"has Ray {image['ray']}")
        python = image.get("python")
        if python and python.split(".")[:parts] != cluster["python"].split(".")[:parts]:
            problems.append(f"has Python {image['python']}")
        if not problems:
            return
        raise ClusterMismatch(
            f"{what} runs Ray {cluster['ray']} on Python {cluster['python']}, but the pinned image "
            f"'{self.stamp.image}' {' and '.join(problems)}; Ray needs the same Ray version, and Python equal "
            f"up to the {level} version (RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL), on the driver and every "
            f"worker, so its tasks would fail or misbehave{_pickle_evidence(python, cluster['python'])}. Rebuild the "
            f"image on Ray {cluster['ray']} and Python {cluster['python']} (pip install 'ray[client]=={cluster['ray']}' "
            "on that Python), or pin an image that has them. Nothing was submitted."
        )

    def _active_stamp(self) -> Stamp:
        """The stamp the wrappers merge in (they are installed only while one is active)."""
        if self.stamp is None:
            raise EnvpinError(
                "envpin's Ray adapter was called without a pin (it should have been uninstalled): re-run %use_image."
            )
        return self.stamp

    def _stamped(self, runtime_env: Any, what: str) -> dict[str, Any]:
        return stamp_runtime_env(runtime_env, self._active_stamp(), self.effective_mode, what)


# ---- the wrappers RayAdapter.install puts on Ray's entry points: each gets the adapter and Ray's original ----


def _init_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """``ray.init``: the job-level runtime_env stamped (see ``RayAdapter._init_runtime_env``)."""

    def init(*args, **kwargs):
        kwargs["runtime_env"] = adapter._init_runtime_env(args, kwargs)
        try:
            return original(*args, **kwargs)
        except BaseException:
            adapter._local_in_image = adapter._client_mode = False
            raise

    return init


def _shutdown_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """``ray.shutdown``: a local cluster in the image is over; the next ``ray.init`` decides again."""

    def shutdown(*args, **kwargs):
        adapter._local_in_image = False
        return original(*args, **kwargs)

    return shutdown


def _task_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """``RemoteFunction._remote``: every task's runtime_env stamped, in the form Ray parses and serializes."""

    def _remote(self, args=None, kwargs=None, serialized_runtime_env_info=None, **task_options):
        name = RAY.attr(self, "function_name", "this task")
        stamped = adapter._stamped(task_options.get("runtime_env"), f"Ray task {name}")
        task_options["runtime_env"] = ray_compat.parse_runtime_env(stamped)
        serialized_runtime_env_info = ray_compat.serialized_runtime_env_info(task_options["runtime_env"])
        return original(self, args, kwargs, serialized_runtime_env_info=serialized_runtime_env_info, **task_options)

    return _remote


def _actor_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """``ActorClass._remote``: every actor's runtime_env (its options', else its class's) stamped."""

    def _remote(self, args=None, kwargs=None, **actor_options):
        meta = RAY.attr(self, "actor_metadata", None)
        name = getattr(RAY.attr(meta, "actor_class", None), "__name__", "this actor")
        runtime_env = actor_options.get("runtime_env", RAY.attr(meta, "actor_runtime_env", None))
        stamped = adapter._stamped(runtime_env, f"Ray actor {name}")
        actor_options["runtime_env"] = ray_compat.parse_runtime_env(stamped)
        return original(self, args, kwargs, **actor_options)

    return _remote


def _client_task_options_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """Ray Client's ``set_task_options``: its tasks and actors get ``image_uri`` at their own level."""

    def set_task_options(task, options, field="options"):
        function, actor_kind = ray_compat.client_task_kinds()
        stamps = adapter._client_mode and task.type in (function, actor_kind)
        # Baseline options always (they define the task); per-call options only when they set runtime_env.
        if stamps and (field == "baseline_options" or "runtime_env" in (options or {})):
            options = dict(options or {})
            what = f"Ray {'task' if task.type == function else 'actor'} {task.name}"
            options["runtime_env"] = adapter._stamped(options.get("runtime_env"), what)
        return original(task, options, field)

    return set_task_options


def _submit_job_wrapper(adapter: RayAdapter, original: Callable) -> Callable:
    """``JobSubmissionClient.submit_job``: the cluster preflighted, the job's runtime_env stamped."""

    def submit_job(self, *, entrypoint, runtime_env=None, **kwargs):
        address = RAY.attr(self, "job_client_address", None)
        if address:
            adapter.preflight(
                address, f"the Ray cluster at {address}", dict(RAY.attr(self, "job_client_headers", None) or {})
            )
        stamped = adapter._stamped(runtime_env, f"Ray job '{entrypoint}'")
        return original(self, entrypoint=entrypoint, runtime_env=stamped, **kwargs)

    return submit_job


def _address(args: tuple, kwargs: dict) -> str:
    """The cluster address ``ray.init`` was given (``RAY_ADDRESS`` when none): '' for a local cluster."""
    address = kwargs.get("address", args[0] if args else None) or os.environ.get("RAY_ADDRESS") or ""
    return "" if address in ("local", "auto") else str(address)


def _dashboard_for(address: str) -> str | None:
    """The dashboard of the cluster at ``address``: ``$ENVPIN_RAY_DASHBOARD``, else port 8265 of its host."""
    if os.environ.get(names.RAY_DASHBOARD):
        return os.environ[names.RAY_DASHBOARD]
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return f"http://{host}:8265" if host else None


_cluster_cache: dict[str, tuple[float, dict[str, str] | None]] = {}


def _cluster_versions(dashboard: str, headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``{"ray", "python"}`` Ray recorded for the cluster, from its dashboard; None when it does not answer.

    ``headers``: the submitting client's own (its auth token); else Ray's token, if this process has one.
    """
    import time
    import urllib.error
    import urllib.request

    url = dashboard.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    cached = _cluster_cache.get(url)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    request = urllib.request.Request(
        f"{url}/api/v0/cluster_metadata", headers=headers if headers is not None else ray_compat.auth_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            data = json.load(reply).get("data") or {}
        found = {"ray": str(data["rayVersion"]), "python": str(data["pythonVersion"])}
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        found = None
    _cluster_cache[url] = (time.monotonic(), found)
    return found


def _pickle_evidence(image_python: str | None, cluster_python: str) -> str:
    """What envpin's measured pickle matrix says about the two Pythons, when their minor versions differ."""
    from envpin.compat import policy

    minor = lambda v: ".".join(str(v).split(".")[:2])  # noqa: E731
    if not image_python or minor(image_python) == minor(cluster_python):
        return ""
    # Ray pickles with its own cloudpickle, the same on both sides once Ray matches: only Python differs.
    verdict = policy.judge(
        policy.Side("CPython", minor(image_python), "cloudpickle", "ray"),
        policy.Side("CPython", minor(cluster_python), "cloudpickle", "ray"),
    )
    return f" ({verdict.evidence})" if verdict.broken else ""


def _image_versions(stamp: Stamp) -> dict[str, str | None]:
    """Ray and Python of the pinned image: this process's when the kernel runs in it, else its fingerprint's."""
    import platform

    if state.runs_in_image(stamp.image, stamp.job_image):
        import ray

        return {"ray": ray.__version__, "python": platform.python_version()}
    from envpin.compat import fingerprints

    facts = fingerprints.fingerprint(image=stamp.image)
    return {"ray": facts.get("ray"), "python": facts.get("python_version")}


def _starts_local_cluster(args: tuple, kwargs: dict) -> bool:
    """Whether ``ray.init(*args, **kwargs)`` will start a new cluster here (Ray's own address resolution)."""
    return ray_compat.starts_local_cluster(kwargs.get("address", args[0] if args else None), kwargs.get("_temp_dir"))


def reset() -> None:
    """Forget the clusters' versions asked of their dashboards (``envpin.reset_caches``)."""
    _cluster_cache.clear()
