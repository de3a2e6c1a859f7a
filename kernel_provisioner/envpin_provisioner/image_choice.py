"""Which image a kernel starts in: the notebook's pin, else the configured image.

Precedence (see the provisioner's docstring for the other options):

1. the pin recorded for this notebook by ``%use_image`` (``.envpin.json``
   beside the notebook; the folder's ``"*"`` pin for headless runs);
2. the ``image`` option (kernelspec config > Jupyter config > ``$ENVPIN_IMAGE``).

Names go through the user's aliases (``envpin.aliases``).  A pin records what
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

from envpin import aliases, pins

from . import images


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
) -> ImageChoice:
    """Blocking: call from a worker thread."""
    pin = pins.lookup(notebook_folder(notebook, cwd), notebook)  # a damaged pin file stops the start
    if not pin:
        return ImageChoice(configured, resolve_name(client, configured, pull_policy, log), pinned=False)
    name = pin["image"]
    options = dict(pin.get("options") or {})
    current = resolve_name(client, pin.get("reference") or name, pull_policy, log)
    pinned_id = pin.get("image_id")
    if not pinned_id or pinned_id in (current.id, current.immutable):
        return ImageChoice(name, current, pinned=True, options=options)
    note = f"'{name}' has moved since this notebook pinned it: pinned {pinned_id}, now {current.immutable}."
    try:
        old = client.images.get(pinned_id)
    except (docker.errors.ImageNotFound, docker.errors.APIError):
        log.warning("envpin: %s The pinned image is gone from the engine; starting the current one.", note)
        return ImageChoice(
            name, current, pinned=True, notes=[note + " The pinned image is gone: running the current one."], options=options
        )
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
