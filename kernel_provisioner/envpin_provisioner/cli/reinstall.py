"""The ``envpin kernelspec install`` command that rewrites an installed kernelspec, corrected.

A kernel start refused for a kernelspec's bad settings used to end with
"or reinstall the kernelspec: envpin kernelspec install": run as shown, that
installs the *default* kernelspec (another name, the default image, none of
the options) and leaves the broken one as it was.  The command here is the
one that replaces it: same name, image, display name and folder, the known
options kept and the misspelt ones under their right name.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import sys
from typing import Any

from envpin_provisioner.cli import kernelspec


def _as_config_value(value: Any) -> str:
    """``value`` as the VALUE of ``--config KEY=VALUE``, which reads back as ``value`` (JSON when it parses)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value  # read back as the string itself
    return json.dumps(value)


def _place(resource_dir: str, name: str) -> str | None:
    """The flag that installs kernelspec ``name`` into ``resource_dir`` (``""``: the system folder; None: none does)."""
    here = os.path.realpath(resource_dir)
    for flag, target in (
        ("--user", kernelspec.destination(name, user=True)),
        ("--sys-prefix", kernelspec.destination(name, prefix=sys.prefix)),
        ("", kernelspec.destination(name)),
    ):
        if os.path.realpath(target) == here:
            return flag
    prefix, tail = here, list[str]()
    for _ in range(4):
        prefix, part = os.path.split(prefix)
        tail.insert(0, part)
    if tail == ["share", "jupyter", "kernels", name]:
        return f"--prefix {shlex.quote(prefix)}"
    return None


def command(
    kernel_spec: Any, options: dict[str, Any], renames: dict[str, str], drop: set[str], choose: set[str]
) -> str | None:
    """The install command that replaces ``kernel_spec`` with ``options`` corrected (None: it cannot be said).

    ``renames``: misspelt option -> its right name; ``drop``: options to leave
    out (unknown, no close name); ``choose``: options whose value is wrong,
    written ``KEY=VALUE`` (the person has to choose one).
    """
    folder = getattr(kernel_spec, "resource_dir", None)
    if not folder:
        return None
    name = posixpath.basename(os.path.normpath(folder))
    place = _place(folder, name)
    if place is None:
        return None
    image = options.get("image")
    words = ["envpin kernelspec install"] + ([place] if place else []) + [f"--name {shlex.quote(name)}"]
    if image:
        words.append(f"--image {shlex.quote(str(image))}")
    display = getattr(kernel_spec, "display_name", None)
    default = f"Containerized Python ({image})" if image else "Containerized Python"
    if display and display != default:
        words.append(f"--display-name {shlex.quote(display)}")
    for key, value in options.items():
        if key == "image" or key in drop:
            continue
        value = "VALUE" if key in choose else _as_config_value(value)
        words.append(f"--config {shlex.quote(f'{renames.get(key, key)}={value}')}")
    return " ".join(words)
