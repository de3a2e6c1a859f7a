"""How the session's pin is shown: ``%use_image``'s table and a pull's progress bar.

Rich output in a notebook (``_repr_html_``), aligned text in a terminal.
Kept apart from the pin state (``session``) so the state has no display
code and no upward imports.
"""

from __future__ import annotations

import html
import os
import platform

from envpin import names
from envpin.session import stamping
from envpin.session.state import Pin, runs_in_image


def _executor_mode(pin: Pin) -> str:
    if runs_in_image(pin.name, pin.reference):
        return "worker processes in this kernel's container (envpin.submit)"
    return f"worker containers of {pin.name} (envpin.submit)"


class Status:
    """What ``%use_image`` shows: a table in a notebook, aligned text in a terminal."""

    def __init__(self, pin: Pin | None, title: str = "envpin"):
        self.pin = pin
        self.title = title

    def rows(self) -> list[tuple[str, str]]:
        kernel_ref = os.environ.get(names.IMAGE_NAME) or os.environ.get(names.IMAGE)
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
        rows += [("stamping", line) for line in stamping.describe()]
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


#: How a request's line looks in a notebook: like the stream output beside it (monospace, no code background).
_LINE = "font-family: var(--jp-code-font-family, monospace); font-size: var(--jp-code-font-size, 13px)"

#: The MIME type of a %use_image request's state in its progress line, for envpin's JupyterLab extension
#: (notifications for pulls, moves and refusals).  JupyterLab shows the HTML beside it; the page reads this.
PROGRESS_MIME = "application/vnd.envpin.progress+json"


class Progress:
    """A ``%use_image`` request under its cell: a line updated in place while it works, then its outcome.

    Rich output (an HTML progress bar, and ``PROGRESS_MIME`` for envpin's
    JupyterLab extension) in a notebook, text lines in a terminal.  The line
    never stays saying "resolving ...": :meth:`finish` replaces it with how
    the request ended.
    """

    def __init__(self, image: str = ""):
        self.handle = None
        self.image = image
        self.message = ""
        self.fraction: float | None = None
        self.state = "working"
        self.shown: object | None = None  #: what the finished line shows (the pin's table), else the message

    def update(self, message: str, fraction: float | None = None) -> None:
        from IPython.display import display

        self.message, self.fraction = message, fraction
        if self.handle is None:
            self.handle = display(self, display_id=True)
        elif self.handle is not None:
            self.handle.update(self)

    def finish(self, state: str, message: str, shown: object | None = None) -> None:
        """Show how the request ended, in place of its progress line (or as a new output when there was none).

        ``state``: ``same`` (pinned), ``moved``, ``refused`` (needs --restart) or ``error``; ``message``: the
        whole story (for the page's notification); ``shown``: what the cell shows instead, when not the message
        (the pin's table; a short line where the error's paragraph follows below the cell anyway).
        """
        from IPython.display import display

        self.state, self.message, self.fraction, self.shown = state, message, None, shown
        if self.handle is None:
            self.handle = display(self, display_id=True)
        else:
            self.handle.update(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {
            PROGRESS_MIME: {
                "state": self.state,
                "image": self.image,
                "message": self.message,
                "fraction": self.fraction,
            }
        }

    def __repr__(self) -> str:
        if self.shown is not None:
            return self.shown if isinstance(self.shown, str) else repr(self.shown)
        pct = f" ({self.fraction:.0%})" if self.fraction is not None else ""
        return self.message + pct

    def _repr_html_(self) -> str:
        if self.shown is not None and hasattr(self.shown, "_repr_html_"):
            return self.shown._repr_html_()
        if self.shown is not None:
            return (
                f"<div class='envpin-progress envpin-{self.state}' style='{_LINE}'>{html.escape(str(self.shown))}</div>"
            )
        bar = (
            f"<progress value='{self.fraction:.3f}' max='1' style='width:20em'></progress> "
            if self.fraction is not None
            else ""
        )
        return (
            f"<div class='envpin-progress envpin-{self.state}' style='{_LINE}'>{bar}{html.escape(self.message)}</div>"
        )
