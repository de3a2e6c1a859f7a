"""flytekit registration without a code bundle for the tasks whose image already holds the code.

Flyte's *fast registration* (``pyflyte register``'s default ``--copy all``,
``pyflyte package --copy``, ``FlyteRemote.register_script``) tars the
project's files, uploads them, and wraps every Python task's container
arguments in ``pyflyte-fast-execute --additional-distribution URL --dest-dir
DIR -- pyflyte-execute ...``, so the pod downloads the code before running.
For an image that already holds the code, marked ``ENV
ENVPIN_CODE_IN_IMAGE=/path``, the bundle is at best wasted and at worst
shadows the image's code with the notebook folder's copy.  This is Flyte's own
ImageSpec proposal (``source_root``/``copy``), done for the pinned image:

* a task **holds its code in the image** when its image is the session's pin,
  the pin says ``ENVPIN_CODE_IN_IMAGE``, and the task's module (what
  ``pyflyte-execute`` imports: ``task-module M``) is not the notebook's own
  ``__main__`` (cells are never in an image: those keep their bundle or
  pickle).  Such a task is serialized without the wrapper (plain
  ``pyflyte-execute``, importing the module from the image's path), through
  flytekit's one serialization function, ``translator.get_serializable_task``,
  which every path reaches (``pyflyte register``/``package``, ``FlyteRemote``,
  ``serialize_and_package``, ``@dynamic`` sub-tasks);
* when **every** task of a registration holds its code, nothing is scanned or
  uploaded, whatever ``--copy`` says: ``FlyteRemote.fast_package`` (what
  ``pyflyte register`` and ``register_script`` call) returns a version hash
  of the image id and the tasks' modules instead of tarring, and
  ``repo.package`` (``pyflyte package``, ``serialize_and_package``) packs no
  archive; the output says so once;
* a **mixed** registration keeps the bundle for the others (tasks with their
  own image), as before;
* a raw ``ContainerTask`` whose image lacks the code, registered with a
  bundle (``--copy auto/all``), gets a :class:`BundleWarning`: its container
  cannot fetch a bundle, so its image must have what it runs;
* before any of that, the image's claim is checked (``code_in_image.check``:
  the path exists, each module is found there; once per image id) and a false
  claim is refused with :class:`~envpin.adapters.code_in_image.CodeNotInImage`,
  before anything is packaged or uploaded.

``pyflyte`` started from the notebook (``!pyflyte register ...``) is another
process: the Flyte adapter puts a flytekit plugin on its path
(``envpin/adapters/flyte_hook``, loaded by flytekit's own ``flytekit.plugins``
entry points at ``import flytekit``), which installs this same
:class:`Registration` there from ``ENVPIN_FLYTE_STAMP``.

Not covered: ``FlyteRemote`` in interactive mode (its default in Jupyter)
still uploads the task's pickle; a task from the image is serialized without
the wrapper all the same and runs from the image's module.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import inspect
import json
import warnings
from typing import Any

from envpin import names
from envpin.adapters import code_in_image
from envpin.adapters._patching import Patches
from envpin.images import references
from envpin.internals import FLYTEKIT
from envpin.session.stamping import Stamp

FAST_EXECUTE = "pyflyte-fast-execute"


class BundleWarning(UserWarning):
    """A raw ``ContainerTask`` is registered with a code bundle its image cannot fetch.

    Fast registration (``--copy auto``/``--copy all``) ships the project's files to tasks that run
    ``pyflyte-fast-execute``; a ``ContainerTask`` runs its own command in its own image and never
    downloads the bundle.  Its image must already contain what it runs.

    Fix: build the code into that image (and mark it ``ENV ENVPIN_CODE_IN_IMAGE=/path``), or
    ignore the warning if the command needs none of the project's files.
    """


#: The tasks of the registration under way (``register_script``): ``fast_package`` judges them, not every task loaded.
_scope: contextvars.ContextVar[list | None] = contextvars.ContextVar("envpin_flyte_scope", default=None)


class Registration:
    """The registration rules for one pin, installed into flytekit (the kernel's, or a ``pyflyte`` process's)."""

    def __init__(self, stamp: Stamp) -> None:
        self.stamp = stamp
        self.skip_bundle = True  #: False: register every task with a bundle, as flytekit does (the escape hatch)
        self.patches = Patches()
        self._warned: set[str] = set()

    # ---- the rule ------------------------------------------------------------------------------------

    def is_pin(self, image: Any) -> bool:
        if not isinstance(image, str) or not image:
            return False
        s = self.stamp
        return image in {references.with_tag(s.job_image), references.with_tag(s.image), s.image, s.image_id or s.image}

    def module_in_image(self, task: Any, settings: Any) -> str | None:
        """The module a task runs from the image's code, or None when it needs a bundle (or is not a Python task)."""
        from flytekit.core.python_auto_container import PythonAutoContainerTask

        if not (self.stamp.code_in_image and self.skip_bundle):
            return None
        inner = task if isinstance(task, PythonAutoContainerTask) else getattr(task, "python_function_task", None)
        if not isinstance(inner, PythonAutoContainerTask):
            return None
        named = inner.container_image
        if named is not None and not isinstance(named, str):  # an ImageSpec: built at registration, never the pin
            return None
        if not self.is_pin(inner.get_image(settings)):
            return None
        module = _task_module(inner, settings)
        return None if module in (None, "__main__") else module

    @staticmethod
    def uses_bundle(task: Any) -> bool:
        """Whether flytekit would wrap this task for fast registration (Python tasks, map tasks)."""
        from flytekit.core.python_auto_container import PythonAutoContainerTask

        return isinstance(task, PythonAutoContainerTask) or isinstance(
            getattr(task, "python_function_task", None), PythonAutoContainerTask
        )

    def all_in_image(self, tasks: list, settings: Any) -> list[str] | None:
        """The modules, when every task needing a bundle holds its code in the image (checked); else None."""
        needing = [t for t in tasks if self.uses_bundle(t)]
        if not needing or not self.stamp.code_in_image or not self.skip_bundle:
            return None
        modules = [self.module_in_image(t, settings) for t in needing]
        claimed = sorted({m for m in modules if m})
        if claimed:  # a mixed registration too: a false claim is refused before the others' bundle is uploaded
            self.check(claimed)
        return None if any(m is None for m in modules) else claimed

    def check(self, modules: list[str]) -> None:
        s = self.stamp
        code_in_image.check(s.job_image, s.image_id, s.code_in_image or "", modules)

    def say_no_bundle(self, modules: list[str]) -> None:
        print(
            f"[envpin] every task here runs from the code in image '{self.stamp.job_image}' "
            f"(ENVPIN_CODE_IN_IMAGE={self.stamp.code_in_image}; modules {', '.join(modules)}): "
            "no files scanned or uploaded, whatever --copy says.",
            flush=True,
        )

    # ---- flytekit's functions, wrapped ------------------------------------------------------------------

    def install(self) -> None:
        registration = self

        def make_serialize(original):
            def get_serializable_task(entity_mapping, settings, entity, *rest, **kwargs):
                if settings.should_fast_serialize():
                    module = registration.module_in_image(entity, settings)
                    if module is not None:
                        registration.check([module])
                        settings = dataclasses.replace(settings, fast_serialization_settings=None)
                    else:
                        registration._warn_container_task(entity, settings)
                return original(entity_mapping, settings, entity, *rest, **kwargs)

            return get_serializable_task

        def make_package(original):
            signature = inspect.signature(original)

            def package(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)
                # flytekit >= 1.14 passes fast_options (copy_style NO_COPY: no archive); 1.13 a bool, fast.
                options = bound.arguments.get("fast_options")
                archive = bound.arguments.get("fast", False) or (
                    options is not None and getattr(options, "copy_style", None) != _no_copy()
                )
                if archive and registration.stamp.code_in_image:
                    specs = bound.arguments["serializable_entities"]
                    if not any(_task_spec_uses_bundle(e) for e in specs):
                        modules = sorted({m for e in specs for m in _task_spec_modules(e)})
                        registration.say_no_bundle(modules)
                        bound.arguments.pop("fast", None)
                        bound.arguments.pop("fast_options", None)
                return original(*bound.args, **bound.kwargs)

            return package

        def make_fast_package(original):
            def fast_package(remote, root, *args, **kwargs):
                from flytekit.configuration import ImageConfig, SerializationSettings

                settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
                tasks = _scope.get()
                if tasks is None:  # pyflyte register: what it loaded is the registration
                    tasks = list(FLYTEKIT.get("flyte_entities").entities)
                modules = registration.all_in_image(tasks, settings)
                if modules is None:
                    return original(remote, root, *args, **kwargs)
                registration.say_no_bundle(modules)
                digest = hashlib.md5(repr((registration.stamp.image_id, modules)).encode(), usedforsecurity=False)
                return digest.digest(), ""

            return fast_package

        def make_register_script(original):
            signature = inspect.signature(original)

            def register_script(*args, **kwargs):
                from flytekit.configuration import ImageConfig, SerializationSettings

                bound = signature.bind(*args, **kwargs)
                tasks = _tasks_of(bound.arguments["entity"])
                settings = SerializationSettings(
                    image_config=bound.arguments.get("image_config") or ImageConfig.auto_default_image()
                )
                if registration.all_in_image(tasks, settings) is None:
                    return original(*bound.args, **bound.kwargs)
                # Through fast_package (above), which uploads nothing, not script mode's archive of the modules:
                # copy_all (every release so far; deprecated for fast_package_options' copy_style from 1.14).
                if "copy_all" in signature.parameters:
                    bound.arguments["copy_all"] = True
                else:
                    from flytekit.constants import CopyFileDetection
                    from flytekit.tools.fast_registration import FastPackageOptions

                    bound.arguments["fast_package_options"] = FastPackageOptions([], copy_style=CopyFileDetection.ALL)
                token = _scope.set(tasks)
                try:
                    return original(*bound.args, **bound.kwargs)
                finally:
                    _scope.reset(token)

            return register_script

        self.patches.wrap(*FLYTEKIT.site("get_serializable_task"), make_serialize)
        self.patches.wrap(*FLYTEKIT.site("package"), make_package)
        self.patches.wrap(*FLYTEKIT.site("remote_fast_package"), make_fast_package)
        self.patches.wrap(*FLYTEKIT.site("register_script"), make_register_script)

    def uninstall(self) -> None:
        self.patches.restore()

    def _warn_container_task(self, entity: Any, settings: Any) -> None:
        from flytekit import ContainerTask

        if not isinstance(entity, ContainerTask) or entity.name in self._warned:
            return
        container = entity.get_container(settings)
        image = getattr(container, "image", None)
        if self.is_pin(image) and self.stamp.code_in_image:
            return
        self._warned.add(entity.name)
        warnings.warn(
            f"ContainerTask '{entity.name}' runs image '{image}', which cannot fetch a code bundle: registering "
            "with --copy auto/all ships the project's files to Python tasks only, so this task's image must "
            "already contain what its command runs.",
            BundleWarning,
            stacklevel=2,
        )


def _no_copy() -> Any:
    """flytekit's "copy nothing" (``CopyFileDetection.NO_COPY``; None before 1.14, which had no such choice)."""
    try:
        from flytekit.constants import CopyFileDetection
    except ImportError:
        return None
    return CopyFileDetection.NO_COPY


def _task_module(task: Any, settings: Any) -> str | None:
    """What ``pyflyte-execute`` imports for ``task``: ``task-module M`` of its resolver's loader arguments."""
    try:
        args = list(task.task_resolver.loader_args(settings, task))
    except (AttributeError, TypeError, ValueError):
        args = []
    if "task-module" in args and args.index("task-module") + 1 < len(args):
        return args[args.index("task-module") + 1]
    return getattr(task, "instantiated_in", None) or None


def _container_args(spec: Any) -> list[str]:
    template = getattr(spec, "template", None)
    container = getattr(template, "container", None)
    args = list(getattr(container, "args", None) or [])
    pod = getattr(template, "k8s_pod", None)
    if pod is not None:
        args.append(repr(getattr(pod, "pod_spec", "")))
    return args


def _task_spec_uses_bundle(spec: Any) -> bool:
    return any(FAST_EXECUTE in a for a in _container_args(spec))


def _task_spec_modules(spec: Any) -> list[str]:
    args = _container_args(spec)
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "task-module"]


def _tasks_of(entity: Any, seen: set[int] | None = None) -> list:
    """Every task a workflow, launch plan or task runs (sub-workflows and launch plans walked)."""
    seen = set() if seen is None else seen
    if id(entity) in seen:
        return []
    seen.add(id(entity))
    inner = getattr(entity, "workflow", None)  # a launch plan
    if inner is not None and not hasattr(entity, "nodes"):
        return _tasks_of(inner, seen)
    nodes = getattr(entity, "nodes", None)
    if nodes is None:
        return [entity]
    out = []
    for node in nodes:
        child = getattr(node, "flyte_entity", None)
        if child is not None:
            out.extend(_tasks_of(child, seen))
    return out


_from_environment: Registration | None = None


def reset() -> None:
    """Take out the rules installed from ``ENVPIN_FLYTE_STAMP`` (``envpin.reset_caches``)."""
    global _from_environment
    if _from_environment is not None:
        _from_environment.uninstall()
        _from_environment = None


def install_from_environment() -> Registration | None:
    """Install the rules of the pin in ``ENVPIN_FLYTE_STAMP`` into this process's flytekit (the plugin hook)."""
    import os

    global _from_environment
    value = os.environ.get(names.FLYTE_STAMP)
    if not value or _from_environment is not None:
        return _from_environment
    registration = Registration(stamp_from_environment(value))
    registration.skip_bundle = json.loads(value).get("skip_bundle", True)
    registration.install()
    _from_environment = registration
    return registration


def stamp_from_environment(value: str) -> Stamp:
    """The pin a ``pyflyte`` started from a pinned notebook registers with (``ENVPIN_FLYTE_STAMP``, JSON)."""
    data = json.loads(value)
    return Stamp(
        image=data["image"],
        image_id=data.get("image_id"),
        code_in_image=data.get("code_in_image"),
        by_digest=bool(data.get("by_digest")),
        strict=bool(data.get("strict")),
    )


def stamp_to_environment(stamp: Stamp, skip_bundle: bool = True) -> str:
    """``ENVPIN_FLYTE_STAMP``'s value: what :func:`stamp_from_environment` reads back."""
    return json.dumps(
        {
            "image": stamp.image,
            "image_id": stamp.image_id,
            "code_in_image": stamp.code_in_image,
            "by_digest": stamp.by_digest,
            "strict": stamp.strict,
            "skip_bundle": skip_bundle,
        }
    )
