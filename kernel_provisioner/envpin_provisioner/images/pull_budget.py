"""Pulls a kernel causes: counted, bounded in number and bytes, spaced out, and undone when the move is not made.

``%use_image IMAGE --pull`` (or a missing image with ``pull_policy``
``if-missing``) makes the engine download an image because a kernel asked:
code in a notebook, maybe not the user's.  Without a bound, a kernel could
fill the engine's disk with refused requests (each pull stays on the
engine) or keep a registry busy.  So each kernel has a :class:`PullBudget`
(kept by its provisioner, across restarts and moves):

* at most ``max_pulls`` pulls, and at most ``max_bytes`` downloaded (the
  compressed layer sizes the registry announces; a pull that would pass the
  bound is cancelled as soon as its layers' sizes say so);
* at least ``interval`` seconds between two pulls;
* every pull of one request is recorded (:class:`PullRecord`) with what the
  engine had before it, and a request that does not end in the kernel using
  the image (refused, failed, an error) removes what it pulled: the
  reference is untagged from the new image, which the engine deletes when
  nothing else names it and no container uses it (the engine refuses to
  delete an image in use, and envpin never forces it); a tag that named an
  older image before the pull is put back on that image.

Pulls at a kernel's start are not counted here: they are of the kernel's
configured image (someone chose it), and a pin file never causes a pull of
an image the engine lacks (``images.selection``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from envpin.images import references
from envpin_provisioner import engine
from envpin_provisioner.errors import ImageUnavailable


class PullRefused(ImageUnavailable):
    """This kernel may not cause another pull now (count, bytes or rate).

    A kernel's pulls (``%use_image --pull``, or ``%use_image`` of an image the engine lacks) are
    bounded by ``max_pulls_per_kernel``, ``max_pull_bytes`` and ``pull_interval``.

    Fix: wait the time the message names, ask whoever runs the server to pull the image
    (``docker pull``), or raise the limits in the server's configuration.
    """


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class PullBudget:
    """One kernel's allowance of pulls; thread-safe (pulls run in worker threads)."""

    def __init__(self, max_pulls: int, max_bytes: int, interval: float) -> None:
        self.max_pulls = max_pulls
        self.max_bytes = max_bytes
        self.interval = interval
        self.pulls = 0
        self.bytes = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def admit(self, reference: str) -> int:
        """Count one pull of ``reference`` and return the bytes it may download; raise PullRefused."""
        fix = (
            "Pull it on the engine yourself (docker pull), or raise the bound in the kernel's configuration "
            "(max_pulls_per_kernel, max_pull_bytes, pull_interval); a new kernel starts with a new allowance."
        )
        with self._lock:
            if self.pulls >= self.max_pulls:
                raise PullRefused(
                    f"envpin will not pull '{reference}': this kernel has caused {self.pulls} pull(s), the most "
                    f"max_pulls_per_kernel={self.max_pulls} allows. {fix}"
                )
            if self.bytes >= self.max_bytes:
                raise PullRefused(
                    f"envpin will not pull '{reference}': this kernel's pulls downloaded {_mib(self.bytes)}, the "
                    f"most max_pull_bytes={_mib(self.max_bytes)} allows. {fix}"
                )
            now = time.monotonic()
            if self._last is not None and now - self._last < self.interval:
                wait = self.interval - (now - self._last)
                raise PullRefused(
                    f"envpin will not pull '{reference}' yet: this kernel pulled an image {now - self._last:.1f} s "
                    f"ago and pulls are spaced {self.interval:g} s apart (pull_interval). Try again in "
                    f"{wait:.0f} s."
                )
            self.pulls += 1
            self._last = now
            return self.max_bytes - self.bytes

    def charge(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += max(0, nbytes)

    def record(self) -> PullRecord:
        """A record for the pulls of one request."""
        return PullRecord(self)


@dataclass
class _Pull:
    reference: str  #: as pulled (``references.Reference.engine_name``)
    before_id: str | None  #: the image the reference named before the pull
    before_ids: frozenset[str]  #: every image id the engine had before the pull


@dataclass
class PullRecord:
    """The pulls of one request, and what the engine held before each (to undo them)."""

    budget: PullBudget
    pulls: list[_Pull] = field(default_factory=list)
    _downloaded: int = 0

    def before_pull(self, client: Any, reference: str) -> int:
        """Admit a pull of ``reference`` (raise PullRefused) and note the engine's images first.  Blocking."""
        allowance = self.budget.admit(reference)
        before_ids = frozenset(client.api.images(quiet=True))
        self.pulls.append(_Pull(reference, _local_id(client, reference), before_ids))
        self._downloaded = 0
        return allowance

    def downloaded(self, nbytes: int) -> None:
        """The pull in progress has downloaded or announced ``nbytes`` so far (charged as it grows)."""
        if nbytes > self._downloaded:
            self.budget.charge(nbytes - self._downloaded)
            self._downloaded = nbytes

    def undo(self, client: Any, log: logging.Logger | logging.LoggerAdapter) -> None:
        """Remove what this request pulled, newest first, where nothing else uses it.  Blocking; never raises."""
        while self.pulls:
            pull = self.pulls.pop()
            try:
                _undo(client, pull, log)
            except engine.ENGINE_ERRORS as exc:
                log.warning(
                    "envpin: could not remove the image pulled for a refused request (%s): %s", pull.reference, exc
                )

    def keep(self) -> None:
        """The request used what it pulled: nothing to undo."""
        self.pulls.clear()


def _local_id(client: Any, reference: str) -> str | None:
    try:
        return client.images.get(reference).id
    except docker.errors.ImageNotFound:
        return None


def _undo(client: Any, pull: _Pull, log: logging.Logger | logging.LoggerAdapter) -> None:
    now = _local_id(client, pull.reference)
    if now is None or now == pull.before_id:
        return  # nothing new under that name (the pull failed, or brought what was there)
    if client.containers.list(all=True, filters={"ancestor": now}, ignore_removed=True):
        log.info("envpin: left the image pulled as %s on the engine: a container uses it", pull.reference)
        return
    if now not in pull.before_ids:
        try:
            # Untag, never force: the engine deletes the image only when no other name holds it.
            client.images.remove(pull.reference)
        except docker.errors.APIError as exc:  # in use since the look above (409): it stays
            log.info("envpin: left the image pulled as %s on the engine: %s", pull.reference, exc)
            return
        log.info("envpin: removed the image pulled as %s for a request that did not use it", pull.reference)
    ref = references.parse(pull.reference)
    if pull.before_id is not None and ref.repository and not ref.digest:  # the tag moved: put it back
        try:
            client.images.get(pull.before_id).tag(ref.repository, ref.tag_or_latest)
        except docker.errors.ImageNotFound:
            pass
