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

Patterns are matched on the *parsed* reference (``envpin.images.references``), after
alias expansion, never on the text as typed:

* a reference with a tag (no digest) matches a pattern as ``REPO:TAG``; an
  untagged one is also tried as ``REPO:latest``, which is what the engine
  runs (``python:3.11*``, ``registry.example.com/ml/*``);
* a reference with a digest names content, whatever tag is written beside it
  (the engine ignores that tag): it is allowed only by a pattern that names
  digests (``REPO@sha256:...``, or ``REPO@*`` for any digest of REPO) or by a
  pattern that allows *every* tag of its repository (``REPO:*``, or a
  pattern ending in ``*`` that matches REPO, such as ``registry.example.com/ml/*``).
  ``app:3.11*`` does not allow ``app:3.11@sha256:...``: that digest may be
  the content of ``app:evil``.  A bare ``REPO`` pattern means ``REPO:latest``
  only, so it allows no digest either;
* an image id (``sha256:...``, or 12 to 64 hex digits) matches a pattern as
  written.
* text that is no reference matches nothing (when patterns are set).

No patterns (the default): every image is allowed.

Standard library only (the kernel side uses it too).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence

from envpin import names, printable
from envpin.errors import EnvpinError
from envpin.images import references

ENV = names.ALLOWED_IMAGES


class ImageNotAllowed(EnvpinError):
    """The image matches none of the ``allowed_images`` patterns.

    Checked before any pull or container, on every path that would run an image: a kernelspec,
    a pin file, ``%use_image``, ``envpin run``/``launch``, ``envpin.use_image()``, a
    ``ContainerExecutor``, ``envpin.fingerprint(image=...)``.  The message names the image, where
    its name came from and the patterns.

    Fix: use an image that matches, or (if you administer the server and trust the image) add a
    pattern for it to ``allowed_images`` / ``ENVPIN_ALLOWED_IMAGES``.
    """


def patterns_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The patterns of ``$ENVPIN_ALLOWED_IMAGES`` (comma- or space-separated); [] when unset."""
    raw = (environ if environ is not None else os.environ).get(ENV, "")
    return [p for p in raw.replace(",", " ").split() if p]


def candidates(reference: str | references.Reference) -> list[str]:
    """The spellings of a tag reference or id a pattern may match ([] for a digest: see :func:`allowed`)."""
    ref = reference if isinstance(reference, references.Reference) else references.parse(reference)
    if ref.repository is None:
        return [ref.text]
    if ref.digest:
        return []
    if ref.tag:
        return [f"{ref.repository}:{ref.tag}"]
    return [ref.repository, f"{ref.repository}:latest"]


def _allows_every_tag(repository: str, pattern: str) -> bool:
    """Whether ``pattern`` matches ``REPOSITORY:TAG`` for every tag (so it may allow any digest of it too).

    ``REPO:*`` does; so does a pattern ending in ``*`` that matches the
    repository itself, since that ``*`` also takes any ``:TAG``.
    """
    if "@" in pattern:
        return False
    if pattern.endswith(":*") and fnmatch.fnmatchcase(repository, pattern[:-2]):
        return True
    return pattern.endswith("*") and fnmatch.fnmatchcase(repository, pattern)


def _allows_digest(ref: references.Reference, pattern: str) -> bool:
    assert ref.repository is not None and ref.digest is not None
    if "@" in pattern:  # a pattern naming digests: matched on REPO@DIGEST, the tag left out
        return fnmatch.fnmatchcase(f"{ref.repository}@{ref.digest}", pattern)
    return _allows_every_tag(ref.repository, pattern)


def allowed(reference: str | references.Reference, patterns: Sequence[str]) -> bool:
    """Whether ``reference`` matches one of ``patterns`` (see the module's docstring); no patterns: True."""
    if not patterns:
        return True
    try:
        ref = reference if isinstance(reference, references.Reference) else references.parse(reference)
    except references.BadReference:
        return False
    if ref.digest:
        return any(_allows_digest(ref, p) for p in patterns)
    return any(fnmatch.fnmatchcase(c, p) for c in candidates(ref) for p in patterns)


def check(reference: str | references.Reference, patterns: Iterable[str], source: str, name: str | None = None) -> None:
    """Raise ImageNotAllowed unless ``reference`` matches one of ``patterns`` (none: all allowed).

    ``source`` says where the name came from ("the pin file /x/.envpin.json",
    "%use_image", "the kernelspec"); ``name``: the name as written, when an
    alias turned it into ``reference``.
    """
    patterns = list(patterns)
    if allowed(reference, patterns):
        return
    if isinstance(reference, references.Reference):
        reference = reference.text
    digest_hint = ""
    if "@" in reference:
        digest_hint = (
            " A reference with a digest runs that digest whatever tag is written beside it, so it needs a "
            "pattern naming the digest (REPO@sha256:...) or one allowing every tag of the repository (REPO:*)."
        )
    # Names can come from a pin file or a kernel: escaped, on one line, before they reach a log or terminal.
    ref_text, name_text = printable.one_line(reference, 300), printable.one_line(name, 300) if name else None
    shown = f"'{name_text}' ({ref_text})" if name_text and name != reference else f"'{ref_text}'"
    raise ImageNotAllowed(
        f"envpin will not run image {shown}, named by {source}: it matches none of the allowed_images "
        f"patterns ({', '.join(repr(p) for p in patterns)}).{digest_hint} Use an image that matches, or, if you trust "
        "this one, add a pattern for it to allowed_images (c.EnvpinProvisioner.allowed_images, the "
        f"kernelspec's config, or {ENV})."
    )
