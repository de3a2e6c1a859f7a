"""The kernel <-> provisioner conversation that moves a kernel into another image.

A containerized kernel cannot start containers (it has no engine access), so
``%use_image`` asks the provisioner that started it.  They share the
kernel's private channel directory (mounted into the container, 0700), and
talk through small JSON files in its ``control/`` folder, named by
``$ENVPIN_CONTROL_DIR``:

``request.json`` (kernel -> provisioner)
    ``{"id", "image", "allow_restart", "pull", "python", "options"}``: please
    pin/move to ``image``.  The provisioner treats it as hostile input: strict
    schema, unknown fields refused (``envpin_provisioner.moves.control_requests``); the
    notebook and its folder are what the server knows, never what this says.
``response-<id>.json`` (provisioner -> kernel)
    ``{"id", "status", "message", "name", "reference", "image_id", ...}`` where
    ``status`` is ``working`` (resolving or pulling; more follows), ``same``
    (already in that image: pinned), ``moving`` (a kernel in the new image is up
    and waiting: hand over and exit), ``refused`` or ``error``.
``handoff.json`` (old kernel -> new kernel)
    the ``%use_image`` request's header and routing identity, so the new kernel
    sends that cell's reply: to the client the cell simply finishes, and the
    next cell runs in the new image.

Files are written atomically (write, then rename), so a reader never sees half
of one, and read and written through ``envpin.safe_files`` (no link followed,
no special file opened, sizes bounded).  Polling files is crude but needs nothing from the image and works
the same for every engine where the directory is shared.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envpin import names, safe_files
from envpin.errors import EnvpinError

REQUEST = "request.json"
HANDOFF = "handoff.json"


def control_dir() -> Path | None:
    """The control folder when this kernel runs under the envpin provisioner, else None."""
    d = os.environ.get(names.CONTROL_DIR)
    return Path(d) if d and os.path.isdir(d) else None


#: Largest control file either side reads: a request or an answer is a few hundred bytes.
MAX_FILE_BYTES = 64 * 1024


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically, never through a link planted at ``path``."""
    with safe_files.directory(path.parent) as folder:
        safe_files.write_atomic(folder, path.name, json.dumps(data).encode())


def take_json(path: Path) -> dict[str, Any] | None:
    """Take ``path`` away and read it; None when there is none, or it is not a small JSON object file.

    See ``safe_files.take``: a rename takes exactly one version of the file, so
    an answer written between a read and a delete is never lost.
    """
    with safe_files.directory(path.parent) as folder:
        try:
            raw = safe_files.take(folder, path.name, MAX_FILE_BYTES)
        except safe_files.UnsafeFile:
            return None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def response_name(request_id: str) -> str:
    """The file name of the answers to request ``request_id`` (an id of ``new_request_id()``'s form)."""
    return f"response-{request_id}.json"


def response_path(folder: Path, request_id: str) -> Path:
    return folder / response_name(request_id)


def new_request_id() -> str:
    """32 lowercase hex digits: the only form the provisioner accepts (see REQUEST_ID)."""
    return uuid.uuid4().hex


#: What a request id must look like: it becomes part of a file name the provisioner writes.
REQUEST_ID = re.compile(r"^[0-9a-f]{32}\Z")  # \Z: "$" would take a trailing newline


def ask(
    folder: Path,
    request: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    first_answer_within: float = 10.0,
    idle_timeout: float = 600.0,
) -> dict[str, Any]:
    """Send ``request`` to the provisioner and wait for its final answer.

    ``working`` answers (resolving, pulling: ``message`` and maybe ``fraction``)
    keep the wait alive and are passed to ``on_progress``.  No answer at all within ``first_answer_within``
    seconds means no provisioner is listening: say so instead of hanging.
    """
    request = dict(request, id=new_request_id())
    path = response_path(folder, request["id"])
    try:
        write_json(folder / REQUEST, request)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise EnvpinError(
            f"This kernel's control folder {folder} is full (it holds at most a few thousand files, and code in "
            "this kernel filled it), so the request cannot reach the envpin provisioner. Delete the files that "
            "are not response-*.json there (they are this kernel's own), or restart the kernel, and try again."
        ) from None
    started = last = time.monotonic()
    answered = False
    while True:
        data = take_json(path)
        if data is not None:
            answered, last = True, time.monotonic()
            if data.get("status") != "working":
                return data
            if on_progress and data.get("message"):
                on_progress(data)
        now = time.monotonic()
        if not answered and now - started > first_answer_within:
            try:
                (folder / REQUEST).unlink()
            except FileNotFoundError:
                pass
            raise EnvpinError(
                "The envpin provisioner that started this kernel did not answer within "
                f"{first_answer_within:.0f}s, so the kernel cannot move to another image. Is the Jupyter server "
                "running an envpin older than this kernel's? Restart the kernel and try again."
            )
        if answered and now - last > idle_timeout:
            raise EnvpinError("The envpin provisioner stopped answering while preparing the image.")
        time.sleep(0.01)  # a move's "moving" answer is on its critical path; a few stats per 10 ms cost nothing
