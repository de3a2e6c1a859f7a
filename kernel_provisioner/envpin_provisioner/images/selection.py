"""Which image a kernel starts in: the notebook's pin, else the configured image.

Precedence (see the provisioner's docstring for the other options):

1. the pin recorded for this notebook by ``%use_image`` (``.envpin.json``
   beside the notebook; the folder's ``"*"`` pin for headless runs);
2. the ``image`` option (kernelspec config > Jupyter config > ``$ENVPIN_IMAGE``).

Names go through the user's aliases (``envpin.session.aliases``, read once per
start or request), are parsed into one ``envpin.images.references.Reference``, and
that value goes through ``allowed_images`` (``envpin.images.allowlist``) before
anything is pulled; the engine is then asked for exactly that value
(:func:`checked_reference`), never for a name looked up again.

A pin file is a file in the notebook folder: it may have come with a cloned
repository, and then nobody here chose the image it names.  So a pinned
image is never *pulled* on the pin file's word alone: when the engine does not
have it (and it is not the kernel's configured image, which someone did
choose), the start is refused with the way to accept it (``docker pull``).
"The configured image" is decided on the *reference the pin makes envpin
use* (its ``reference``, else its ``image`` expanded), never on the name it
shows: a pin whose ``image`` is the configured image but whose
``reference`` names another is a pin of that other image.
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

from envpin import printable, safe_files
from envpin.errors import PinFileError
from envpin.host.images import ResolvedImage
from envpin.images import allowlist, references
from envpin.session import aliases, pin_file
from envpin.session.options import SessionOptions
from envpin_provisioner.errors import ImageUnavailable
from envpin_provisioner.images import pulling

#: Where a kernel's image came from (``ImageChoice.source``): shown by the JupyterLab extension.
BY_KERNELSPEC, BY_PIN_FILE, BY_USE_IMAGE = "kernelspec", "pin file", "%use_image"


@dataclass
class ImageChoice:
    name: str  #: as written by the user (maybe an alias)
    resolved: ResolvedImage
    pinned: bool  #: chosen because of a pin
    latest_id: str | None = None  #: what the tag means now, when a pin holds an older id
    notes: list[str] = field(default_factory=list)
    #: the session's %use_image options (strict, ray_mode), kept in the pin record across restarts and moves
    options: dict = field(default_factory=dict)
    #: where the image came from: the kernel's configuration, the notebook's pin file, or a %use_image request
    source: str = ""
    #: which pin decided the image, from where (``pin_file.Found.describe``): the kernel's first output says it
    pinned_by: str | None = None
    #: pin entries that were there but did not apply (a stale name, another kernelspec's folder pin), in words
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.source:
            self.source = BY_PIN_FILE if self.pinned else BY_KERNELSPEC

    def first_output(self) -> list[str]:
        """What the kernel says about pins before its first cell's output: which pin decided, which did not apply."""
        said = []
        if self.pinned_by:
            said.append(
                f"this kernel runs in '{printable.one_line(self.name, 300)}', pinned by {self.pinned_by}. "
                "%use_image IMAGE changes the pin; without that entry the notebook starts in its kernelspec's image"
            )
        return said + self.skipped


def notebook_folder(notebook: str | None, cwd: str | None) -> str:
    """Where a notebook's pin file lives: beside the notebook, else the kernel's working directory."""
    if notebook and os.path.isabs(notebook) and os.path.isdir(os.path.dirname(notebook)):
        return os.path.dirname(notebook)
    return os.path.abspath(cwd or os.getcwd())


def checked_reference(
    name: str,
    allowed: list[str] | tuple[str, ...],
    source: str,
    table: dict[str, str] | None = None,
) -> references.Reference:
    """The one parsed reference ``name`` stands for, checked against ``allowed``: what the engine is then asked for.

    ``table``: the aliases already read for this start or request (else they
    are read here, once).  Blocking (reads the aliases file): call from a
    worker thread.
    """
    return _checked(aliases.expand(name, aliases.load() if table is None else table), allowed, source, name)


def _checked(expanded: str, allowed: list[str] | tuple[str, ...], source: str, shown: str) -> references.Reference:
    try:
        ref = references.parse(expanded)
    except references.BadReference:
        if allowed and expanded.strip():
            allowlist.check(expanded, allowed, source, shown)  # refused, naming the patterns
        where = "use_image" if source.startswith("%use_image") else "pin" if source.startswith("the pin") else ""
        pulling.check_reference(expanded, where or "kernelspec")  # refused, saying what a reference looks like
        raise
    allowlist.check(ref, allowed, source, shown)
    return ref


def _pinned_reference(
    pin: dict, table: dict[str, str], allowed: list[str] | tuple[str, ...], source: str, pin_file: str
) -> references.Reference:
    """The reference a pin makes envpin use (its ``reference``, else its ``image`` expanded), checked.

    The pin's ``reference`` is used as written (an alias table is not applied to it again).
    """
    text = pin.get("reference") or aliases.expand(pin["image"], table)
    if not isinstance(text, str):
        raise PinFileError(f"The envpin pin file {pin_file} is damaged: a 'reference' is not text.")
    return _checked(text, allowed, source, pin["image"])


def _configured_reference(configured: str, table: dict[str, str]) -> references.Reference | None:
    try:
        return references.parse(aliases.expand(configured, table))
    except references.BadReference:
        return None


def _is_configured(ref: references.Reference, configured: references.Reference | None) -> bool:
    """Whether a pin's reference is the kernel's configured image, compared as the engine would be asked."""
    return configured is not None and ref.engine_name == configured.engine_name


def choose(
    client: docker.DockerClient,
    configured: str,
    pull_policy: str,
    notebook: str | None,
    cwd: str | safe_files.PinnedDir | None,
    log: logging.Logger | logging.LoggerAdapter,
    allowed: list[str] | tuple[str, ...] = (),
    configured_by: str = "this kernel's configuration (kernelspec)",
    kernelspec: str | None = None,
) -> ImageChoice:
    """The image a start uses, resolved.  Blocking: call from a worker thread.

    ``configured_by``: where ``configured`` came from, as a refusal names it;
    ``kernelspec``: the name of the kernelspec being started (a folder pin
    applies only to kernels of the kernelspec it was made in).
    """
    # The provisioner passes the folder it pinned (a PinnedDir: read through its descriptor); others a path.
    folder = cwd if isinstance(cwd, safe_files.PinnedDir) else notebook_folder(notebook, cwd)
    lookup = pin_file.find(folder, notebook, kernelspec)  # a damaged pin file stops the start
    for skipped in lookup.skipped:
        log.info("envpin: %s.", skipped)
    table = aliases.load()  # once per start: the check and the resolution use the same table
    if lookup.found is None:
        ref = checked_reference(configured, allowed, configured_by, table)
        resolved = pulling.resolve(client, ref, pull_policy, log)
        return ImageChoice(configured, resolved, pinned=False, skipped=lookup.skipped)
    found = lookup.found
    choice = _choose_pinned(client, configured, pull_policy, found.key, folder, log, allowed, found.entry, table)
    choice.pinned_by, choice.skipped = found.describe(), lookup.skipped
    log.info(
        "envpin: kernel of %s starts in '%s', pinned by %s",
        printable.one_line(notebook or "a headless run", 300), printable.one_line(choice.name, 300), choice.pinned_by,
    )  # fmt: skip
    return choice


def _choose_pinned(
    client: docker.DockerClient,
    configured: str,
    pull_policy: str,
    key: str,
    folder,
    log: logging.Logger | logging.LoggerAdapter,
    allowed: list[str] | tuple[str, ...],
    pin: dict,
    table: dict[str, str],
) -> ImageChoice:
    """The image ``pin`` (an entry of the pin file) stands for, resolved: never pulled on the pin's word alone."""
    name = pin["image"]
    options = SessionOptions.parse(pin.get("options"), strict_schema=False).as_dict()
    source = f"the pin file {pin_file.pin_file_for(folder)}"
    reference = _pinned_reference(pin, table, allowed, source, str(pin_file.pin_file_for(folder)))
    if _is_configured(reference, _configured_reference(configured, table)):
        current = pulling.resolve(client, reference, pull_policy, log)
    else:
        current = _resolve_pinned(client, name, reference, pull_policy, log, folder, key)
    pinned_id = pin.get("image_id")
    if pinned_id is not None and not isinstance(pinned_id, str):
        raise PinFileError(
            f"The envpin pin file {pin_file.pin_file_for(folder)} is damaged: an 'image_id' is not text."
        )
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
        if not any(allowlist.allowed(n, allowed) for n in names):
            allowlist.check(pinned_id, allowed, source, name)
    log.warning("envpin: %s Starting the pinned one; %%use_image %s moves to the current one.", note, quoted)
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


def _resolve_pinned(
    client,
    name: str,
    reference: references.Reference,
    pull_policy: str,
    log,
    folder: str | os.PathLike,
    key: str,
):
    """Resolve a pinned image the engine must already have: a pin file alone never causes a pull.

    With pull_policy 'always' an image that is present is still refreshed (it was
    chosen here once, when it came onto the engine).
    """
    policy = "never" if pull_policy == "if-missing" else pull_policy
    try:
        if pull_policy == "always":
            pulling.resolve(client, reference, "never", log)  # present? else refuse below, before any pull
        return pulling.resolve(client, reference, policy, log)
    except ImageUnavailable:
        pass
    raise ImageUnavailable(
        f"The pin file {pin_file.pin_file_for(folder)} pins this notebook to image '{printable.one_line(name, 300)}' "
        f"({reference.engine_name}), which "
        "this Docker engine does not have, and envpin does not pull an image because a file in the notebook "
        "folder names it (it may have come with the folder, chosen by someone else). If you trust it, pull it "
        f"yourself (docker pull {reference.engine_name}) and start the kernel again; otherwise remove the entry "
        f"'{key}' from that file (or the file) to start in the kernel's own image."
    ) from None
