"""Image aliases: short names for long references.

``%use_image py311`` is nicer than ``registry.example.com/ml/python:3.11-cuda12``.
Aliases live in a JSON object of ``{"alias": "reference"}``, read from the
first of:

1. the file named by ``$ENVPIN_ALIASES``;
2. ``$XDG_CONFIG_HOME/envpin/aliases.json`` (``~/.config/envpin/aliases.json``).

Expansion happens where the image is resolved (the provisioner, or this
process outside a container); the name the user wrote is what envpin shows
and records as ``image`` in the pin, with the expansion as ``reference``.

The file may sit in a folder a kernel can write (``$ENVPIN_ALIASES`` is the
site's choice), so the server treats it as hostile input: :func:`load` opens
it with ``O_NOFOLLOW | O_NONBLOCK`` (``envpin.safe_files``: a link or a FIFO
planted at its name is refused, never followed or waited on), reads it only
when it is a small regular file, and is called once per request, off the
event loop; the table it returns is what both the check (``allowed_images``)
and the resolution use (:func:`expand` takes it), so a file flipped between
the two cannot change the answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from envpin import names, safe_files
from envpin.errors import EnvpinError

#: An aliases file holds a few lines per image; anything this large is not one.
MAX_ALIASES_BYTES = 256 * 1024


def aliases_file() -> Path:
    if os.environ.get(names.ALIASES):
        return Path(os.environ[names.ALIASES]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "envpin" / "aliases.json"


def load() -> dict[str, str]:
    """The alias table (``{}`` when there is no file); raise EnvpinError for a file that is unsafe or not one.

    Blocking (it opens a file): server code calls it in a worker thread, once per request.
    """
    path = aliases_file()
    try:
        with safe_files.directory(path.parent) as dir_fd:
            raw = safe_files.read_regular(dir_fd, path.name, MAX_ALIASES_BYTES)
    except FileNotFoundError:
        return {}
    except safe_files.UnsafeFile as exc:
        raise EnvpinError(
            f"The envpin aliases file {path} is not a plain file ({exc.strerror}), so envpin does not read it: "
            "it never follows links or opens special files for its aliases. Replace it with a regular file "
            f"of at most {MAX_ALIASES_BYTES // 1024} KiB (or remove it, or point ENVPIN_ALIASES elsewhere)."
        ) from None
    except OSError as exc:
        raise EnvpinError(
            f"The envpin aliases file {path} cannot be read: {exc.strerror}. Fix its permissions, or remove it."
        ) from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EnvpinError(
            f"The envpin aliases file {path} cannot be read: {exc if isinstance(exc, ValueError) else 'nested too deeply'}. "
            'It must be a JSON object like {"py311": "registry.example.com/ml/python:3.11"}; fix or remove it.'
        ) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise EnvpinError(f"The envpin aliases file {path} must map alias names to image references (strings).")
    return data


def expand(name: str, table: dict[str, str] | None = None) -> str:
    """The reference ``name`` stands for (itself when it is no alias), in ``table`` (default: :func:`load`).

    Code that checks and then uses a name passes the one table it loaded, so both see the same file.
    """
    return (load() if table is None else table).get(name, name)
