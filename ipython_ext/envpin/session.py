"""The session's pin: which image this kernel's jobs are stamped with, and how it is shown.

One kernel is one process, so the pin is process state (a job submitted from
a job inherits it through ``ENVPIN_IMAGE``/``ENVPIN_IMAGE_ID`` instead).
"""

from __future__ import annotations

import html
import os
import platform
from dataclasses import dataclass, field


def _cloudpickle_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("cloudpickle")
    except Exception:
        return None


@dataclass
class Pin:
    name: str  #: as the user wrote it (maybe an alias)
    reference: str  #: the image reference it stands for
    image_id: str | None  #: digest or id it resolved to
    python: str | None  #: the image's Python version
    cloudpickle: str | None  #: the image's cloudpickle version
    #: how jobs relate to this kernel: "kernel in image" (the kernel runs in it),
    #: "host" (the kernel does not; differences were checked), "container" (a container not ours)
    mode: str
    notes: list[str] = field(default_factory=list)
    strict: bool = False  #: jobs naming another image are refused instead of warned about
    code_in_image: str | None = None  #: the image's ``ENVPIN_CODE_IN_IMAGE`` (where it keeps the project's code)
    by_digest: bool = False  #: jobs name the image by its registry digest (%use_image --by-digest)


_current: Pin | None = None


def current_pin() -> Pin | None:
    """The image this session's jobs are pinned to, or None before ``%use_image``."""
    return _current


def set_pin(pin: Pin | None) -> None:
    global _current
    _current = pin


def pin_from_environment(mode: str = "kernel in image") -> Pin | None:
    """The pin of a kernel the provisioner started in the image (None outside one)."""
    reference = os.environ.get("ENVPIN_IMAGE")
    if not reference:
        return None
    return Pin(
        name=os.environ.get("ENVPIN_IMAGE_NAME") or reference,
        reference=reference,
        image_id=os.environ.get("ENVPIN_IMAGE_ID"),
        python=platform.python_version(),
        cloudpickle=_cloudpickle_version(),
        mode=mode,
        code_in_image=os.environ.get("ENVPIN_CODE_IN_IMAGE") or None,
        strict=os.environ.get("ENVPIN_STRICT") == "1",  # %use_image --strict, carried across a move or restart
        by_digest=os.environ.get("ENVPIN_BY_DIGEST") == "1",
    )


def _executor_mode(pin: Pin) -> str:
    from . import aliases

    here = {os.environ.get("ENVPIN_IMAGE"), os.environ.get("ENVPIN_IMAGE_NAME"), os.environ.get("ENVPIN_IMAGE_ID")}
    if here & {pin.name, pin.reference, aliases.expand(pin.name)}:
        return "worker processes in this kernel's container (envpin.submit)"
    return f"worker containers of {pin.name} (envpin.submit)"


class Status:
    """What ``%use_image`` shows: a table in a notebook, aligned text in a terminal."""

    def __init__(self, pin: Pin | None, title: str = "envpin"):
        self.pin = pin
        self.title = title

    def rows(self) -> list[tuple[str, str]]:
        kernel_ref = os.environ.get("ENVPIN_IMAGE_NAME") or os.environ.get("ENVPIN_IMAGE")
        kernel_image = (
            f"{kernel_ref} ({os.environ.get('ENVPIN_IMAGE_ID', '?')})" if kernel_ref else "not in an envpin container"
        )
        if self.pin is None:
            return [("jobs pinned to", "nothing yet: %use_image IMAGE"), ("kernel runs in", kernel_image)]
        p = self.pin
        rows = [("jobs pinned to", p.name)]
        if p.reference != p.name:
            rows.append(("reference", p.reference))
        rows += [
            ("image id", p.image_id or "?"),
            ("Python", p.python or "?"),
            ("cloudpickle", p.cloudpickle or "not installed"),
            ("kernel runs in", kernel_image if p.mode != "host" else f"this host (Python {platform.python_version()})"),
            ("jobs run as", _executor_mode(p)),
        ]
        if p.by_digest:
            rows.append(("jobs name it as", p.image_id or "?"))
        from . import hooks

        rows += [("stamping", line) for line in hooks.describe()]
        rows += [("note", n) for n in p.notes]
        return rows

    def __repr__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join([self.title] + [f"  {k.ljust(width)}  {v}" for k, v in rows])

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
            f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
            for k, v in self.rows()
        )
        return f"<table class='envpin-status'><caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>{body}</table>"


class Progress:
    """A pull's progress under the cell: an HTML progress bar updated in place, or text lines in a terminal."""

    def __init__(self):
        self.handle = None
        self.message, self.fraction = "", None

    def update(self, message: str, fraction: float | None = None) -> None:
        from IPython.display import display

        self.message, self.fraction = message, fraction
        if self.handle is None:
            self.handle = display(self, display_id=True)
        elif self.handle is not None:
            self.handle.update(self)

    def __repr__(self) -> str:
        pct = f" ({self.fraction:.0%})" if self.fraction is not None else ""
        return self.message + pct

    def _repr_html_(self) -> str:
        bar = (
            f"<progress value='{self.fraction:.3f}' max='1' style='width:20em'></progress> "
            if self.fraction is not None
            else ""
        )
        return f"<div class='envpin-progress'>{bar}<code>{html.escape(self.message)}</code></div>"
