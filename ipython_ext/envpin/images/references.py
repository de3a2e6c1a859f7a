"""Image references, parsed the same way on both sides (standard library only).

One source for "what does this image name mean": the server side
(``envpin_provisioner.images.pulling``, ``images.selection``), the kernel side's host
Docker calls (``envpin.host.images``) and ``allowed_images``
(``envpin.images.allowlist``) all work on the :class:`Reference` that
:func:`parse` makes, so the name that is checked is the name that is used.

The registry part may carry a port (``localhost:5000/img``): only a colon in
the *last* path component separates a tag.  When a reference carries both a
tag and a digest (``repo:tag@sha256:...``), the engine ignores the tag and
runs the digest; so does envpin: :attr:`Reference.engine_name` drops the tag,
and ``allowed_images`` never matches on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The grammar of github.com/distribution/reference, reduced to what envpin checks.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<repository>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z"
)
#: A local image id, full or short, with or without ``sha256:``.
IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{12,64}\Z")  # \Z: "$" would take a trailing newline
MAX_LENGTH = 255


class BadReference(ValueError):
    """Text that is not a Docker image reference (nor an image id)."""


@dataclass(frozen=True)
class Reference:
    """One parsed image name: an image id, or a repository with a tag and/or a digest."""

    text: str  #: as written
    repository: str | None  #: None for an image id
    tag: str | None = None  #: as written; None when absent (the engine reads ``latest``) or ignored (a digest)
    digest: str | None = None  #: ``sha256:...`` when the reference names content

    @property
    def is_id(self) -> bool:
        return self.repository is None

    @property
    def engine_name(self) -> str:
        """What envpin hands the engine: the id, ``repo@digest`` (no tag: the engine ignores it), or as written."""
        if self.repository is None:
            return self.text
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}" if self.tag else self.repository

    @property
    def tag_or_latest(self) -> str:
        return self.tag or "latest"


def parse(text: str) -> Reference:
    """The :class:`Reference` ``text`` names; raise :class:`BadReference` when it names none.

    >>> parse("localhost:5000/team/img").engine_name
    'localhost:5000/team/img'
    >>> parse("localhost:5000/team/app:3.11@sha256:" + "a" * 64).engine_name == "localhost:5000/team/app@sha256:" + "a" * 64
    True
    """
    if not isinstance(text, str) or not text or len(text) > MAX_LENGTH:
        raise BadReference(f"{text!r} is not an image reference")
    if IMAGE_ID.match(text):
        return Reference(text=text, repository=None)
    m = _REFERENCE.match(text)
    if not m:
        raise BadReference(f"{text!r} is not an image reference")
    digest = m.group("digest")
    return Reference(text=text, repository=m.group("repository"), tag=None if digest else m.group("tag"), digest=digest)


def split(reference: str) -> tuple[str, str]:
    """``(repository, tag or digest)``; an untagged reference means ``latest``; a digest wins over a tag.

    Lenient (no validation): for matching names the engine reports (``RepoDigests``).

    >>> split("localhost:5000/team/img")
    ('localhost:5000/team/img', 'latest')
    >>> split("localhost:5000/img:1.2")
    ('localhost:5000/img', '1.2')
    >>> split("python@sha256:abc")
    ('python', 'sha256:abc')
    >>> split("python:3.11@sha256:abc")
    ('python', 'sha256:abc')
    """
    if "@" in reference:
        name, digest = reference.split("@", 1)
        return split(name)[0], digest
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = reference.rsplit(":", 1)
        return repo, tag
    return reference, "latest"


def repository(reference: str) -> str:
    """The repository part of ``reference`` (no tag, no digest)."""
    return split(reference)[0]


def with_tag(reference: str) -> str:
    """``reference`` with an explicit tag or digest: ``:latest`` added when it has neither (Flyte wants one).

    >>> with_tag("localhost:5000/img")
    'localhost:5000/img:latest'
    >>> with_tag("python:3.11")
    'python:3.11'
    >>> with_tag("python@sha256:abc")
    'python@sha256:abc'
    """
    if "@" in reference:
        return reference
    repo, tag = split(reference)
    return f"{repo}:{tag}"


def is_valid(text: str) -> bool:
    try:
        parse(text)
    except BadReference:
        return False
    return True
