"""envpin's errors in a notebook: one paragraph under the cell, the traceback behind ``%tb``.

An ``EnvpinError`` raised in a cell (a Ray task refused for its runtime_env,
a job whose result cannot load here, a strict-mode image conflict) is a
message for the user, not a bug report: its text already names the thing and
the fix, and twenty frames of Ray or IPython above it only hide that.  IPython
lets one handler take over the display of chosen exception types
(``set_custom_exc``); ours shows the error's class and message, and records
the exception as the last one (``sys.last_*``, which IPython's own display
would have set), so ``%tb`` renders its full traceback the usual way.

IPython keeps a single custom-exception handler per shell.  If something else
already installed one, envpin leaves it alone (and envpin errors show as
ordinary tracebacks).  Whether the handler is envpin's is read from the shell
itself (it handles exactly ``EnvpinError``), so nothing is kept here.
"""

from __future__ import annotations

import sys

from envpin.errors import EnvpinError
from envpin.internals import IPYTHON

_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


def _handler(shell, etype, value, tb, tb_offset=None):
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # what %tb shows
    if sys.version_info >= (3, 12):
        sys.last_exc = value
    short = [f"{_RED}{etype.__name__}{_RESET}: {value}", "(an envpin error; %tb shows the full traceback)"]
    IPYTHON.attr(shell, "showtraceback")(etype, value, short)  # in a kernel: the message and the reply's ename/evalue
    return short


def _ours(shell) -> bool:
    return IPYTHON.attr(shell, "custom_exceptions", ()) == (EnvpinError,)


def install(shell) -> bool:
    """Take over the display of EnvpinError in ``shell``; False when another handler holds the slot."""
    if IPYTHON.attr(shell, "custom_exceptions", ()) not in ((), None) and not _ours(shell):
        return False
    shell.set_custom_exc((EnvpinError,), _handler)
    return True


def uninstall(shell) -> None:
    if _ours(shell):
        shell.set_custom_exc((), None)
