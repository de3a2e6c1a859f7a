"""A warm kernel: ``envpin.entry.warm_kernel HANDOFF_DIR`` (started through ``envpin.entry.boot``) imports ipykernel, then waits to become a kernel.

The provisioner's warm pool (``envpin_provisioner.warm.pool``) starts containers
running this before any kernel asks for one, so the slow part of a start
(creating the container, starting Python, importing ipykernel, IPython, zmq:
most of a second) is already done when a notebook opens, restarts or moves.

``HANDOFF_DIR`` is a folder of the server's, mounted read-only: the kernel
cannot write there, so everything in it is the server's word.  It holds a
names.WARM_KERNEL_FIFO, ``go``.  This process opens it for reading and blocks; the server
opening it for writing is both its readiness probe (a non-blocking open
succeeds only while a reader waits) and, when it writes one JSON object and
closes, the hand-over::

    {"argv": ["-f", "/path/kernel.json", ...],   # ipykernel's arguments, as a cold start gets them
     "cwd": "/path/of/the/notebook",             # optional: the working directory (a shared pool's)
     "env": {"JPY_SESSION_NAME": "...", ...},    # optional: the kernel's variables, as a cold start has them
     "unset": ["NAME", ...]}                     # optional: variables a cold start would not have

An empty read (the readiness probe closing) means: wait again.  Then the
process is, from here on, exactly what ``python -m ipykernel_launcher`` would
have been: same interpreter, same ``sys.path``, the notebook's folder as its
working directory, same PID, so interrupts and signals reach it the same way.
"""

from __future__ import annotations

import json
import os
import sys

from envpin import names

#: Largest hand-over the server writes; a longer one is refused (it would come from no server of ours).
MAX_MESSAGE = 1 << 20


#: What a kernel cannot start without: imported first, and a failure ends this process, so an image
#: that cannot run a kernel never waits in a pool (the pool's fill fails, and starts fail as cold ones).
REQUIRED = ("ipykernel.kernelapp", "ipykernel.ipkernel", "IPython.core.interactiveshell", "zmq")
#: What else a kernel imports before it answers its first request (measured: ``sys.modules`` of a
#: fresh kernel against this list's): ipykernel's debugger pulls in debugpy and pydevd, the history
#: needs sqlite3.  Modules an image lacks are skipped: the kernel then does without them too.
PRELOAD = (
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "debugpy.server.api",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.core.logger",
    "IPython.extensions.storemagic",
    "sqlite3",
    "pdb",
    "pydoc",
    "tornado.gen",
    "tornado.queues",
    "tornado.platform.asyncio",
    # envpin's own kernel side, which a pinned or moved kernel loads at once (--ext envpin): everything
    # load_ipython_extension imports (tests/unit/test_warm_preload.py checks it).  Its package is a
    # read-only mount with no bytecode for most images' Pythons, so each module left out here was
    # compiled after the hand-over, on a move's critical path (35 modules, about 100 ms, measured).
    "envpin.notebook.magics",
    "envpin.notebook.handoff",
    "envpin.notebook.pin_notes",
    "envpin.notebook.short_errors",
    "envpin.adapters",
    "envpin.adapters.executor_adapter",
    "envpin.adapters.yt_adapter",
    "envpin.adapters.ray_adapter",
    "envpin.adapters.flyte_adapter",
    "envpin.adapters.flyte2_adapter",
    "envpin.adapters.dask_adapter",
)


def _preload() -> None:
    """Import what a kernel imports before it can answer: this is the time the pool saves."""
    import importlib

    for name in REQUIRED:
        importlib.import_module(name)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _wait(handoff_dir: str) -> dict:
    path = os.path.join(handoff_dir, names.WARM_KERNEL_FIFO)
    while True:
        fd = os.open(path, os.O_RDONLY)  # blocks until the server opens it for writing
        try:
            chunks, size = [], 0
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_MESSAGE:
                    raise SystemExit(f"envpin.entry.warm_kernel: a hand-over larger than {MAX_MESSAGE} bytes in {path}")
        finally:
            os.close(fd)
        if chunks:  # nothing: the server only checked that we wait
            message = json.loads(b"".join(chunks))
            if not isinstance(message, dict) or not isinstance(message.get("argv"), list):
                raise SystemExit(f"envpin.entry.warm_kernel: not a hand-over from envpin: {message!r:.200}")
            return message


def _become_kernel(message: dict) -> None:
    for name in message.get("unset") or ():
        os.environ.pop(str(name), None)
    os.environ.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
    cwd = message.get("cwd")
    if cwd:
        os.chdir(cwd)
    sys.argv = [sys.executable, *[str(a) for a in message["argv"]]]
    from envpin.internals import IPYKERNEL

    IPYKERNEL.get("launch_new_instance")(argv=sys.argv[1:])


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m envpin.entry.warm_kernel HANDOFF_DIR")
    # Started through envpin.entry.boot: the working folder (the notebook's, which its kernel can write) is not on
    # sys.path, so what follows imports only the image's and envpin's own modules (IPython adds the
    # working folder itself later, for the notebook's namespace, as in a cold kernel).
    _preload()
    _become_kernel(_wait(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
