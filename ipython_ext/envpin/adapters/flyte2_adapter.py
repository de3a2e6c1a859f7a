"""Flyte 2 (the ``flyte`` package): task environments created after ``%use_image`` run in the pinned image.

Flyte 2 declares the image per environment, ``flyte.TaskEnvironment(name=...,
image=...)``, whose default ``image="auto"`` is an image Flyte builds to match
the local Python.  Three places, all the SDK's own:

* **the image**: a ``TaskEnvironment`` created after the pin with
  ``image="auto"`` or ``None`` gets the pin (a string reference, which Flyte
  uses as it is) and the ``ENVPIN_*`` variables in its ``env_vars`` (the
  user's own win).  One that names its own image keeps it, with the
  ``ImageConflictWarning`` (an error with ``--strict``); a ``flyte.Image``
  built on the pin (``flyte.Image.from_base(PIN).with_pip_packages(...)``) is
  the user's own image on top of it: kept, without the warning, without the
  variables (it is another image).  Wrapped: ``TaskEnvironment.__post_init__``
  (``clone_with`` goes through it too);
* **the code bundle**: Flyte 2 chooses it per run or deployment
  (``copy_style``: ``loaded_modules``, ``all``, ``none``; a notebook's runs
  default to *interactive mode*, which pickles the task).  When every
  environment a run or deployment needs runs in the pin, and the pin holds the
  code (``ENV ENVPIN_CODE_IN_IMAGE=/path``, checked as for flytekit:
  ``code_in_image``), envpin uses ``copy_style="none"`` without interactive
  mode, with a version made from the image id and the tasks' modules when none
  is given, and says so once.  A mixed one keeps the bundle (Flyte 2 has one
  bundle per run or deployment, which the other environments need).  Wrapped:
  ``_Runner._build_task_spec_from_template`` (``flyte.run``,
  ``flyte.with_runcontext(...).run``, remote and dry-run) and
  ``_deploy.apply`` (``flyte.deploy``);
* **local mode** (``flyte.run`` without a cluster, or ``mode="local"``) runs
  tasks in the notebook's own process, whatever image they declare.  In a
  Containerized Python kernel in the pinned image that *is* the image, and
  the status line says so.  Anywhere else it would run outside the image:
  envpin warns (:class:`LocalRunWarning`) and, with ``%use_image --strict``,
  refuses (:class:`LocalRunOutsideImage`) before the task runs.  Warning by
  default is the documented choice: local mode is how Flyte 2 users try a
  task before they have a cluster, and a host kernel pinned for its jobs
  should keep that.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

from envpin import names
from envpin.adapters import code_in_image
from envpin.adapters.base import LibraryAdapter
from envpin.errors import EnvpinError
from envpin.images import references
from envpin.internals import FLYTE
from envpin.session import state
from envpin.session.stamping import Stamp


class LocalRunWarning(UserWarning):
    """A Flyte 2 task runs in local mode in a kernel that is not in the pinned image."""


class LocalRunOutsideImage(EnvpinError):
    """``%use_image --strict``: a Flyte 2 local run would execute outside the pinned image.

    Flyte 2's local mode (``flyte.run`` without a cluster, ``with_runcontext(mode="local")``) runs the
    task in the notebook's own process, whatever image its environment names.  This kernel is not a
    container of the pinned image, so the task would run with this kernel's Python and libraries.

    Fix: run the notebook in the Containerized Python kernel of the pinned image (there local runs
    are in the image), submit to a cluster (``flyte.init(endpoint=...)``), or pin without ``--strict``
    to run locally with a warning.
    """


class Flyte2Adapter(LibraryAdapter):
    name = "flyte2"
    module = "flyte"

    def __init__(self) -> None:
        super().__init__()
        self.skip_bundle = True  #: False: leave copy_style as the user gave it

    def summary(self) -> str:
        text = "flyte 2: image and env_vars of new TaskEnvironments"
        stamp = self.stamp
        if stamp is not None and stamp.code_in_image and self.skip_bundle:
            text += f"; the image contains the code ({stamp.code_in_image}): copy_style='none' for its runs"
        if stamp is not None:
            if _kernel_in(stamp):
                text += "; local runs are in the image (this kernel)"
            else:
                text += "; local runs would be outside the image (warned" + (
                    ", refused: --strict)" if stamp.strict else ")"
                )
        return text

    def install(self, flyte, stamp: Stamp) -> None:
        adapter = self
        image = references.with_tag(stamp.job_image)

        def make_post_init(original):
            def __post_init__(env):
                _stamp_environment(env, stamp, image)
                original(env)

            return __post_init__

        def make_build(original):
            def _build_task_spec_from_template(runner, obj, *args, **kwargs):
                parent = obj.parent_env() if callable(getattr(obj, "parent_env", None)) else None
                if parent is not None and adapter.skip_bundle:
                    plan = FLYTE.get("plan_deploy")(parent)[0]
                    version = adapter.no_bundle_version(list(plan.envs.values()), _root_dir())
                    if version is not None:
                        FLYTE.assign(runner, "runner_copy_style", "none")
                        FLYTE.assign(runner, "runner_interactive_mode", False)
                        if not FLYTE.attr(runner, "runner_version", None):
                            FLYTE.assign(runner, "runner_version", version)
                return original(runner, obj, *args, **kwargs)

            return _build_task_spec_from_template

        def make_apply(original):
            def apply(deployment_plan, *args, **kwargs):
                if adapter.skip_bundle:
                    version = adapter.no_bundle_version(list(deployment_plan.envs.values()), _root_dir())
                    if version is not None:
                        if args:
                            args = ("none", *args[1:])
                        else:
                            kwargs["copy_style"] = "none"
                        if not deployment_plan.version:
                            deployment_plan.version = version
                return original(deployment_plan, *args, **kwargs)

            return apply

        def make_run_local(original):
            def _run_local(runner, obj, *args, **kwargs):
                adapter.check_local_run(getattr(obj, "name", "this task"))
                return original(runner, obj, *args, **kwargs)

            return _run_local

        self.patches.wrap(*FLYTE.site("task_environment_post_init"), make_post_init)
        self.patches.wrap(*FLYTE.site("runner_build_task_spec"), make_build)
        self.patches.wrap(*FLYTE.site("deploy_apply"), make_apply)
        self.patches.wrap(*FLYTE.site("runner_run_local"), make_run_local)

    # ---- the rules ----------------------------------------------------------------------------------

    def no_bundle_version(self, envs: list, root_dir: Any) -> str | None:
        """A version for a run or deployment that needs no bundle (every env in the pin, which holds the code).

        None: it needs one (an env of another image, a task defined in the notebook itself, no code claim).
        Raises ``CodeNotInImage`` when the image lacks a task's module.
        """
        stamp = self.stamp
        if stamp is None or not stamp.code_in_image or not envs:
            return None
        pin = {references.with_tag(stamp.job_image), references.with_tag(stamp.image), stamp.image}
        pin |= {stamp.image_id} if stamp.image_id else set()
        modules: set[str] = set()
        for env in envs:
            if _reference(env.image) not in pin and env.image not in pin:
                return None
            for task in env.tasks.values():
                module = _task_module(task, root_dir)
                if module in (None, "__main__"):
                    return None
                modules.add(module)
        found = sorted(modules)
        code_in_image.check(stamp.job_image, stamp.image_id, stamp.code_in_image, found)
        print(
            f"[envpin] every Flyte 2 environment here runs in image '{stamp.job_image}', which holds the code "
            f"(ENVPIN_CODE_IN_IMAGE={stamp.code_in_image}; modules {', '.join(found)}): copy_style='none', "
            "no code bundle.",
            flush=True,
        )
        digest = hashlib.sha256(repr((stamp.image_id or stamp.image, found)).encode()).hexdigest()
        return "envpin-" + digest[:20]

    def check_local_run(self, what: str) -> None:
        stamp = self.stamp
        if stamp is None or _kernel_in(stamp):
            return
        text = (
            f"Flyte 2 runs '{what}' in local mode, in this kernel's own process, which is not in the pinned image "
            f"'{stamp.image}': it runs with this kernel's Python and libraries."
        )
        if stamp.strict:
            raise LocalRunOutsideImage(
                text,
                fix="Run the notebook in the Containerized Python kernel of that image, submit to a cluster "
                "(flyte.init(endpoint=...)), or pin without --strict.",
            )
        warnings.warn(
            text + " Use the Containerized Python kernel of that image to run it there.", LocalRunWarning, stacklevel=3
        )


def _kernel_in(stamp: Stamp) -> bool:
    return names.in_container() and state.runs_in_image(stamp.image, stamp.image_id)


def _stamp_environment(env: Any, stamp: Stamp, image: str) -> None:
    """The pin for an environment without an image of its own; the warning for one with another."""
    named = env.image
    what = f"Flyte TaskEnvironment {getattr(env, 'name', '?')}"
    if named is None or named == "auto" or named == "":
        env.image = image
        env.env_vars = {**stamp.env, **(env.env_vars or {})}
    elif isinstance(named, str):
        if references.with_tag(named) in (image, references.with_tag(stamp.image)) or named == stamp.image_id:
            env.env_vars = {**stamp.env, **(env.env_vars or {})}
        else:
            stamp.check_explicit(named, what)
    else:  # a flyte.Image: built by Flyte at deployment, unless it is a base image as it is
        pin = (image, references.with_tag(stamp.image))
        base = getattr(named, "base_image", None)
        if _reference(named) in pin:  # flyte.Image.from_base(PIN): the pin itself
            env.env_vars = {**stamp.env, **(env.env_vars or {})}
        elif not (isinstance(base, str) and references.with_tag(base) in pin):  # not built on the pin either
            stamp.check_explicit(f"flyte.Image({getattr(named, 'name', None) or base or '?'})", what)


def _reference(image: Any) -> str | None:
    """The reference an environment's image runs as: a string's own, a flyte.Image's ``uri`` (tagged)."""
    if isinstance(image, str):
        return references.with_tag(image) if image and image != "auto" else None
    try:
        uri = image.uri  # a base image used as it is: its reference; a built one: name:content-hash
    except Exception:  # noqa: BLE001  # an Image Flyte cannot name yet (no base, no name): not the pin
        return None
    return references.with_tag(uri) if isinstance(uri, str) and uri else None


def _root_dir() -> Any:
    """The root Flyte 2 computes task modules from (``flyte.init(root_dir=...)``, else the working folder)."""
    import pathlib

    try:
        cfg = FLYTE.get("get_init_config")()
        root = getattr(cfg, "root_dir", None)
    except Exception:  # noqa: BLE001  # not initialized: Flyte itself then uses the working folder
        root = None
    return pathlib.Path(root) if root else pathlib.Path.cwd()


def _task_module(task: Any, root_dir: Any) -> str | None:
    """What a Flyte 2 pod imports for ``task`` (``mod M`` of its resolver's loader arguments)."""
    try:
        args = list(FLYTE.get("default_task_resolver")().loader_args(task, root_dir))
    except ValueError:  # a module outside the root and not installed: Flyte refuses it itself, later
        return None
    return args[args.index("mod") + 1] if "mod" in args and args.index("mod") + 1 < len(args) else None
