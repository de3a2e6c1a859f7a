"""Text that an image, a kernel or a job produced, made safe to print on a terminal or in a log.

What an image's ``python3`` prints (a fingerprint, a container's last
output), what a kernel names (an image reference, a pin) and what a job
raises is data written by someone else.  Printed raw, a newline in it starts
a line of their choosing ("ok  kernelspec ...", a fake log record), an
escape sequence moves the cursor, rewrites or hides what was printed before,
or sets the terminal's title, and a right-to-left override reorders what the
reader sees.  So every such value goes through :func:`one_line` (a value
inside a sentence) or :func:`lines` (a block such as a log tail) before it
reaches ``print`` or a log call: control and format characters (Unicode
categories ``C*``, line and paragraph separators) are shown as Python escapes
(``\\x1b``, ``\\n``, ``\\u202e``), visible and inert, and the length is
bounded.

Standard library only: both sides of envpin print such values.
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Characters of a value shown in one line before it is cut (a fingerprint field, a reference, a message).
LINE_LIMIT = 2000
#: Lines of a block shown (its last ones: a log tail is read from the end).
BLOCK_LINES = 40


def _inert(ch: str) -> bool:
    return ch == " " or not (unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"))


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(value: Any, limit: int = LINE_LIMIT) -> str:
    """``str(value)`` with every control or format character escaped, on one line, at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    full = len(text)
    text = text[:limit]
    out = text if text.isprintable() else "".join(ch if _inert(ch) else _escape(ch) for ch in text)
    return out + (f"... ({full} characters in all)" if full > limit else "")


def lines(text: Any, prefix: str = "  | ", max_lines: int = BLOCK_LINES, limit: int = LINE_LIMIT) -> str:
    """A block of someone else's lines (a log tail): each escaped by :func:`one_line` and marked with ``prefix``.

    The prefix keeps every line visibly inside the block, so none of them can
    pass for a line of envpin's own (a log record, a doctor finding).
    """
    raw = (text if isinstance(text, str) else str(text)).split("\n")
    dropped = max(0, len(raw) - max_lines)
    shown = [prefix + one_line(line, limit) for line in raw[dropped:]]
    if dropped:
        shown.insert(0, f"{prefix}({dropped} earlier line(s) left out)")
    return "\n".join(shown)
