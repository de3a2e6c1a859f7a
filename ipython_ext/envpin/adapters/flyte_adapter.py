"""Flyte: tasks declared after ``%use_image`` run in the pinned image.

Two places, both flytekit's own:

* the ``container_image`` of every Python task declared from now on
  (``@task``, ``@dynamic``, ``map_task`` bodies, plugin tasks built on
  ``PythonAutoContainerTask``), filled in when the task does not name one,
  plus ``ENVPIN_IMAGE``/``ENVPIN_IMAGE_ID``/``YT_JOB_DOCKER_IMAGE`` in its
  ``environment`` (the task's own values win).  That is what serialization
  (``pyflyte register``/``package``, ``FlyteRemote.register_*``) writes into
  the task template, whatever image configuration the command line gives;
* ``FLYTE_INTERNAL_IMAGE``, the default image flytekit and ``pyflyte`` read
  (``DefaultImages.find_image_for``), for everything serialized without an
  explicit image, ``pyflyte`` started from the notebook included.  Set as
  soon as the session is pinned (an environment variable costs nothing; a
  notebook may run ``!pyflyte register`` without importing flytekit).

A task with its own ``container_image`` (a reference or an ``ImageSpec``)
keeps it, with the ``ImageConflictWarning`` (an error with ``--strict``).
A task declared *before* ``%use_image`` without an image still serializes
with the pin while the session is pinned (through ``FLYTE_INTERNAL_IMAGE``,
unless the command line names another default image, ``pyflyte --image``),
but without the ``ENVPIN_*`` variables: put ``%use_image`` above the task
definitions.  Raw ``ContainerTask(image=...)`` tasks run the
image they name and are not touched.

Flyte parses images as ``name:tag`` or ``name@digest``; a pinned reference
without either is written with ``:latest``, which is what it means to Docker.

When the pinned image already contains the project's code, marked by the
image setting ``ENV ENVPIN_CODE_IN_IMAGE=/path/of/the/code``, fast
registration (``pyflyte register`` uploading a code bundle on top of the
image, its default ``--copy all``) is unnecessary: the status table says so,
and ``pyflyte register --copy none`` is the command to use.
"""

from __future__ import annotations

import os
import sys
import warnings

from envpin.adapters.base import LibraryAdapter
from envpin.images import references
from envpin.internals import FLYTE_DEFAULT_IMAGE_VARIABLE, FLYTEKIT
from envpin.session.stamping import ImageConflictWarning, Stamp

ENV_DEFAULT_IMAGE = FLYTE_DEFAULT_IMAGE_VARIABLE


class FlyteAdapter(LibraryAdapter):
    name = "flyte"
    module = "flytekit"

    def __init__(self) -> None:
        super().__init__()
        self._env_before: str | None = None
        self._env_set: str | None = None

    def describe(self) -> str:
        if self.installed:
            return self.summary()
        return self.summary().replace(
            "container_image of new tasks, FLYTE_INTERNAL_IMAGE",
            "FLYTE_INTERNAL_IMAGE; container_image of new tasks (on import flytekit)",
        )

    def summary(self) -> str:
        text = "flyte: container_image of new tasks, FLYTE_INTERNAL_IMAGE"
        if self.stamp is not None and self.stamp.code_in_image:
            text += (
                f"; the image contains the code ({self.stamp.code_in_image}): fast registration is unnecessary, "
                "register with pyflyte register --copy none"
            )
        return text

    def activate(self, stamp: Stamp) -> None:
        # The default image goes into the environment at once, not on import: `!pyflyte register ...`
        # from a notebook that never imported flytekit must see it too.
        image = references.with_tag(stamp.job_image)
        self._env_before = os.environ.get(ENV_DEFAULT_IMAGE)
        if self._env_before and references.with_tag(self._env_before) != image:
            warnings.warn(
                f"{ENV_DEFAULT_IMAGE} is '{self._env_before}' but this session is pinned to '{stamp.image}'; "
                f"envpin sets it to '{image}' while the pin lasts.",
                ImageConflictWarning,
                stacklevel=2,
            )
        os.environ[ENV_DEFAULT_IMAGE] = self._env_set = image
        super().activate(stamp)

    def deactivate(self) -> None:
        super().deactivate()
        if self._env_set is not None and os.environ.get(ENV_DEFAULT_IMAGE) == self._env_set:
            if self._env_before is None:
                os.environ.pop(ENV_DEFAULT_IMAGE, None)
            else:
                os.environ[ENV_DEFAULT_IMAGE] = self._env_before
        self._env_before = self._env_set = None

    def install(self, flytekit, stamp: Stamp) -> None:
        image = references.with_tag(stamp.job_image)
        # Where plugins pass them by position (name, task_config, task_type, container_image, ..., environment);
        # a parameter that became keyword-only is never among the positional arguments.
        never = sys.maxsize
        at_name, at_image, at_environment = (
            never if at is None else at
            for at in (FLYTEKIT.position("task_init", p) for p in ("name", "container_image", "environment"))
        )

        def make_init(original):
            def __init__(task, *args, **kwargs):
                name = kwargs.get("name") or (args[at_name] if len(args) > at_name else "this task")
                if len(args) > at_image:  # container_image passed positionally
                    positional = list(args)
                    positional[at_image] = chosen = _image_for(args[at_image], stamp, image, name)
                    args = tuple(positional)
                else:
                    kwargs["container_image"] = chosen = _image_for(kwargs.get("container_image"), stamp, image, name)
                if len(args) <= at_environment and chosen == image:  # the variables describe the task's image
                    kwargs["environment"] = {**stamp.env, **(kwargs.get("environment") or {})}
                original(task, *args, **kwargs)

            return __init__

        self.patches.wrap(*FLYTEKIT.site("task_init"), make_init)


def _image_for(named, stamp: Stamp, image: str, task_name: str):
    """The image a task gets: the pin, unless it names its own (kept, with the warning)."""
    if named is None or named == "":
        return image
    if isinstance(named, str):
        if references.with_tag(named) not in (image, references.with_tag(stamp.image)) and named != stamp.image_id:
            stamp.check_explicit(named, f"Flyte task {task_name}")
        return named
    # an ImageSpec (built at registration): never ours
    stamp.check_explicit(f"ImageSpec({getattr(named, 'name', '?')})", f"Flyte task {task_name}")
    return named
