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
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import PinFileError

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


def read(folder: str | os.PathLike) -> dict[str, Any]:
    """All pins of ``folder`` (``{}`` when there is no pin file); raise PinFileError if unreadable."""
    path = pin_file_for(folder)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PinFileError(f"Cannot read the envpin pin file {path}: {exc.strerror}. Fix its permissions.") from exc
    try:
        data = json.loads(text)
        pins = data["notebooks"]
        if not isinstance(pins, dict) or not all(isinstance(v, dict) and v.get("image") for v in pins.values()):
            raise ValueError("each pin needs an 'image'")
    except (ValueError, KeyError, TypeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise PinFileError(
            f"The envpin pin file {path} is damaged{where}: {exc}. envpin will not overwrite it, so the pins "
            "it holds are kept; fix the file by hand (it is JSON) or delete it to start over."
        ) from exc
    return pins


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


def record(folder: str | os.PathLike, notebook: str | None, pin: dict[str, Any]) -> Path:
    """Record ``pin`` for ``notebook`` (the folder's pin when None); atomic, other pins kept."""
    pins = read(folder)  # raises on a damaged file: never overwrite what we could not read
    entry = {k: v for k, v in pin.items() if v is not None}
    entry.setdefault("pinned_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    pins[notebook_key(notebook)] = entry
    path = pin_file_for(folder)
    body = json.dumps({"about": _ABOUT, "version": 1, "notebooks": pins}, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".envpin.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
