"""What every container envpin starts has in common, as ``containers.create`` keyword arguments.

Kernels (the provisioner), respawned scripts (``envpin.use_image``) and
fingerprint probes all run Python in a user's image that knows nothing of
envpin, as the invoking user.  So each gets:

* envpin's kernel-side package mounted read-only and put on ``PYTHONPATH``
  (after the image's own entries are kept), never installed into the image;
* ``ENVPIN_IMAGE`` / ``ENVPIN_IMAGE_ID`` / ``YT_JOB_DOCKER_IMAGE``;
* the invoking uid:gid, and a private tmpfs ``HOME`` because that uid may not
  exist in the image while IPython writes under ``$HOME``;
* docker-init as PID 1 (signals forwarded, zombies reaped), no privileges;
* the ``envpin.*`` labels with the owning process and the proof that envpin
  made the container (``envpin.host.labels.signed``), for ``envpin gc``.

Pure data (dicts of plain values): no Docker SDK needed to build them.
"""

from __future__ import annotations

import os
from typing import Any

from envpin import names
from envpin.host import labels


def envpin_package_dir() -> str:
    return names.PACKAGE_DIR


def image_env_value(image_env: list[str] | tuple[str, ...], name: str) -> str | None:
    for entry in image_env or ():
        key, _, value = entry.partition("=")
        if key == name:
            return value
    return None


def base_options(
    *,
    image_id: str,
    reference: str,
    immutable: str,
    role: str,
    image_env: list[str] | tuple[str, ...] = (),
    user: str | None = None,
    cwd: str | None = None,
    cwd_source: str | None = None,
    mount_envpin: bool = True,
    owner_pid: int | None = None,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` shared by every envpin container.

    Mounts are plain dicts in the Engine API's shape (``Target``/``Source``/
    ``Type``/``ReadOnly``), which ``docker.types.Mount`` also is.  ``cwd`` is
    mounted at its own path; ``cwd_source``, when given, is the folder's
    link-free path on the host (the server's pinned one), mounted there instead.
    """
    user = user or f"{os.getuid()}:{os.getgid()}"
    uid, _, gid = user.partition(":")
    env = {
        names.IMAGE: reference,
        names.IMAGE_ID: immutable,
        names.YT_JOB_DOCKER_IMAGE: reference,
        "HOME": names.CONTAINER_HOME,
    }
    mounts: list[dict[str, Any]] = []
    if mount_envpin:
        mounts.append(
            {
                "Target": f"{names.CONTAINER_PYTHONPATH}/envpin",
                "Source": envpin_package_dir(),
                "Type": "bind",
                "ReadOnly": True,
            }
        )
        # The image's own entries are kept, but not an empty or relative one: Python reads those as the
        # working folder (the notebook's, which the kernel writes) and a folder below it.
        image_path = ":".join(
            p for p in (image_env_value(image_env, "PYTHONPATH") or "").split(":") if p.startswith("/")
        )
        env["PYTHONPATH"] = names.CONTAINER_PYTHONPATH + (f":{image_path}" if image_path else "")
    if cwd:
        mounts.append({"Target": cwd, "Source": cwd_source or cwd, "Type": "bind", "ReadOnly": False})
    return dict(
        image=image_id,
        environment=env,
        # Signed last: the proof covers every envpin.* label, extra ones included (see envpin.host.labels).
        labels=labels.signed(
            {
                names.LABEL_ROLE: role,
                names.LABEL_IMAGE: reference,
                **labels.owner_labels(owner_pid),
                **(extra_labels or {}),
            }
        ),
        mounts=mounts,
        working_dir=cwd or None,
        user=user,
        init=True,
        tmpfs={names.CONTAINER_HOME: f"rw,exec,mode=0700,uid={uid},gid={gid or uid}"},
        security_opt=["no-new-privileges"],
        privileged=False,
    )
