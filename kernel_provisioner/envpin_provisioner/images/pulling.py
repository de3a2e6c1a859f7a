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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from envpin import printable
from envpin.host import docker_client, images
from envpin.host.images import ResolvedImage
from envpin.images import references
from envpin.internals import DOCKER
from envpin_provisioner import engine
from envpin_provisioner.errors import EnvpinError, ImageUnavailable, InvalidImageReference


class PullTooLarge(ImageUnavailable):
    """A pull a kernel caused was cancelled: its layers passed the kernel's byte allowance.

    Fix: pull the image on the engine yourself (``docker pull IMAGE``; a present image needs no
    pull), or raise ``max_pull_bytes`` in the server's configuration.
    """


PULL_POLICIES = ("if-missing", "always", "never")

if TYPE_CHECKING:
    from envpin_provisioner.images.pull_budget import PullRecord


#: What to do about a bad image name, said where the name was written (``check_reference``'s ``where``).
_FIX_THE_NAME = {
    "kernelspec": "Fix the image setting of this kernel (envpin kernelspec list shows its kernel.json).",
    "use_image": "Run %use_image again with the image's name as Docker spells it.",
    "install": "Give --image the image's name as Docker spells it.",
    "pin": "Fix that entry of the pin file, or remove it to start in the kernel's own image.",
}


def check_reference(reference: str, where: str = "kernelspec") -> references.Reference:
    """The parsed ``reference``; raise :class:`InvalidImageReference` unless it is a valid Docker reference.

    ``where`` the name was written ("kernelspec", "use_image", "install", "pin"): what the fix says.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise InvalidImageReference(
            "No image is configured for this kernel.",
            fix="Set one in the kernelspec (envpin kernelspec install --image IMAGE), with c.EnvpinProvisioner.image "
            "in a Jupyter config file, or with the ENVPIN_IMAGE environment variable.",
        )
    try:
        return references.parse(reference)
    except references.BadReference:
        pass
    hint, fix = "", _FIX_THE_NAME.get(where, _FIX_THE_NAME["kernelspec"])
    if reference != reference.lower() and references.is_valid(reference.lower()):
        hint = f" Repository names must be lowercase: did you mean '{reference.lower()}'?"
        if where == "use_image":
            fix = f"Write it in lowercase: %use_image {reference.lower()}"
        elif where == "install":
            fix = f"Write it in lowercase: --image {reference.lower()}"
    elif " " in reference:
        hint = " It contains a space."
    raise InvalidImageReference(
        f"'{printable.one_line(reference, 300)}' is not a valid Docker image reference.{hint} "
        "A reference looks like NAME[:TAG] or NAME@sha256:DIGEST, e.g. python:3.11-slim or "
        "registry.example.com/team/image:1.2.",
        fix=fix,
    )


def _split(reference: str) -> tuple[str, str | None]:
    """``(repository, tag-or-digest)`` for the pull API (``envpin.images.references``: one parser for both sides)."""
    return references.split(reference)


def _pull_stream(client: docker.DockerClient, repository: str, tag: str) -> tuple[Any, Any]:
    """``(response, events)`` of the engine's pull (``POST /images/create``), the registry login included.

    docker-py's ``api.pull`` is this same request, but it hides the HTTP
    response, and closing that response is the only way to cancel a pull on
    the engine (it stops when its client goes away): a pull over a kernel's
    byte allowance must stop, not finish in the background.  So this uses
    docker-py's request helpers (``_post``, ``_stream_helper``: ``envpin.internals.DOCKER``) directly.
    """
    api = client.api
    headers = {}
    registry = DOCKER.get("auth_resolve_repository_name")(repository)[0]
    header = DOCKER.get("auth_config_header")(api, registry)
    if header:
        headers["X-Registry-Auth"] = header
    response = DOCKER.attr(api, "api_post")(
        DOCKER.attr(api, "api_url")("/images/create"),
        params={"fromImage": repository, "tag": tag},
        headers=headers,
        stream=True,
        timeout=None,
    )
    DOCKER.attr(api, "api_raise_for_status")(response)
    return response, DOCKER.attr(api, "api_stream_helper")(response, decode=True)


def pull(
    client: docker.DockerClient,
    reference: str | references.Reference,
    log: logging.Logger | logging.LoggerAdapter,
    progress: Callable[[str, float | None], None] | None = None,
    interval: float = 2.0,
    present: bool = False,
    record: PullRecord | None = None,
) -> None:
    """Pull ``reference``, reporting progress to ``log`` every ``interval`` seconds.

    The pull has no timeout of its own: a large image on a slow link takes what
    it takes, and the kernel's launch timeout only starts once the image is here.
    ``record``: the pull is one a kernel caused; it is admitted and counted by
    the kernel's budget (``pull_budget``), and cancelled as soon as the sizes
    of its layers pass the bytes the kernel has left.
    """
    ref = reference if isinstance(reference, references.Reference) else check_reference(reference)
    name = ref.engine_name
    if ref.repository is None:
        raise ImageUnavailable(f"'{name}' is an image id: only names can be pulled.")
    allowance = record.before_pull(client, name) if record is not None else None
    log.info("envpin: pulling image %s ...", name)
    layers: dict[str, tuple[int, int]] = {}
    last = last_told = 0.0
    response = None
    try:
        response, events = _pull_stream(client, ref.repository, ref.digest or ref.tag_or_latest)
        for event in events:
            if "error" in event:
                raise docker.errors.APIError(event["error"])
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                layers[event["id"]] = (detail.get("current", 0), detail["total"])
            total = sum(t for _, t in layers.values())
            if record is not None:
                record.downloaded(total)
                if allowance is not None and total > allowance:
                    raise PullTooLarge(
                        f"envpin cancelled the pull of '{name}': its layers ({total / 2**20:.0f} MiB so far) pass "
                        f"what this kernel may still download ({allowance / 2**20:.0f} MiB of max_pull_bytes). "
                        "Pull it on the engine yourself (docker pull) if you trust it, or raise max_pull_bytes "
                        "in the kernel's configuration."
                    )
            now = time.monotonic()
            if now - last_told >= 0.3 or now - last >= interval:
                done = sum(c for c, _ in layers.values())
                msg = f"envpin: pulling {name}: {len(layers)} layers, {done / 2**20:.0f}/{total / 2**20:.0f} MiB"
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
                f"Image '{name}' could not be pulled (pull policy 'always' or --pull): {reason}. "
                "The local copy was not used. Check the registry and your login (docker login), or use "
                "pull_policy='if-missing' (without --pull) to run the local copy."
            ) from exc
        raise ImageUnavailable(
            f"Image '{name}' is not on the Docker engine and could not be pulled: {reason}.",
            fix="Check the name and tag, log in to its registry (docker login), or build/load the image "
            "locally (docker build / docker load) and start the kernel again.",
        ) from exc
    finally:
        if response is not None:
            response.close()  # an unfinished pull stops on the engine
    log.info("envpin: pulled %s", name)


def local_image(client: docker.DockerClient, reference: references.Reference) -> Any | None:
    """The engine's image for ``reference``, None when absent.  Blocking."""
    try:
        return client.images.get(reference.engine_name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:  # e.g. "invalid reference format" from the engine
        raise InvalidImageReference(
            f"The Docker engine rejects the image reference '{reference.engine_name}': {exc.explanation}. "
            "Fix the image setting of this kernel."
        ) from exc


def resolve(
    client: docker.DockerClient,
    reference: str | references.Reference,
    pull_policy: str,
    log: logging.Logger | logging.LoggerAdapter,
    progress: Callable[[str, float | None], None] | None = None,
    record: PullRecord | None = None,
) -> ResolvedImage:
    """Resolve ``reference`` on the engine, pulling it as ``pull_policy`` says.

    ``reference``: text, or the :class:`~envpin.images.references.Reference` that was
    checked against ``allowed_images``; either way the engine is asked for
    exactly its :attr:`~envpin.images.references.Reference.engine_name` (a digest
    without the tag the engine would ignore).  ``record``: the pulls are a
    kernel's (``pull_budget``).  Blocking: call from a worker thread.
    """
    ref = reference if isinstance(reference, references.Reference) else check_reference(reference)
    name = ref.engine_name
    if pull_policy == "always" and not ref.is_id:
        present = local_image(client, ref) is not None
        pull(client, ref, log, progress, present=present, record=record)
    image = local_image(client, ref)
    if image is not None:
        return images.resolved(name, image)
    if pull_policy == "never" or ref.is_id:
        raise ImageUnavailable(
            f"Image '{name}' is not present on the Docker engine and the pull policy is "
            f"'{pull_policy}', so envpin will not pull it.",
            fix="Build or load it locally (docker build -t / docker load), or allow pulling with "
            "pull_policy='if-missing'.",
        )
    pull(client, ref, log, progress, record=record)
    image = local_image(client, ref)
    if image is None:
        raise ImageUnavailable(f"Image '{name}' was pulled but the engine cannot find it.")
    return images.resolved(name, image)


#: Whether an image's ipykernel speaks CurveZMQ, by (engine address, image id): an id means one image per engine.
_curve_support: dict[tuple[str, str], bool] = {}


def supports_curve(client: docker.DockerClient, image: ResolvedImage, python: str = "python3") -> bool:
    """Whether the image's ipykernel reads CurveZMQ keys from its connection file (cached per engine and image).

    Asked of the image itself, in a short-lived container without network (created like every envpin
    container, labelled, so gc sees it), because the image's ipykernel, not the server's, decides; an
    image that cannot answer counts as "no".
    """
    key = (docker_client.address_of(client), image.id)
    if key not in _curve_support:
        code = "import ipykernel.kernelapp as k; print(hasattr(k.IPKernelApp, 'curve_secretkey'))"
        try:
            supported = images.run_python(client, image, code, python=python).strip().endswith("True")
        except (*engine.ENGINE_ERRORS, EnvpinError):  # the engine failed meanwhile: counted as no
            supported = False
        remember_curve_support(client, image.id, supported)
    return _curve_support[key]


def remember_curve_support(client: docker.DockerClient, image_id: str, supported: bool) -> None:
    """Record whether image ``image_id`` of this engine speaks CurveZMQ: an id names one image for good."""
    _curve_support[(docker_client.address_of(client), image_id)] = supported


def reset() -> None:
    """Forget what was learnt about images (``envpin_provisioner.reset_caches``; tests that rebuild an image)."""
    _curve_support.clear()
