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

An empty read (the readiness probe closing) means: wait again.

On an engine of another machine (``envpin_provisioner.remote.remote_pool``) no
folder of the server's can be mounted, so ``warm_kernel --poll DIR`` waits
otherwise: it makes ``DIR`` (0700, its own user, inside its own container's
filesystem: nothing else can write there), writes ``DIR/waiting`` once
ipykernel is imported (the server's readiness probe reads it through the
engine), then looks for ``DIR/go`` every :data:`POLL_INTERVAL` seconds.  The
server puts one archive into the container (``put_archive``): the connection
file, ``message.json`` (the hand-over above) and ``go``, in that order, so
``go`` exists only once the others are whole.  The key never passes a command
line, a variable, a label or a file outside the container.

A cold start over SSH (``envpin_provisioner.remote.ssh_kernel``) runs
``warm_kernel --given DIR``: the container starts at once, imports ipykernel,
and the same kind of archive (key at ``/tmp/envpin-kernel.json``, then
``DIR/message.json`` and ``DIR/go``, ``DIR`` made 0700 by the archive) goes in
meanwhile, off the start's path, instead of into the created container before
its start.  It imports only what every kernel imports: envpin's own kernel
side is left to a kernel that loads the extension, as in a local cold start.

Then the
process is, from here on, exactly what ``python -m ipykernel_launcher`` would
have been: same interpreter, same ``sys.path``, the notebook's folder as its
working directory, same PID, so interrupts and signals reach it the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time

from envpin import names

#: Largest hand-over the server writes; a longer one is refused (it would come from no server of ours).
MAX_MESSAGE = 1 << 20
#: ``--poll``: seconds between two looks for ``go`` (a stat each: ~100 a second cost nothing measurable,
#: and a hand-over waits at most this long to be noticed).
POLL_INTERVAL = 0.01
#: ``--given``: seconds a cold start waits for its hand-over (the server sends it right after the start).
GIVEN_TIMEOUT = 60.0
#: ``--poll``: the names in DIR (``envpin_provisioner.remote.remote_pool`` writes the same ones).
POLL_READY, POLL_MESSAGE, POLL_GO = "waiting", "message.json", "go"


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
)
#: envpin's own kernel side, which a pinned or moved kernel loads at once (--ext envpin): everything
#: load_ipython_extension imports (tests/unit/test_warm_preload.py checks it).  Its package is a
#: read-only mount with no bytecode for most images' Pythons, so each module left out here was
#: compiled after the hand-over, on a move's critical path (35 modules, about 100 ms, measured).
#: A waiting container (pool, standby) imports them before it is needed; a ``--given`` cold start does
#: not: there they would come before the kernel, which a kernel without the extension never imports.
PRELOAD_EXTENSION = (
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


def _preload(extension: bool = True) -> None:
    """Import what a kernel imports before it can answer: this is the time the pool saves.

    ``extension``: envpin's kernel side too (:data:`PRELOAD_EXTENSION`), for a container that waits.
    """
    import importlib

    for name in REQUIRED:
        importlib.import_module(name)
    for name in PRELOAD + (PRELOAD_EXTENSION if extension else ()):
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
            return _checked(json.loads(b"".join(chunks)), path)


def _checked(message: object, where: str) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("argv"), list):
        raise SystemExit(f"envpin.entry.warm_kernel: not a hand-over from envpin in {where}: {message!r:.200}")
    return message


def _make_poll_dir(folder: str) -> int:
    """Make ``folder`` (0700, ours; it must not exist: a fresh container has none); its descriptor."""
    os.mkdir(folder, 0o700)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(f"envpin.entry.warm_kernel: {folder} is not a private folder of this user")
    return fd


def _given(folder: str, timeout: float = GIVEN_TIMEOUT) -> dict:
    """``--given``: a cold start on another machine's engine; the server's archive brings ``folder`` itself.

    The container was started a moment ago and nothing but envpin's archive has been put into it, so the
    folder, once there, is the server's word; it must still be a real folder, this user's, 0700.  Bounded:
    a server that never sends the hand-over leaves a process that ends, not one that waits for good.
    """
    deadline = time.monotonic() + timeout
    go = os.path.join(folder, POLL_GO)
    while not os.path.lexists(go):
        if time.monotonic() > deadline:
            raise SystemExit(f"envpin.entry.warm_kernel: no hand-over in {folder} within {timeout:.0f}s")
        time.sleep(POLL_INTERVAL)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(f"envpin.entry.warm_kernel: {folder} is not a private folder of this user")
    return _read_hand_over(folder, fd)


def _poll(folder: str, fd: int) -> dict:
    """``--poll``: announce readiness in ``folder`` (``fd``, made by :func:`_make_poll_dir`), then wait for ``go``.

    Everything is opened relative to the folder's descriptor, without following links: the folder is
    this container's own, and nothing but the server's archive lands in it.
    """
    marker = os.open(POLL_READY, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    os.close(marker)
    while True:
        try:
            os.stat(POLL_GO, dir_fd=fd, follow_symlinks=False)
            break
        except FileNotFoundError:
            time.sleep(POLL_INTERVAL)
    return _read_hand_over(folder, fd)


def _read_hand_over(folder: str, fd: int) -> dict:
    """The hand-over in ``folder`` (``fd``), read without following links; the message and the marker go."""
    try:
        msg_fd = os.open(POLL_MESSAGE, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        raise SystemExit(
            f"envpin.entry.warm_kernel: {folder}/{POLL_GO} without a readable {POLL_MESSAGE}: {exc}"
        ) from None
    with os.fdopen(msg_fd, "rb") as f:
        data = f.read(MAX_MESSAGE + 1)
    if len(data) > MAX_MESSAGE:
        raise SystemExit(f"envpin.entry.warm_kernel: a hand-over larger than {MAX_MESSAGE} bytes in {folder}")
    try:
        message = json.loads(data)
    except ValueError:
        raise SystemExit(f"envpin.entry.warm_kernel: not a hand-over from envpin in {folder}: {data[:200]!r}") from None
    # The message and the waiting marker go; ``go`` stays.  The engine extracting the server's archive
    # creates ``go`` and then sets its owner, mode and times: removed in between, the engine's lchown
    # fails and the server's put_archive with it (a 500, "lchown .../go: no such file or directory":
    # a pooled start over SSH failed so in a benchmark run).  Every entry before ``go`` is whole by then.
    for name in (POLL_MESSAGE, POLL_READY):
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
    os.close(fd)
    return _checked(message, folder)


def _become_kernel(message: dict) -> None:
    for name in message.get("unset") or ():
        os.environ.pop(str(name), None)
    os.environ.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
    control = os.environ.get(names.CONTROL_DIR)
    if control == names.CONTAINER_CONTROL_DIR and not os.path.isdir(control):
        # On another machine's engine the control folder is in the container's own layer, relayed by the
        # server (envpin_provisioner.remote.control_relay): a pooled container makes it when it becomes a
        # kernel (a cold start's hand-over archive brings it), private to the kernel's user.
        os.mkdir(control, 0o700)
    cwd = message.get("cwd")
    if cwd:
        os.chdir(cwd)
    sys.argv = [sys.executable, *[str(a) for a in message["argv"]]]
    from envpin.internals import IPYKERNEL

    IPYKERNEL.get("launch_new_instance")(argv=sys.argv[1:])


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--given":  # a cold start there: imports while the hand-over travels
        _preload(extension=False)  # a start someone waits on: see PRELOAD_EXTENSION
        _become_kernel(_given(argv[2]))
        return
    if len(argv) == 3 and argv[1] == "--poll":  # an engine of another machine: its own folder, polled
        fd = _make_poll_dir(argv[2])  # before the imports: the folder is ours before anything else runs
        _preload()
        _become_kernel(_poll(argv[2], fd))
        return
    if len(argv) != 2:
        raise SystemExit("usage: python -m envpin.entry.warm_kernel HANDOFF_DIR | --poll DIR | --given DIR")
    # Started through envpin.entry.boot: the working folder (the notebook's, which its kernel can write) is not on
    # sys.path, so what follows imports only the image's and envpin's own modules (IPython adds the
    # working folder itself later, for the notebook's namespace, as in a cold kernel).
    _preload()
    _become_kernel(_wait(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
