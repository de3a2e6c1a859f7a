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
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from envpin import printable
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
        check_reference(image, "install")
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


#: The shipped kernelspec's folder: its logos are copied into every kernelspec written here.
LOGOS = Path(__file__).resolve().parents[3] / "kernelspecs" / STATIC_KERNELSPEC
LOGO_FILES = ("logo-svg.svg", "logo-32x32.png", "logo-64x64.png")


def _logo_folder() -> Path | None:
    """Where the logos are: the checkout's kernelspecs/ folder, else the installed generic kernelspec's."""
    if all((LOGOS / f).is_file() for f in LOGO_FILES):
        return LOGOS
    installed = Path(sys.prefix) / "share" / "jupyter" / "kernels" / STATIC_KERNELSPEC
    return installed if all((installed / f).is_file() for f in LOGO_FILES) else None


def destination(name: str, user: bool = False, prefix: str | None = None) -> str:
    """The folder ``jupyter_client`` installs kernelspec ``name`` into for these options."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager()._get_destination_dir(name, user=user, prefix=prefix)


def shadowing(name: str, target: str) -> str | None:
    """The kernelspec folder Jupyter would use instead of one installed at ``target`` (None: ``target`` wins).

    Jupyter takes the first folder of its kernel path that has a kernelspec
    of that name; in a virtual environment the environment's folder comes
    before the user's (``JUPYTER_PREFER_ENV_PATH``), so ``--user`` writes a
    kernelspec that a venv's own copy (the one envpin ships) hides.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    target = os.path.realpath(target)
    for folder in KernelSpecManager().kernel_dirs:
        candidate = os.path.realpath(os.path.join(folder, name))
        if candidate == target:
            return None
        if os.path.isfile(os.path.join(candidate, "kernel.json")):
            return candidate
    return None


def in_kernel_path(target: str) -> bool:
    """Whether Jupyter looks in the folder that holds ``target`` at all."""
    from jupyter_client.kernelspec import KernelSpecManager

    parent = os.path.realpath(os.path.dirname(target))
    return any(os.path.realpath(d) == parent for d in KernelSpecManager().kernel_dirs)


def check_image(image: str, address: str | None = None) -> str:
    """Whether ``image`` can run: present on the engine, or pullable; what to tell the user.  Blocking.

    The engine is the one the kernelspec names (``address``, its ``engine``
    option: a kernel on another machine runs that machine's images), else
    the server's default.  Refused (``ImageUnavailable``) when the engine
    lacks it and no registry has it, with the engine's close local names;
    ``--no-check`` skips this (installing before the image exists).
    """
    import difflib

    import docker.errors

    from envpin_provisioner import engine
    from envpin_provisioner.errors import ImageUnavailable
    from envpin_provisioner.images import pulling

    ref = check_reference(image, "install")
    where = f"the engine at {address}" if address else "the engine"
    try:
        client = engine.shared(address).client
        if pulling.local_image(client, ref) is not None:
            return f"image {image} is on {where}"
        try:
            client.api.inspect_distribution(ref.engine_name)
            return f"image {image} is not on {where} yet; its registry has it (pulled at the first start)"
        except docker.errors.APIError as exc:
            reason = printable.one_line(exc.explanation or exc, 300)
        names = sorted({t for i in client.images.list() for t in (i.tags or [])})
    except engine.ENGINE_ERRORS as exc:
        raise ImageUnavailable(
            f"Cannot check image '{image}': {printable.one_line(exc, 300)}",
            fix="Start the engine and try again, or install without the check: --no-check.",
        ) from None
    bare = {n.rsplit(":", 1)[0]: n for n in names}
    close = difflib.get_close_matches(ref.engine_name, names, n=3, cutoff=0.6) or [
        bare[b] for b in difflib.get_close_matches(image.rsplit(":", 1)[0], list(bare), n=3, cutoff=0.6)
    ]
    hint = f" Close names on this engine: {', '.join(close)}." if close else ""
    raise ImageUnavailable(
        f"Image '{image}' is not on {where}, and it cannot be pulled ({reason}), so a kernel of it "
        f"could not start.{hint}",
        fix="Give --image an image the engine has, pull or build it first (docker pull / docker build -t), "
        "or install anyway with --no-check.",
    )


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
    logos = _logo_folder()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        for logo in LOGO_FILES if logos else ():
            shutil.copyfile(logos / logo, src / logo)  # type: ignore[operator]
        return KernelSpecManager().install_kernel_spec(str(src), name, user=user, prefix=prefix)


def envpin_specs() -> list[dict[str, Any]]:
    """Every envpin kernelspec on Jupyter's kernel path, in its order, each marked used or shadowed.

    ``{"name", "display_name", "image", "config", "path", "used"}``: ``used``
    is False for a kernelspec that an earlier folder's of the same name hides.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    out, seen = [], set()
    for folder in KernelSpecManager().kernel_dirs:
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            try:
                with open(os.path.join(path, "kernel.json")) as f:
                    spec = json.load(f)
            except (OSError, ValueError):
                continue
            prov = (spec.get("metadata") or {}).get("kernel_provisioner") or {} if isinstance(spec, dict) else {}
            used = name.lower() not in seen
            seen.add(name.lower())
            if prov.get("provisioner_name") != PROVISIONER_NAME:
                continue
            config = dict(prov.get("config") or {})
            out.append(
                {
                    "name": name,
                    "display_name": spec.get("display_name", name),
                    "image": config.pop("image", None),
                    "config": config,
                    "path": path,
                    "used": used,
                }
            )
    return out


def remove(name: str) -> tuple[str, str | None]:
    """Remove envpin kernelspec ``name`` (the one Jupyter uses); (its folder, the one Jupyter uses now or None)."""
    from jupyter_client.kernelspec import KernelSpecManager

    from envpin_provisioner.errors import EnvpinError

    used = [s for s in envpin_specs() if s["name"] == name and s["used"]]
    if not used:
        other = KernelSpecManager().find_kernel_specs().get(name)
        raise EnvpinError(
            f"There is no envpin kernelspec '{name}'"
            + (f" ({other} is not an envpin kernelspec; jupyter kernelspec remove removes it)." if other else "."),
            fix="envpin kernelspec list shows the envpin kernelspecs.",
        )
    removed = KernelSpecManager().remove_kernel_spec(name)
    return removed, KernelSpecManager().find_kernel_specs().get(name)
