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

import json
import os
import shutil
import sys
from typing import Any

from ..errors import EnvpinError
from ..hooks import Stamp
from . import _imports
from .base import LibraryAdapter

MODES = ("image_uri", "env_vars")
#: runtime_env fields that install things on the worker: they rebuild the environment the image pins.
INSTALLING_FIELDS = ("pip", "uv", "conda", "py_executable")
_JOB_SDK = "ray.dashboard.modules.job.sdk"


class RuntimeEnvConflict(EnvpinError):
    """A Ray ``runtime_env`` asks for fields Ray cannot combine with the pinned ``image_uri``."""


def default_mode() -> str:
    mode = os.environ.get("ENVPIN_RAY_MODE", "image_uri").strip() or "image_uri"
    if mode not in MODES:
        raise EnvpinError(
            f"ENVPIN_RAY_MODE is '{mode}', which envpin does not know. Set it to 'image_uri' (Ray starts workers in "
            "the pinned image) or 'env_vars' (the cluster's nodes already run it), or unset it."
        )
    return mode


def _compatible_fields() -> set[str]:
    try:  # Ray's own list, so a future Ray that allows more is followed
        from ray._private.runtime_env.default_impl import get_image_uri_plugin_cls

        return set(get_image_uri_plugin_cls().get_compatible_keys())
    except Exception:
        return {"image_uri", "config", "env_vars"}


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
    extra = sorted(k for k in set(env) - _compatible_fields() if not k.startswith("_"))  # "_ray_commit": Ray's own
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

    @property
    def effective_mode(self) -> str:
        if self._local_in_image:
            return "env_vars"
        return self.mode or default_mode()

    def summary(self) -> str:
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
        from ray import actor, remote_function

        adapter = self

        def make_init(original):
            def init(*args, **kwargs):
                adapter._local_in_image = False
                if (adapter.mode or default_mode()) == "image_uri" and _starts_local_cluster(args, kwargs):
                    adapter._local_in_image = adapter._check_local_cluster()
                kwargs["runtime_env"] = adapter._stamped(kwargs.get("runtime_env"), "ray.init")
                try:
                    return original(*args, **kwargs)
                except BaseException:
                    adapter._local_in_image = False
                    raise

            return init

        def make_shutdown(original):
            def shutdown(*args, **kwargs):
                adapter._local_in_image = False
                return original(*args, **kwargs)

            return shutdown

        def make_remote_function(original):
            def _remote(self, args=None, kwargs=None, serialized_runtime_env_info=None, **task_options):
                name = getattr(self, "_function_name", "this task")
                stamped = adapter._stamped(task_options.get("runtime_env"), f"Ray task {name}")
                task_options["runtime_env"] = _parsed(stamped)
                serialized_runtime_env_info = _serialized(task_options["runtime_env"])
                return original(self, args, kwargs, serialized_runtime_env_info=serialized_runtime_env_info, **task_options)

            return _remote

        def make_actor(original):
            def _remote(self, args=None, kwargs=None, **actor_options):
                meta = getattr(self, "__ray_metadata__", None)
                name = getattr(getattr(meta, "modified_class", None), "__name__", "this actor")
                runtime_env = actor_options.get("runtime_env", getattr(meta, "runtime_env", None))
                actor_options["runtime_env"] = _parsed(adapter._stamped(runtime_env, f"Ray actor {name}"))
                return original(self, args, kwargs, **actor_options)

            return _remote

        self.patches.wrap(ray, "init", make_init)
        self.patches.wrap(ray, "shutdown", make_shutdown)
        self.patches.wrap(remote_function.RemoteFunction, "_remote", make_remote_function)
        self.patches.wrap(actor.ActorClass, "_remote", make_actor)
        _imports.when_imported(_JOB_SDK, self._install_job_client)

    def _install_job_client(self, sdk) -> None:
        if self.stamp is None:
            return
        adapter = self

        def make_submit(original):
            def submit_job(self, *, entrypoint, runtime_env=None, **kwargs):
                stamped = adapter._stamped(runtime_env, f"Ray job '{entrypoint}'")
                return original(self, entrypoint=entrypoint, runtime_env=stamped, **kwargs)

            return submit_job

        self.patches.wrap(sdk.JobSubmissionClient, "submit_job", make_submit)

    def uninstall(self) -> None:
        _imports.cancel(_JOB_SDK, self._install_job_client)
        self._local_in_image = False

    def _check_local_cluster(self) -> bool:
        """``ray.init`` is about to start a cluster on this machine: True when its workers run the pin already."""
        assert self.stamp is not None
        if os.environ.get("ENVPIN_IMAGE") == self.stamp.image:
            print(
                f"envpin: this local Ray cluster runs its workers in this kernel's container, which is "
                f"{self.stamp.image}: stamping env_vars only (image_uri is for remote clusters).",
                file=sys.stderr,
                flush=True,
            )
            return True
        if shutil.which("podman") is None:
            raise RuntimeEnvConflict(
                f"ray.init() is starting a local Ray cluster, whose workers run on this machine, and this kernel "
                f"does not run in '{self.stamp.image}': in image_uri mode Ray would start every worker in that "
                "image with podman, which is not installed here, so every task would fail. Run the notebook in "
                "the image (the Containerized Python kernel; its local cluster then runs there), or re-pin with "
                f"%use_image {self.stamp.image} --ray-mode env_vars, or join a cluster: ray.init(address=...)."
            )
        return False

    def _stamped(self, runtime_env: Any, what: str) -> dict[str, Any]:
        assert self.stamp is not None
        return stamp_runtime_env(runtime_env, self.stamp, self.effective_mode, what)


def _starts_local_cluster(args: tuple, kwargs: dict) -> bool:
    """Whether ``ray.init(*args, **kwargs)`` will start a new cluster here (Ray's own address resolution)."""
    address = kwargs.get("address", args[0] if args else None)
    if isinstance(address, str) and address.startswith("ray://"):
        return False
    try:
        from ray._private import services

        return services.canonicalize_bootstrap_address(address, kwargs.get("_temp_dir")) is None
    except Exception:
        return False


def _parsed(runtime_env: dict[str, Any]):
    from ray._private.utils import parse_runtime_env_for_task_or_actor

    return parse_runtime_env_for_task_or_actor(runtime_env)


_serialized_cache: dict[str, str] = {}


def _serialized(runtime_env) -> str:
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
