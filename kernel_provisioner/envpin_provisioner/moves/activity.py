"""What a kernel's move server is doing now, and how its last request ended: for the JupyterLab extension.

The move server (``mover``) is the one place that knows a request is being
resolved, an image pulled or a kernel started in another image; the
server extension (``envpin_provisioner.lab``) reports it per kernel, so the
page can show a pull's progress and a refusal even when the request came
from a cell.  Everything here is in memory, bounded (messages are cut, one
current and one last record per kernel), and written on the event loop only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from envpin import printable

#: Longest message kept: a refusal is one paragraph (a few hundred characters).
MAX_MESSAGE = 2000


@dataclass
class Step:
    """One request of a kernel: what it asked for, where it is, how it ended."""

    image: str
    #: ``resolving``, ``pulling``, ``starting`` while it runs; then ``same``, ``moved``, ``refused`` or ``error``
    phase: str
    message: str = ""
    #: a pull's share done (bytes of its layers), None when not pulling or unknown
    fraction: float | None = None
    started: float = 0.0
    ended: float | None = None
    #: a number that grows with every request of this kernel: tells one outcome from the next
    serial: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Activity:
    """The current request (``current``) and the last one that ended (``last``) of one kernel."""

    def __init__(self) -> None:
        self.current: Step | None = None
        self.last: Step | None = None
        self._serial = 0

    def begin(self, image: str) -> None:
        self._serial += 1
        self.current = Step(
            image=printable.one_line(image, 300), phase="resolving", started=time.time(), serial=self._serial
        )

    def progress(self, phase: str, message: str = "", fraction: float | None = None) -> None:
        if self.current is None:
            return
        self.current.phase = phase
        if message:
            self.current.message = printable.one_line(message, MAX_MESSAGE)
        self.current.fraction = None if fraction is None else min(max(float(fraction), 0.0), 1.0)

    def end(self, outcome: str, message: str = "") -> None:
        """The request ended: ``same``, ``moved``, ``refused`` or ``error`` (with its one paragraph)."""
        step = self.current
        if step is None:
            return
        step.phase, step.fraction, step.ended = outcome, None, time.time()
        step.message = printable.one_line(message, MAX_MESSAGE) if message else step.message
        self.current, self.last = None, step
