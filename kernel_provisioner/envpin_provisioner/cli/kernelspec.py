"""Kernelspecs that start ipykernel in a container of an image.

A kernelspec written here carries two ways in:

* ``metadata.kernel_provisioner`` names the ``envpin-docker`` provisioner with
  the image in its ``config``: Jupyter Server, JupyterLab, nbclient and
  papermill (jupyter_client >= 7) use it;
* ``argv`` runs ``envpin launch``, a small foreground process that starts the
  same container and forwards signals to it: clients that ignore provisioners
  (VS Code, old jupyter_client) run this, and still land in the image.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from envpin.entry import boot
from envpin_provisioner.images.pulling import check_reference

PROVISIONER_NAME = "envpin-docker"
STATIC_KERNELSPEC = "containerized-python"


def default_name(image: str) -> str:
    """A kernelspec name for ``image``: ``envpin-`` plus the reference with odd characters dashed."""
    return "envpin-" + re.sub(r"[^a-zA-Z0-9._-]+", "-", image).strip("-").lower()


def kernelspec_dict(
    image: str | None,
    display_name: str,
    config: dict[str, Any] | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """The kernel.json content for ``image`` (``None``: the configured default image)."""
    config = dict(config or {})
    # Started in the notebook's folder, which the kernel can write: nothing may be imported from it (boot).
    argv = boot.argv(python or sys.executable, "envpin_provisioner", "launch")
    if image:
        check_reference(image)
        config["image"] = image
        argv += ["--image", image]
    argv += ["-f", "{connection_file}"]
    return {
        "argv": argv,
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
        },
    }


def install(
    image: str | None,
    name: str | None = None,
    display_name: str | None = None,
    user: bool = False,
    prefix: str | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """Install a kernelspec for ``image``; return the directory it was written to."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = name or (default_name(image) if image else STATIC_KERNELSPEC)
    if not re.fullmatch(r"[a-zA-Z0-9._-]+", name):
        raise ValueError(f"Kernelspec name '{name}' may only contain letters, digits, '.', '_' and '-'.")
    display_name = display_name or (f"Containerized Python ({image})" if image else "Containerized Python")
    spec = kernelspec_dict(image, display_name, config)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        return KernelSpecManager().install_kernel_spec(str(src), name, user=user, prefix=prefix)
