"""envpin, kernel side: what runs inside the notebook's kernel (``%load_ext envpin``).

This package is mounted read-only into kernel and job containers and put on
their ``PYTHONPATH`` by the envpin provisioner, so it must import with the
standard library alone (IPython is there wherever a kernel is).  It never
imports the server side (``envpin_provisioner``).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def in_container() -> bool:
    """True inside a Docker (``/.dockerenv``) or Podman (``/run/.containerenv``) container."""
    return os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")


def kernel_image() -> dict:
    """The image this process runs in, as the provisioner declared it.

    ``reference``: as written in the kernelspec/config (``ENVPIN_IMAGE``);
    ``id``: what it resolved to when the kernel started (``ENVPIN_IMAGE_ID``).
    Both are ``None`` outside an envpin container.
    """
    return {"reference": os.environ.get("ENVPIN_IMAGE"), "id": os.environ.get("ENVPIN_IMAGE_ID")}


def load_ipython_extension(ipython) -> None:  # pragma: no cover - filled in by the %use_image work
    """``%load_ext envpin``: the magics arrive with the %use_image work (issue 6)."""


def unload_ipython_extension(ipython) -> None:  # pragma: no cover
    pass
