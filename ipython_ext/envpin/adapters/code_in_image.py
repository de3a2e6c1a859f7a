"""Is an image's claim to hold the project's code true?  Checked where it is cheap, once per image.

An image says it carries the code with ``ENV ENVPIN_CODE_IN_IMAGE=/path``;
the Flyte adapters then register its tasks without a code bundle, so a task
runs whatever version of its module the image has, and a module the image
lacks fails on the cluster, after the upload, as ``ModuleNotFoundError`` in a
pod log.  So before anything is serialized without a bundle, envpin asks the
image itself: does the path exist, and is each task's module found on the
image's own ``sys.path`` (``importlib.util.find_spec``: the module is located,
and its parent packages imported, but the module itself not run)?

Where that is asked:

* the kernel runs in the pinned image (a Containerized Python kernel: its
  ``ENVPIN_IMAGE_ID`` is the pin's id): a child process of the kernel's
  interpreter, started in ``/`` with the image's own ``PYTHONPATH`` (envpin's
  mounted folder removed), so the notebook's folder does not count;
* elsewhere (a kernel on the host): a short-lived container of the image
  (``envpin.host.images.run_python``, about a third of a second);
* where neither works (a container of another image without an engine): it
  cannot be checked; the claim is trusted and :func:`check` says so once.

Answers are cached per image id and module: a registration of fifty tasks
from three modules asks once, and a second registration not at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from envpin import names
from envpin.errors import EnvpinError


class CodeNotInImage(EnvpinError):
    """A task would run from the code in its image, and the image does not have its module.

    The pinned image says it holds the project's code (``ENV ENVPIN_CODE_IN_IMAGE=/path``), so
    envpin registers the tasks that run in it without a code bundle (Flyte's fast registration).
    Before doing so it looked for each task's module in the image, and one is missing (or the
    path itself is): registered that way, the task would fail on the cluster with
    ``ModuleNotFoundError``.  Nothing was packaged or uploaded.

    Fix: rebuild the image with that module under the path (and that path on its ``PYTHONPATH``),
    or give the task another image (``container_image=...``; ``TaskEnvironment(image=...)``),
    or register it with a bundle: ``envpin.adapters.get("flyte").skip_bundle = False``.
    """


#: (image id, module or "" for the path) -> None when found, else why not
_answers: dict[tuple[str, str], str | None] = {}
_lock = threading.Lock()
_unchecked_said: set[str] = set()

#: Run in the image: where the code is, and which modules its own path finds.
_PROBE = """\
import importlib.util, json, os, sys
path, modules = {args}
found = {{}}
for m in modules:
    try:
        found[m] = None if importlib.util.find_spec(m) is not None else "not found"
    except Exception as exc:
        found[m] = type(exc).__name__ + ": " + str(exc)[:200]
print(json.dumps({{"path": os.path.isdir(path), "found": found}}))
"""


def reset() -> None:
    """Forget every answer (``envpin.reset_caches``; a test that rebuilt an image)."""
    with _lock:
        _answers.clear()
        _unchecked_said.clear()


def remember(image_id: str, path: str, modules: dict[str, str | None]) -> None:
    """Record answers known by other means (the unit tests, which have no image to ask)."""
    with _lock:
        _answers[(image_id, "")] = None
        _answers.update({(image_id, m): why for m, why in modules.items()})


def check(image: str, image_id: str | None, path: str, modules: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`CodeNotInImage` unless ``path`` exists in the image and every module is found there."""
    key = image_id or image
    wanted = sorted({m for m in modules if m})
    with _lock:
        todo = [m for m in wanted if (key, m) not in _answers]
        if (key, "") not in _answers:
            todo = wanted  # first look at this image: ask about everything at once
    if todo or (key, "") not in _answers:
        answer = _ask(image, image_id, path, todo)
        if answer is None:
            return
        with _lock:
            _answers[(key, "")] = None if answer["path"] else "missing"
            _answers.update({(key, m): why for m, why in answer["found"].items()})
    with _lock:
        if _answers.get((key, "")) is not None:
            raise CodeNotInImage(
                f"Image '{image}' says its code is in {path} (ENVPIN_CODE_IN_IMAGE), but {path} does not exist "
                "in it: its tasks would be registered without a code bundle and find nothing. Nothing was uploaded.",
                fix="Fix the image's ENVPIN_CODE_IN_IMAGE (or copy the code there), or register with a bundle: "
                "envpin.adapters.get('flyte').skip_bundle = False.",
            )
        for module in wanted:
            why = _answers.get((key, module))
            if why is not None:
                raise CodeNotInImage(
                    f"Module '{module}' is not in image '{image}' ({why} on the image's own path), though the image "
                    f"says it holds the project's code (ENVPIN_CODE_IN_IMAGE={path}): a task from '{module}' "
                    "registered without a code bundle would fail there with ModuleNotFoundError. Nothing was uploaded.",
                    fix=f"Rebuild the image with '{module}' under {path} (on its PYTHONPATH), give that task another "
                    "image, or register it with a bundle: envpin.adapters.get('flyte').skip_bundle = False.",
                )


def _ask(image: str, image_id: str | None, path: str, modules: list[str]) -> dict | None:
    """The probe's answer, from the kernel's own interpreter or a container of the image (None: cannot ask)."""
    code = _PROBE.format(args=repr((path, modules)))
    from envpin.session import state

    if names.in_container() and state.runs_in_image(image, image_id):
        env = dict(os.environ)
        own = [
            p
            for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and p not in (names.CONTAINER_PYTHONPATH, names.FLYTE_HOOK_DIR)
        ]
        env["PYTHONPATH"] = os.pathsep.join(own)
        if not own:
            env.pop("PYTHONPATH")
        try:
            done = subprocess.run(
                [sys.executable, "-c", "import sys\nsys.path.pop(0)  # '': the folder it starts in\n" + code],
                cwd="/",
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            _unchecked(image, f"the check in this kernel failed ({exc})")
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])
    try:
        from envpin.host import images

        client = images.client()
        resolved = images.resolve(client, image_id or image, pull=False, source="envpin's code-in-image check")
        out = images.run_python(client, resolved, code, timeout=60)
    except EnvpinError as exc:
        _unchecked(image, str(exc))
        return None
    return json.loads(out.strip().splitlines()[-1])


def _unchecked(image: str, why: str) -> None:
    """Say once per image that its claim is trusted unchecked (and why)."""
    if image not in _unchecked_said:
        _unchecked_said.add(image)
        print(
            f"[envpin] could not check that image '{image}' holds the modules of the tasks registered without a "
            f"code bundle ({why}); trusting its ENVPIN_CODE_IN_IMAGE.",
            file=sys.stderr,
        )
