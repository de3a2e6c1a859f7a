"""Resolve an image reference to an immutable id, pulling it when policy allows.

A tag is a moving name; pickles only stay loadable while the Python inside the
image stays the same, so envpin starts containers from the image *id* it
resolved, and tells the kernel both the reference the user wrote
(``ENVPIN_IMAGE``) and what it meant at start time (``ENVPIN_IMAGE_ID``: the
``repo@sha256:`` digest when the image came from a registry, otherwise the
local ``sha256:`` id).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors

from envpin import printable, references

from .errors import ImageUnavailable, InvalidImageReference

PULL_POLICIES = ("if-missing", "always", "never")

# The grammar of github.com/distribution/reference, reduced to what we check.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_IMAGE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{12,64}$")


@dataclass(frozen=True)
class ResolvedImage:
    """What a reference meant when the kernel started."""

    reference: str  #: as the user wrote it
    id: str  #: local image id, ``sha256:...``: what the container is created from
    digest: str | None  #: ``repo@sha256:...`` when the image has a registry digest
    env: tuple[str, ...] = ()  #: the image's own ``ENV`` entries (``KEY=VALUE``)

    @property
    def immutable(self) -> str:
        """The value of ``ENVPIN_IMAGE_ID``: the digest if known, else the id."""
        return self.digest or self.id


def check_reference(reference: str) -> None:
    """Raise :class:`InvalidImageReference` unless ``reference`` is a valid Docker reference."""
    if not isinstance(reference, str) or not reference.strip():
        raise InvalidImageReference(
            "No image is configured for this kernel. Set one in the kernelspec "
            "(envpin kernelspec install --image IMAGE), with c.EnvpinProvisioner.image in a Jupyter "
            "config file, or with the ENVPIN_IMAGE environment variable."
        )
    if _IMAGE_ID.match(reference):
        return
    if not _REFERENCE.match(reference) or len(reference) > 255:
        hint = ""
        if reference != reference.lower() and _REFERENCE.match(reference.lower()):
            hint = f" Repository names must be lowercase: did you mean '{reference.lower()}'?"
        elif " " in reference:
            hint = " It contains a space."
        raise InvalidImageReference(
            f"'{printable.one_line(reference, 300)}' is not a valid Docker image reference.{hint} "
            "A reference looks like NAME[:TAG] or NAME@sha256:DIGEST, e.g. python:3.11-slim or "
            "registry.example.com/team/image:1.2; fix the image setting of this kernel."
        )


def _split(reference: str) -> tuple[str, str | None]:
    """``(repository, tag-or-digest)`` for the pull API (``envpin.references``: one parser for both sides)."""
    return references.split(reference)


def _resolved(reference: str, image: docker.models.images.Image) -> ResolvedImage:
    repo = _split(reference)[0]
    digests = image.attrs.get("RepoDigests") or []
    digest = next((d for d in digests if d.split("@", 1)[0] == repo), None)
    if digest is None and digests and "@" in reference:
        digest = digests[0]
    env = tuple((image.attrs.get("Config") or {}).get("Env") or ())
    return ResolvedImage(reference=reference, id=image.id, digest=digest, env=env)


def pull(
    client: docker.DockerClient,
    reference: str,
    log: logging.Logger | logging.LoggerAdapter,
    progress: Callable[[str, float | None], None] | None = None,
    interval: float = 2.0,
    present: bool = False,
) -> None:
    """Pull ``reference``, reporting progress to ``log`` every ``interval`` seconds.

    The pull has no timeout of its own: a large image on a slow link takes what
    it takes, and the kernel's launch timeout only starts once the image is here.
    """
    repo, tag = _split(reference)
    log.info("envpin: pulling image %s ...", reference)
    layers: dict[str, tuple[int, int]] = {}
    last = last_told = 0.0
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(event["error"])
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                layers[event["id"]] = (detail.get("current", 0), detail["total"])
            now = time.monotonic()
            if now - last_told >= 0.3 or now - last >= interval:
                done = sum(c for c, _ in layers.values())
                total = sum(t for _, t in layers.values())
                msg = f"envpin: pulling {reference}: {len(layers)} layers, {done / 2**20:.0f}/{total / 2**20:.0f} MiB"
                if now - last >= interval:  # the server log hears less often than a watching person
                    last = now
                    log.info(msg)
                if progress and layers:
                    last_told = now
                    progress(msg, done / total if total else None)
    except docker.errors.APIError as exc:
        reason = getattr(exc, "explanation", None) or str(exc)
        if present:
            raise ImageUnavailable(
                f"Image '{reference}' could not be pulled (pull policy 'always' or --pull): {reason}. "
                "The local copy was not used. Check the registry and your login (docker login), or use "
                "pull_policy='if-missing' (without --pull) to run the local copy."
            ) from exc
        raise ImageUnavailable(
            f"Image '{reference}' is not on the Docker engine and could not be pulled: {reason}. "
            "Check the name and tag, log in to its registry (docker login), or build/load the image "
            "locally (docker build / docker load) and start the kernel again."
        ) from exc
    log.info("envpin: pulled %s", reference)


def resolve(
    client: docker.DockerClient,
    reference: str,
    pull_policy: str,
    log: logging.Logger | logging.LoggerAdapter,
    progress: Callable[[str, float | None], None] | None = None,
) -> ResolvedImage:
    """Resolve ``reference`` on the engine, pulling it as ``pull_policy`` says.

    Blocking: call from a worker thread.
    """
    check_reference(reference)
    if pull_policy == "always" and not _IMAGE_ID.match(reference):
        try:
            client.images.get(reference)
            present = True
        except docker.errors.DockerException:
            present = False
        pull(client, reference, log, progress, present=present)
    try:
        return _resolved(reference, client.images.get(reference))
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:  # e.g. "invalid reference format" from the engine
        raise InvalidImageReference(
            f"The Docker engine rejects the image reference '{reference}': {exc.explanation}. "
            "Fix the image setting of this kernel."
        ) from exc
    if pull_policy == "never" or _IMAGE_ID.match(reference):
        raise ImageUnavailable(
            f"Image '{reference}' is not present on the Docker engine and the pull policy is "
            f"'{pull_policy}', so envpin will not pull it. Build or load it locally "
            "(docker build -t / docker load), or allow pulling with pull_policy='if-missing'."
        )
    pull(client, reference, log, progress)
    try:
        return _resolved(reference, client.images.get(reference))
    except docker.errors.ImageNotFound as exc:
        raise ImageUnavailable(f"Image '{reference}' was pulled but the engine cannot find it.") from exc


_curve_support: dict[str, bool] = {}


def supports_curve(client: docker.DockerClient, image: ResolvedImage, python: str = "python3") -> bool:
    """Whether the image's ipykernel reads CurveZMQ keys from its connection file (cached by image id).

    Asked of the image itself, in a short-lived container without network, because the image's
    ipykernel, not the server's, decides; an image that cannot answer counts as "no".
    """
    if image.id not in _curve_support:
        code = "import ipykernel.kernelapp as k; print(hasattr(k.IPKernelApp, 'curve_secretkey'))"
        try:
            out = client.containers.run(
                image.id, [python, "-c", code], entrypoint=[], network_mode="none", remove=True, stderr=False
            )
            _curve_support[image.id] = out.decode().strip().endswith("True")
        except docker.errors.DockerException:
            _curve_support[image.id] = False
    return _curve_support[image.id]
