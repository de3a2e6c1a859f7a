"""The pulls kernel starts are waiting for, in this server process: what JupyterLab shows as notifications.

A pull during ``%use_image`` is reported by the kernel's move server (its
``Activity``) and by the kernel's own progress line; a pull during a kernel
*start* has neither: the kernel does not exist yet, and JupyterLab only
shows "Starting" until the start ends, however many gigabytes are coming.
So a start that pulls records its progress here (``tracked``), and the
JupyterLab extension's ``GET /envpin/api/pulls`` reports it while the page
waits for a kernel.

Everything here is in memory and bounded: the pulls in flight (one per start,
removed when it ends, however it ends) and the last ``KEEP_ENDED`` that ended
(with their outcome, for ``ENDED_FOR`` seconds).  Names and messages are
escaped and cut on the way in.  Written from the start's worker thread, read
from the event loop: under a lock.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from envpin import printable

#: Ended pulls kept for the page to show their outcome.
KEEP_ENDED = 16
#: Seconds an ended pull is still reported.
ENDED_FOR = 60.0


@dataclass
class StartPull:
    """One start's pull: the image, where it is (the pull's own message, its share of the layers' bytes)."""

    serial: int
    image: str
    kernel_id: str | None
    started: float
    message: str = ""
    fraction: float | None = None
    #: ``pulling``; then ``done`` or ``failed``
    state: str = "pulling"
    ended: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_lock = threading.Lock()
_serials = itertools.count(1)
_running: dict[int, StartPull] = {}
_ended: collections.deque[StartPull] = collections.deque(maxlen=KEEP_ENDED)


@contextmanager
def tracked(image: str, kernel_id: str | None) -> Iterator[Callable[[str, float | None], None]]:
    """Around a start's image resolution: the progress callback its pulls report to.

    Nothing is reported until the callback is called (a start that finds its
    image on the engine never shows up); when the block ends, a pull that
    began is kept as ``done`` or ``failed`` for a while.
    """
    pull = StartPull(
        serial=next(_serials), image=printable.one_line(image, 300), kernel_id=kernel_id, started=time.time()
    )

    def progress(message: str, fraction: float | None = None) -> None:
        with _lock:
            pull.message = printable.one_line(message, 500)
            pull.fraction = None if fraction is None else min(max(float(fraction), 0.0), 1.0)
            _running[pull.serial] = pull

    failed = True
    try:
        yield progress
        failed = False
    finally:
        with _lock:
            if _running.pop(pull.serial, None) is not None:
                pull.state, pull.ended, pull.fraction = ("failed" if failed else "done"), time.time(), None
                _ended.append(pull)


def reset() -> None:
    """Forget every pull (``envpin_provisioner.reset_caches``, for tests)."""
    with _lock:
        _running.clear()
        _ended.clear()


def report() -> dict[str, list[dict[str, Any]]]:
    """The pulls in flight and those that ended in the last ``ENDED_FOR`` seconds."""
    now = time.time()
    with _lock:
        running = [p.as_dict() for p in sorted(_running.values(), key=lambda p: p.serial)]
        ended = [p.as_dict() for p in _ended if p.ended is not None and now - p.ended < ENDED_FOR]
    return {"pulls": running[:KEEP_ENDED] + ended}
