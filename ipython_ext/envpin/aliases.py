"""Image aliases: short names for long references.

``%use_image py311`` is nicer than ``registry.example.com/ml/python:3.11-cuda12``.
Aliases live in a JSON object of ``{"alias": "reference"}``, read from the
first of:

1. the file named by ``$ENVPIN_ALIASES``;
2. ``$XDG_CONFIG_HOME/envpin/aliases.json`` (``~/.config/envpin/aliases.json``).

Expansion happens where the image is resolved (the provisioner, or this
process outside a container); the name the user wrote is what envpin shows
and records as ``image`` in the pin, with the expansion as ``reference``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import EnvpinError


def aliases_file() -> Path:
    if os.environ.get("ENVPIN_ALIASES"):
        return Path(os.environ["ENVPIN_ALIASES"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "envpin" / "aliases.json"


def load() -> dict[str, str]:
    path = aliases_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EnvpinError(
            f"The envpin aliases file {path} cannot be read: {exc}. It must be a JSON object like "
            '{"py311": "registry.example.com/ml/python:3.11"}; fix or remove it.'
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise EnvpinError(f"The envpin aliases file {path} must map alias names to image references (strings).")
    return data


def expand(name: str) -> str:
    """The reference ``name`` stands for (itself when it is no alias)."""
    return load().get(name, name)
