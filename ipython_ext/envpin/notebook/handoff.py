"""Hand a running ``%use_image`` cell from the old kernel to its successor in the new image.

When ``%use_image`` moves a kernel, the provisioner first starts the new
kernel on the same channels (same connection file, same unix socket paths:
binding takes the paths over, while clients stay connected to the old kernel
until it is gone).  Then the old kernel writes down the cell's request header
and the client's routing identity and exits at once, *without* replying; the
clients' ZMQ sockets reconnect to the new kernel, which sends the reply for
that cell.  To nbclient, papermill or JupyterLab the cell simply finishes,
and the next cell is sent to, and runs in, the new image: nothing runs in
the old image after the move, and no request is half-answered.

The one thing that cannot be handed over is a request the client had already
sent to the old kernel before the move (JupyterLab's "Run All"): those cells
get no reply and must be run again.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envpin import names
from envpin.internals import IPYKERNEL
from envpin.notebook import control


def hand_over_and_exit(shell: Any, folder: Path) -> None:
    """Record this cell's request for the successor, flush output, and end this process."""
    kernel = IPYKERNEL.attr(shell, "shell_kernel")
    parent = IPYKERNEL.attr(kernel, "get_parent")("shell")
    ident = IPYKERNEL.attr(kernel, "parent_ident")  # a mapping by channel (ipykernel 6, 7)
    if isinstance(ident, Mapping):
        ident = ident["shell"]
    if isinstance(ident, (bytes, bytearray, str)):
        ident = [ident]
    control.write_json(
        folder / control.HANDOFF,
        {
            "parent_header": json.loads(json.dumps(parent["header"], default=str)),
            "ident": [_as_bytes(i).hex() for i in ident],
            "execution_count": _current_cell_number(shell),
        },
    )
    # ipykernel's flush returns once its I/O thread has handed the output to the iopub socket; what is
    # left is ZMQ's own I/O thread writing it out, which takes well under a millisecond: 0.05 s is ample.
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.05)
    os._exit(0)  # no cleanup: closing the sockets would unlink paths the new kernel now owns


def _current_cell_number(shell: Any) -> int:
    """This cell's In[n] number: IPython 8 counts it in execution_count, IPython 9 already the next."""
    history = shell.user_ns.get("In")
    if isinstance(history, list) and len(history) > 1:
        return len(history) - 1
    return shell.execution_count


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, str):
        return frame.encode()
    return bytes(getattr(frame, "bytes", frame))


def expect_handoff(shell: Any, folder: Path, wait: float = 120.0) -> None:
    """In a kernel started by a move: answer the moved cell once the handoff arrives."""
    kernel = IPYKERNEL.attr(shell, "shell_kernel", None)
    if kernel is None or os.environ.get(names.HANDOFF_EXPECTED) != "1":
        return
    os.environ.pop(names.HANDOFF_EXPECTED, None)

    def waiter():
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            data = control.take_json(folder / control.HANDOFF)
            if data:
                # Go on counting where the old kernel stopped: In [n] numbers stay unique in the notebook.
                shell.execution_count = int(data["execution_count"]) + 1
                data["note"] = (
                    f"envpin: this kernel now runs in {os.environ.get('ENVPIN_IMAGE_NAME') or os.environ.get('ENVPIN_IMAGE')}"
                    f" ({os.environ.get('ENVPIN_IMAGE_ID')}), Python {platform.python_version()}"
                )
                loop = IPYKERNEL.attr(kernel, "shell_stream").io_loop
                loop.add_callback(_send_reply, kernel, data, loop, time.monotonic() + 30)
                return
            time.sleep(0.02)

    threading.Thread(target=waiter, name="envpin-handoff", daemon=True).start()


def _send_reply(kernel: Any, data: dict[str, Any], loop: Any, deadline: float) -> None:
    """On the shell stream's own thread: reply once the client has reconnected."""
    import zmq

    parent = {"header": data["parent_header"]}
    ident = [bytes.fromhex(i) for i in data["ident"]]
    sock = IPYKERNEL.attr(kernel, "shell_stream").socket
    content = {"status": "ok", "execution_count": data["execution_count"], "user_expressions": {}, "payload": []}
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # raise instead of dropping while the client reconnects
    try:
        IPYKERNEL.attr(kernel, "session").send(sock, "execute_reply", content, parent=parent, ident=ident)
    except zmq.ZMQError:
        if time.monotonic() < deadline:
            loop.call_later(0.02, _send_reply, kernel, data, loop, deadline)
        return
    finally:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    threading.Thread(target=_publish_idle, args=(kernel, parent, data.get("note", "")), daemon=True).start()


def _publish_idle(kernel: Any, parent: dict, note: str) -> None:
    """Tell iopub listeners the moved cell is done.

    PUB drops messages for subscribers that have not reconnected yet and
    cannot tell when they have, so "idle" is repeated a few times: clients
    ignore the repeats (they match a cell that is already finished).
    """
    # The subscribers reconnect about when the shell client did; the note goes out once (a repeat would show
    # twice) and must come before "idle", so it waits for them. 0.05 s was too short now and then (seen in
    # CI: JupyterLab missed the note); the idle repeats below cover a late subscriber.
    time.sleep(0.1)
    if note:
        IPYKERNEL.attr(kernel, "session").send(
            IPYKERNEL.attr(kernel, "iopub_socket"), "stream", {"name": "stdout", "text": note + "\n"}, parent=parent,
            ident=b"stream.stdout",
        )  # fmt: skip
    for delay in (0.0, 0.05, 0.1, 0.3, 0.6, 1.2, 2.5):
        time.sleep(delay)
        IPYKERNEL.attr(kernel, "session").send(
            IPYKERNEL.attr(kernel, "iopub_socket"),
            "status",
            {"execution_state": "idle"},
            parent=parent,
            ident=b"kernel.status",
        )
