"""Which image a kernel starts in: the notebook's pin, else the configured image.

Precedence (see the provisioner's docstring for the other options):

1. the pin recorded for this notebook by ``%use_image`` (``.envpin.json``
   beside the notebook; the folder's ``"*"`` pin for headless runs);
2. the ``image`` option (kernelspec config > Jupyter config > ``$ENVPIN_IMAGE``).

Names go through the user's aliases (``envpin.aliases``), then through
``allowed_images`` (``envpin.image_policy``), before anything is pulled.

A pin file is a file in the notebook folder: it may have come with a cloned
repository, and then nobody here chose the image it names.  So a pinned
image is never *pulled* on the pin file's word alone: when the engine does not
have it (and it is not the kernel's configured image, which someone did
choose), the start is refused with the way to accept it (``docker pull``).
An image the engine already has was pulled or built here by someone; with
``allowed_images`` set, even those must match.

A pin records what
the tag meant when it was made; when the tag has moved since, the kernel
starts in the pinned id (what the notebook's results were made with) if the
engine still has it, and the move is reported in the server log and to the
kernel (``ENVPIN_IMAGE_LATEST_ID``), where ``%use_image`` shows both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

import docker
import docker.errors

from envpin import aliases, control, image_policy, pins, printable, safe_files
from envpin.errors import PinFileError

from . import images
from .errors import ImageUnavailable


@dataclass
class ImageChoice:
    name: str  #: as written by the user (maybe an alias)
    resolved: images.ResolvedImage
    pinned: bool  #: chosen because of a pin
    latest_id: str | None = None  #: what the tag means now, when a pin holds an older id
    notes: list[str] = field(default_factory=list)
    #: the session's %use_image options (strict, ray_mode), kept in the pin record across restarts and moves
    options: dict = field(default_factory=dict)


def notebook_folder(notebook: str | None, cwd: str | None) -> str:
    """Where a notebook's pin file lives: beside the notebook, else the kernel's working directory."""
    if notebook and os.path.isabs(notebook) and os.path.isdir(os.path.dirname(notebook)):
        return os.path.dirname(notebook)
    return os.path.abspath(cwd or os.getcwd())


def resolve_name(client: docker.DockerClient, name: str, pull_policy: str, log, progress=None) -> images.ResolvedImage:
    """Resolve a user-written name (alias, reference or id); ``progress`` hears about pulls."""
    return images.resolve(client, aliases.expand(name), pull_policy, log, progress)


def choose(
    client: docker.DockerClient,
    configured: str,
    pull_policy: str,
    notebook: str | None,
    cwd: str | None,
    log: logging.Logger | logging.LoggerAdapter,
    allowed: list[str] | tuple[str, ...] = (),
) -> ImageChoice:
    """Blocking: call from a worker thread."""
    # The provisioner passes the folder it pinned (a PinnedDir: read through its descriptor); others a path.
    folder = cwd if isinstance(cwd, safe_files.PinnedDir) else notebook_folder(notebook, cwd)
    pin = pins.lookup(folder, notebook)  # a damaged pin file stops the start
    if not pin:
        image_policy.check(aliases.expand(configured), allowed, "this kernel's configuration (kernelspec)", configured)
        return ImageChoice(configured, resolve_name(client, configured, pull_policy, log), pinned=False)
    name = pin["image"]
    options = control.session_options(pin.get("options"))
    source = f"the pin file {pins.pin_file_for(folder)}"
    reference = pin.get("reference") or aliases.expand(name)
    if not isinstance(reference, str):
        raise PinFileError(f"The envpin pin file {pins.pin_file_for(folder)} is damaged: a 'reference' is not text.")
    image_policy.check(reference, allowed, source, name)
    configured_ref = aliases.expand(configured)
    if reference in (configured, configured_ref) or name in (configured, configured_ref):
        current = resolve_name(client, reference, pull_policy, log)
    else:
        current = _resolve_pinned(client, name, reference, pull_policy, log, folder, notebook)
    pinned_id = pin.get("image_id")
    if pinned_id is not None and not isinstance(pinned_id, str):
        raise PinFileError(f"The envpin pin file {pins.pin_file_for(folder)} is damaged: an 'image_id' is not text.")
    if not pinned_id or pinned_id in (current.id, current.immutable):
        return ImageChoice(name, current, pinned=True, options=options)
    # The pin file is the kernel's to write: its values are quoted escaped (the note reaches the server's log).
    quoted, pinned = printable.one_line(name, 300), printable.one_line(pinned_id, 200)
    note = f"'{quoted}' has moved since this notebook pinned it: pinned {pinned}, now {current.immutable}."
    try:
        old = client.images.get(pinned_id)
    except (docker.errors.ImageNotFound, docker.errors.APIError):
        log.warning("envpin: %s The pinned image is gone from the engine; starting the current one.", note)
        return ImageChoice(
            name,
            current,
            pinned=True,
            notes=[note + " The pinned image is gone: running the current one."],
            options=options,
        )
    if allowed:  # the pinned id must itself be an allowed image, not just the reference it came with
        names = [*(old.attrs.get("RepoTags") or []), *(old.attrs.get("RepoDigests") or [])]
        if not any(image_policy.allowed(n, allowed) for n in names):
            image_policy.check(pinned_id, allowed, source, name)
    log.warning("envpin: %s Starting the pinned one; %%use_image %s moves to the current one.", note, name)
    digest = pinned_id if "@" in pinned_id else None
    env = tuple((old.attrs.get("Config") or {}).get("Env") or ())
    return ImageChoice(
        name,
        replace(current, id=old.id, digest=digest, env=env),
        pinned=True,
        latest_id=current.immutable,
        notes=[note + f" This kernel runs the pinned one; %use_image {name} moves to the current one."],
        options=options,
    )


def _resolve_pinned(client, name: str, reference: str, pull_policy: str, log, folder: str, notebook: str | None):
    """Resolve a pinned image the engine must already have: a pin file alone never causes a pull.

    With pull_policy 'always' an image that is present is still refreshed (it was
    chosen here once, when it came onto the engine).
    """
    policy = "never" if pull_policy == "if-missing" else pull_policy
    try:
        if pull_policy == "always":
            images.resolve(client, reference, "never", log)  # present? else refuse below, before any pull
        return images.resolve(client, reference, policy, log)
    except ImageUnavailable:
        pass
    key = pins.notebook_key(notebook)
    raise ImageUnavailable(
        f"The pin file {pins.pin_file_for(folder)} pins this notebook to image '{name}' ({reference}), which "
        "this Docker engine does not have, and envpin does not pull an image because a file in the notebook "
        "folder names it (it may have come with the folder, chosen by someone else). If you trust it, pull it "
        f"yourself (docker pull {reference}) and start the kernel again; otherwise remove the entry "
        f"'{key}' from that file (or the file) to start in the kernel's own image."
    ) from None
