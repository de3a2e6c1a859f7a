"""The server's ZMQ sockets to one kernel reconnect within milliseconds, so a ``%use_image`` move is quick.

A move starts the successor on the same socket names and the old kernel
exits (``envpin.notebook.handoff``): every client socket then loses its
connection and reconnects, by name, to the successor.  libzmq waits
``ZMQ_RECONNECT_IVL`` (default 100 ms) plus a random jitter of up to as much
again before it tries, and that wait was a third of a move into a standby
(measured: the old kernel's exit to the successor's reply, 100-200 ms).
With 10 ms, doubling up to 100 ms while nothing answers (``ZMQ_RECONNECT_IVL_MAX``),
the successor is found in 10-20 ms, and a kernel that is restarting (nothing
bound for a second or more) is tried at least as often as libzmq's default
would: never later than before.  (A 1 s ceiling let a client's iopub socket
come back up to a second after its shell socket once a cold restart had taken
that long, and the first cell's output went to nobody: seen once in CI.)

Only this kernel's sockets get it.  jupyter_server shares one ZMQ context
among all its kernels, so the options are not set on the context for good:
they are its default socket options only while this kernel manager (or a
client it made) creates a socket.  Those are public methods
(``connect_shell`` ... ``connect_control``, ``client``), wrapped on the
instance; sockets are made on the event loop's thread, so nothing else
creates one in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import zmq

#: The first wait before a reconnect (ms), and the longest while the kernel does not answer (libzmq's default).
RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 100
_OPTIONS = {zmq.RECONNECT_IVL: RECONNECT_IVL_MS, zmq.RECONNECT_IVL_MAX: RECONNECT_IVL_MAX_MS}
_CONNECTS = ("connect_shell", "connect_iopub", "connect_stdin", "connect_hb", "connect_control")
_MARK = "_envpin_quick_reconnect"


@contextlib.contextmanager
def _quick_defaults(context: zmq.Context) -> Iterator[None]:
    """``context``'s default socket options include the quick reconnect, until the block ends."""
    saved = {opt: context.sockopts[opt] for opt in _OPTIONS if opt in context.sockopts}
    for opt, value in _OPTIONS.items():
        context.setsockopt(opt, value)
    try:
        yield
    finally:
        for opt in _OPTIONS:
            if opt in saved:
                context.setsockopt(opt, saved[opt])
            else:
                context.sockopts.pop(opt, None)


def _wrap(owner: Any, name: str, after: Callable[[Any], Any] | None = None) -> None:
    method = getattr(owner, name, None)
    if method is None or getattr(method, _MARK, False):
        return

    def quick(*args: Any, **kwargs: Any) -> Any:
        context = getattr(owner, "context", None)
        if not isinstance(context, zmq.Context):
            return method(*args, **kwargs)
        with _quick_defaults(context):
            made = method(*args, **kwargs)
        return after(made) if after is not None else made

    setattr(quick, _MARK, True)
    setattr(owner, name, quick)


def reconnect_quickly(kernel_manager: Any) -> None:
    """The sockets ``kernel_manager`` and its clients make from now on reconnect quickly.  Idempotent."""
    for name in _CONNECTS:
        _wrap(kernel_manager, name)

    def quick_client(client: Any) -> Any:
        for name in _CONNECTS:
            _wrap(client, name)
        return client

    _wrap(kernel_manager, "client", after=quick_client)
