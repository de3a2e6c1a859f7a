"""The server's half of the ``%use_image`` conversation (see ``envpin.notebook.control``), hardened.

The control folder is mounted into the kernel's container, writable by the
kernel: everything in it is hostile input.  So:

* the folder is opened once, when the server creates it, and used through
  that descriptor only (``ControlChannel``): the kernel cannot swap the
  folder, or any name in it, for a link to somewhere else on the host;
* requests are taken with ``safe_files.take`` (no link followed, no FIFO
  opened, at most ``MAX_REQUEST_BYTES``) and parsed against a strict schema
  (``ControlRequest.parse``): known fields only, each of its type and length,
  an ``id`` of exactly 32 hex digits, since it becomes part of a file name;
* answers are written with ``safe_files.write_atomic`` under a name made
  from that id, and at most ``MAX_PENDING_ANSWERS`` unread answer files are
  left, so a kernel that never reads them cannot fill a disk;
* the rate is bounded: the watcher takes one request per tick, and after a
  burst of bad ones it slows down, so a kernel cannot make the server spin;
* what a request may *not* say: where the notebook is, or which folder to
  write a pin into.  Those are what jupyter_server told the provisioner when
  it started the kernel.

A bad request gets an ``error`` answer when it carries a valid id (else it
is dropped) and the watcher keeps serving.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from envpin import safe_files
from envpin.notebook import control
from envpin.session.options import OptionError, SessionOptions

#: A request is a few hundred bytes.
MAX_REQUEST_BYTES = control.MAX_FILE_BYTES
#: Unread answer files kept at most; older ones are removed when more are written.
MAX_PENDING_ANSWERS = 32
#: Bad requests in a row tolerated at full speed; after that one request per BACKOFF_SECONDS.
BAD_BURST = 20
BACKOFF_SECONDS = 1.0

_PYTHON_VERSION = re.compile(r"^[0-9]{1,2}\.[0-9]{1,3}\.[0-9]{1,3}[a-z0-9+.]{0,16}$")
_MAX_IMAGE = 512


class BadRequest(ValueError):
    """A control request that does not follow the schema; ``request_id`` when one could be read."""

    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class ControlRequest:
    """One ``%use_image`` request, validated."""

    id: str
    image: str
    allow_restart: bool = False
    pull: bool = False
    python: str | None = None
    options: SessionOptions = field(default_factory=SessionOptions)

    _FIELDS = frozenset({"id", "image", "allow_restart", "pull", "python", "options"})

    @classmethod
    def parse(cls, raw: bytes) -> ControlRequest:
        """Parse and validate ``raw``; raise BadRequest naming the first problem."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("the request is not JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("the request is not a JSON object")
        rid = data.get("id")
        if not isinstance(rid, str) or not control.REQUEST_ID.match(rid):
            raise BadRequest("the request has no valid id (32 lowercase hex digits)")
        unknown = sorted(set(data) - cls._FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(repr(u)[:40] for u in unknown[:5])}", rid)
        image = data.get("image")
        if not isinstance(image, str) or not image.strip() or len(image) > _MAX_IMAGE or not image.isprintable():
            raise BadRequest(f"'image' must be an image name of 1 to {_MAX_IMAGE} printable characters", rid)
        for flag in ("allow_restart", "pull"):
            if not isinstance(data.get(flag, False), bool):
                raise BadRequest(f"'{flag}' must be true or false", rid)
        python = data.get("python")
        if python is not None and (not isinstance(python, str) or not _PYTHON_VERSION.match(python)):
            raise BadRequest("'python' must be a Python version like 3.11.2", rid)
        return cls(
            id=rid,
            image=image.strip(),
            allow_restart=data.get("allow_restart", False),
            pull=data.get("pull", False),
            python=python,
            options=cls._parse_options(data.get("options"), rid),
        )

    @staticmethod
    def _parse_options(raw: Any, rid: str) -> SessionOptions:
        try:
            return SessionOptions.parse(raw, strict_schema=True)
        except OptionError as exc:
            raise BadRequest(str(exc), rid) from None


class ControlChannel:
    """The server's handle on one kernel's control folder: a descriptor, never a path."""

    def __init__(self, path: str, log: Any, owner: tuple[int, int] | None = None):
        self.path = path
        self.log = log
        self.owner = owner  #: the kernel's (uid, gid) when it is not the server's: answers are given to it
        self._fd: int | None = safe_files.open_dir(path, nofollow=True)
        self._answers: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._bad_in_a_row = 0
        self._last_warning = 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def delay(self) -> float:
        """How long the watcher waits before looking again: longer after a burst of bad requests."""
        return BACKOFF_SECONDS if self._bad_in_a_row >= BAD_BURST else 0.05

    def take_request(self) -> ControlRequest | None:
        """The next valid request, or None.  A bad one is answered (when it has an id) and dropped."""
        raw = self._take_raw()
        if raw is None:
            return None
        return self.parse(raw)

    def _take_raw(self) -> bytes | None:
        """The bytes of the request file, taken away; None when there is none (or it was refused)."""
        if self._fd is None:
            return None
        try:
            return safe_files.take(self._fd, control.REQUEST, MAX_REQUEST_BYTES)
        except safe_files.UnsafeFile as exc:
            self._bad(f"refused {control.REQUEST}: {exc.strerror}")
            return None
        except OSError as exc:  # e.g. a folder planted at the name: rename refuses it
            self._bad(f"cannot take {control.REQUEST}: {exc.strerror}")
            return None

    def parse(self, raw: bytes) -> ControlRequest | None:
        """``raw`` as a valid request, or None: a bad one is answered (when it has an id) and dropped."""
        try:
            request = ControlRequest.parse(raw)
        except BadRequest as exc:
            self._bad(f"bad %use_image request: {exc}")
            if exc.request_id:
                self.respond(exc.request_id, status="error", message=f"envpin: bad %use_image request: {exc}.")
            return None
        self._bad_in_a_row = 0
        return request

    def respond(self, request_id: str, **answer: Any) -> None:
        """Write an answer for ``request_id`` (a validated id); never raises for a hostile folder."""
        if not control.REQUEST_ID.match(request_id):
            return
        name = control.response_name(request_id)
        if not self._write_answer(name, json.dumps({"id": request_id, **answer}).encode()):
            return
        self._answers[name] = None
        self._answers.move_to_end(name)
        while len(self._answers) > MAX_PENDING_ANSWERS:
            old, _ = self._answers.popitem(last=False)
            self._remove_answer(old)

    def _write_answer(self, name: str, data: bytes) -> bool:
        """Put one answer file in the folder; False when it could not be written.  Never raises."""
        if self._fd is None:
            return False
        try:
            safe_files.write_atomic(self._fd, name, data, mode=0o600, owner=self.owner)
        except OSError as exc:  # a folder planted at the name, a full disk: the kernel's loss only
            self._bad(f"cannot answer request {name}: {exc.strerror}")
            return False
        return True

    def _remove_answer(self, name: str) -> None:
        if self._fd is not None:
            safe_files.remove(self._fd, name)

    def follow(self, container: Any) -> None:
        """``container`` is now the kernel's (a start, a restart, a move).  Here nothing: the folder is shared."""

    def carry_handoff(self, old: Any) -> None:
        """After a move: bring the old kernel's ``handoff.json`` to the new one.  Here nothing: they share the folder."""

    def _bad(self, message: str) -> None:
        self._bad_in_a_row += 1
        now = time.monotonic()
        if now - self._last_warning > 10:  # one line per 10 s: a flood must not flood the log
            self._last_warning = now
            self.log.warning("envpin: control folder %s: %s", self.path, message)
