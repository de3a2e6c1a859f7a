"""``allowed_images``: which images envpin may run at all, whoever names them.

An image name reaches envpin from many places, and not all of them are the
user's own choice: a ``.envpin.json`` that came with a cloned repository, a
kernelspec someone shared, ``%use_image`` typed by code in a notebook the
user did not write.  A site (or a careful user) lists the images it trusts as
fnmatch patterns; every entry point then checks the name *before* any pull or
container, and refuses with one paragraph naming the image, where the name
came from and the patterns:

* the provisioner (kernelspec image, pin file, ``%use_image``): its traitlet
  ``allowed_images`` (kernelspec config > Jupyter config > the variable below);
* ``envpin run``, ``envpin launch``, ``envpin.use_image()``,
  ``ContainerExecutor`` in container mode and ``fingerprint(image=...)``:
  the environment variable ``ENVPIN_ALLOWED_IMAGES`` (comma-separated).

Patterns match the reference after alias expansion (``python:3.11``,
``registry.example.com/ml/*``); a reference without a tag or digest is also
tried as ``NAME:latest``, which is what the engine runs.  No patterns (the
default): every image is allowed.

Standard library only (the kernel side uses it too).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence

from .errors import EnvpinError

ENV = "ENVPIN_ALLOWED_IMAGES"


class ImageNotAllowed(EnvpinError):
    """The image matches none of the ``allowed_images`` patterns."""


def patterns_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The patterns of ``$ENVPIN_ALLOWED_IMAGES`` (comma- or space-separated); [] when unset."""
    raw = (environ if environ is not None else os.environ).get(ENV, "")
    return [p for p in raw.replace(",", " ").split() if p]


def _has_tag_or_digest(reference: str) -> bool:
    if "@" in reference:
        return True
    last = reference.rsplit("/", 1)[-1]
    return ":" in last


def candidates(reference: str) -> list[str]:
    """The spellings of ``reference`` a pattern may match."""
    out = [reference]
    if not _has_tag_or_digest(reference):
        out.append(f"{reference}:latest")
    return out


def allowed(reference: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return True
    return any(fnmatch.fnmatchcase(c, p) for c in candidates(reference) for p in patterns)


def check(reference: str, patterns: Iterable[str], source: str, name: str | None = None) -> None:
    """Raise ImageNotAllowed unless ``reference`` matches one of ``patterns`` (none: all allowed).

    ``source`` says where the name came from ("the pin file /x/.envpin.json",
    "%use_image", "the kernelspec"); ``name``: the name as written, when an
    alias turned it into ``reference``.
    """
    patterns = list(patterns)
    if allowed(reference, patterns):
        return
    shown = f"'{name}' ({reference})" if name and name != reference else f"'{reference}'"
    raise ImageNotAllowed(
        f"envpin will not run image {shown}, named by {source}: it matches none of the allowed_images "
        f"patterns ({', '.join(repr(p) for p in patterns)}). Use an image that matches, or, if you trust "
        "this one, add a pattern for it to allowed_images (c.EnvpinProvisioner.allowed_images, the "
        f"kernelspec's config, or {ENV})."
    )
