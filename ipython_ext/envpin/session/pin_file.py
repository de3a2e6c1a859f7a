"""The pin file: which image each notebook of a folder runs in.

``%use_image`` records its choice in ``.envpin.json`` beside the notebook, so
that reopening the notebook, or running it headless with nbclient/papermill,
starts the kernel directly in the pinned image.  The file is small, sorted
JSON meant to be read, diffed and committed::

    {
      "about": "envpin pins: the image each notebook in this folder runs in ...",
      "version": 1,
      "notebooks": {
        "analysis.ipynb": {
          "image": "ubuntu-22.04-py3",                  # as the user wrote it
          "reference": "registry.example.com/py:3.11",  # after alias expansion
          "image_id": "sha256:...",                     # what it meant when pinned
          "python": "3.11.2",
          "pinned_at": "2026-11-25T10:00:00Z"
        }
      }
    }

Notebooks are keyed by file name.  A kernel that does not know its notebook
(nbclient and papermill do not say) records and reads the key ``"*"``, the
folder's pin.  A file that does not parse is reported and never overwritten,
so a hand edit gone wrong cannot silently lose the previous pin.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from envpin import safe_files
from envpin.errors import PinFileError

PIN_FILE = ".envpin.json"
FOLDER_KEY = "*"
_ABOUT = (
    "envpin pins: the image each notebook in this folder runs in. Written by %use_image; "
    "read when a kernel starts. Safe to edit or delete; commit it with the notebooks."
)


def pin_file_for(folder: str | os.PathLike) -> Path:
    return Path(folder) / PIN_FILE


def notebook_key(notebook: str | None) -> str:
    return os.path.basename(notebook) if notebook else FOLDER_KEY


#: A pin file holds a few lines per notebook; anything this large is not one.
MAX_PIN_FILE_BYTES = 1024 * 1024


def read(folder: str | os.PathLike) -> dict[str, Any]:
    """All pins of ``folder`` (``{}`` when there is no pin file); raise PinFileError if unreadable.

    The notebook folder is writable by the kernel, so the pin file is hostile
    input to the server that reads it: a symbolic link (to ``/etc/shadow``, say),
    a FIFO, a hard link or a huge file is refused without being read, and no
    error message quotes the file's content.
    """
    path = pin_file_for(folder)
    try:
        with safe_files.directory(folder) as dir_fd:
            text = safe_files.read_regular(dir_fd, PIN_FILE, MAX_PIN_FILE_BYTES)
    except FileNotFoundError:
        return {}
    except safe_files.UnsafeFile as exc:
        raise PinFileError(
            f"The envpin pin file {path} is not a plain file ({exc.strerror}), so envpin does not read it: "
            "it never follows links or opens special files in a notebook folder. Replace it with a regular "
            "file (or delete it to start over)."
        ) from None
    except OSError as exc:
        raise PinFileError(f"Cannot read the envpin pin file {path}: {exc.strerror}. Fix its permissions.") from None
    try:
        try:
            data = json.loads(text)
        except RecursionError:  # nested deeper than the parser goes: no pin file looks like that
            raise ValueError("it is nested too deeply to be a pin file") from None
        pins = data["notebooks"]
        if not isinstance(pins, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("image"), str) and v.get("image") for v in pins.values()
        ):
            raise ValueError("each pin needs an 'image'")
        if not all(_printable(v["image"]) and _printable(v.get("reference", "x")) for v in pins.values()):
            raise ValueError("an image name holds control characters or is too long")
    except json.JSONDecodeError as exc:
        raise PinFileError(
            f"The envpin pin file {path} is damaged (line {exc.lineno}): {exc.msg}. envpin will not overwrite "
            "it, so the pins it holds are kept; fix the file by hand (it is JSON) or delete it to start over."
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PinFileError(
            f"The envpin pin file {path} is damaged: {_describe(exc)}. envpin will not overwrite it, so the pins "
            "it holds are kept; fix the file by hand (it is JSON) or delete it to start over."
        ) from None
    return pins


def _printable(value: Any) -> bool:
    """A name envpin may show and log as it is: text, printable, of a reasonable length."""
    return isinstance(value, str) and value.isprintable() and len(value) <= 512


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return "it has no 'notebooks' entry"
    if isinstance(exc, TypeError):
        return "it is not a JSON object with a 'notebooks' object"
    return str(exc)


def lookup(folder: str | os.PathLike, notebook: str | None) -> dict[str, Any] | None:
    """The pin for ``notebook`` in ``folder``: its own, else the folder's ``"*"`` pin.

    Without a notebook name (headless runs), a folder whose pins all name the
    same image counts as pinned to it.
    """
    pins = read(folder)
    if notebook and notebook_key(notebook) in pins:
        return pins[notebook_key(notebook)]
    if FOLDER_KEY in pins:
        return pins[FOLDER_KEY]
    if not notebook and pins:
        images = {p.get("image_id") or p["image"] for p in pins.values()}
        if len(images) == 1:
            return next(iter(pins.values()))
    return None


def record(
    folder: str | os.PathLike, notebook: str | None, pin: dict[str, Any], owner: tuple[int, int] | None = None
) -> Path:
    """Record ``pin`` for ``notebook`` (the folder's pin when None); atomic, other pins kept.

    Written under a new random name and renamed into place relative to the
    folder (``safe_files.write_atomic``): a link planted at ``.envpin.json`` is
    replaced, never written through.  ``owner`` (uid, gid): who the file
    belongs to, when a server running as root writes it for a kernel's user.
    """
    pins = read(folder)  # raises on a damaged file: never overwrite what we could not read
    entry = {k: v for k, v in pin.items() if v is not None}
    entry.setdefault("pinned_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    pins[notebook_key(notebook)] = entry
    body = json.dumps({"about": _ABOUT, "version": 1, "notebooks": pins}, indent=2, sort_keys=True) + "\n"
    with safe_files.directory(folder) as dir_fd:
        safe_files.write_atomic(dir_fd, PIN_FILE, body.encode(), mode=0o644, owner=owner)
    return pin_file_for(folder)
