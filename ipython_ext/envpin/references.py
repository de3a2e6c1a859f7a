"""Image references, parsed the same way on both sides (standard library only).

One source for "what is the repository of this reference": the server side
(``envpin_provisioner.images``) and the kernel side's host Docker calls
(``envpin.host_docker``) both match an image's ``RepoDigests`` against it.
The registry part may carry a port (``localhost:5000/img``): only a colon in
the *last* path component separates a tag.
"""

from __future__ import annotations


def split(reference: str) -> tuple[str, str]:
    """``(repository, tag or digest)``; an untagged reference means ``latest``.

    >>> split("localhost:5000/team/img")
    ('localhost:5000/team/img', 'latest')
    >>> split("localhost:5000/img:1.2")
    ('localhost:5000/img', '1.2')
    >>> split("python@sha256:abc")
    ('python', 'sha256:abc')
    """
    if "@" in reference:
        repo, digest = reference.split("@", 1)
        return repo, digest
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = reference.rsplit(":", 1)
        return repo, tag
    return reference, "latest"


def repository(reference: str) -> str:
    """The repository part of ``reference`` (no tag, no digest)."""
    return split(reference)[0]
