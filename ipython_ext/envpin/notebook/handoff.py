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

Requests the client had already sent to the old kernel before the move
(the cells below ``%use_image`` in JupyterLab's "Run All") cannot be handed
over: they were written for a kernel that is going away.  The old kernel
answers each of them before it exits, on the connections they came by:
"aborted" (the protocol's "not run"), with one line under the cell saying
why and what to do (:func:`_answer_queued_then_exit`).  No cell is left
waiting.
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
from envpin.internals import IPYKERNEL, InternalMissing
from envpin.notebook import control


def hand_over_and_exit(shell: Any, folder: Path, image: str = "the new image") -> None:
    """Record this cell's request for the successor, answer what is queued behind it, and end this process.

    When the queued requests are to be answered first, raises
    :class:`HandedOver` to end the cell here (nothing more of it runs in this
    image; its reply and error output are not sent from here), and the
    process ends once they are answered.
    """
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
    sys.stdout.flush()
    sys.stderr.flush()
    if _answer_queued_then_exit(kernel, parent, image):
        raise HandedOver(image)
    time.sleep(OUTPUT_DRAIN)
    os._exit(0)  # no cleanup: closing the sockets would unlink paths the new kernel now owns


class HandedOver(Exception):
    """Ends the moving cell in the old kernel: its successor answers it; nothing is shown from here."""

    def _render_traceback_(self) -> list[str]:
        """Nothing to show, and nothing to format: IPython 9 formats every cell's exception for its history
        (``_format_exception_for_storage``, through this hook when there is one), and formatting this one
        with ultratb took 150-200 ms of a move, with the old kernel still holding the clients."""
        return []


#: The last message the old kernel's shell takes: every request queued before it has been answered.
_LAST = b"envpin: moved"
#: Seconds the old kernel may spend answering what is queued (the provisioner kills it after 15).
DRAIN_LIMIT = 5.0
#: Seconds the old kernel waits between its last output and its exit.  ipykernel's flush returns once its
#: I/O thread has handed the output to the iopub socket; what is left is ZMQ's own I/O thread writing it
#: to the unix socket, which takes well under a millisecond.  The sockets cannot be closed to flush them
#: (closing a bound ipc socket unlinks its name, which the successor now owns), hence a wait.
OUTPUT_DRAIN = 0.02


def not_run_note(image: str) -> str:
    return (
        f"envpin: not run: the kernel moved into {image} while this cell waited. "
        "Run it again (Run All runs the whole notebook in the new image)."
    )


def _answer_queued_then_exit(kernel: Any, moved: dict, image: str) -> bool:
    """Answer every request queued behind the moving cell as "aborted", then end the process.

    While the moving cell runs, a client that sent more requests at once
    (JupyterLab's Run All) has them waiting in this kernel: in its sockets,
    or already read and waiting for the cell's lock.  They were sent to this
    process and must be answered by it, on their connections, or they wait
    forever.  So: every execute request from now on gets an "aborted" reply
    and a line saying why (ipykernel's own path for a request it will not
    run: busy, reply, idle); the moving cell itself gets no reply from here
    (its successor sends it, see ``expect_handoff``); and one last message
    is queued behind everything else: when the shell reaches it, all was
    answered, and the process ends.  False when this ipykernel offers none of
    the handles (then the caller exits at once, as before).
    """
    try:
        handlers = IPYKERNEL.attr(kernel, "shell_handlers")
        session = IPYKERNEL.attr(kernel, "session")
        queue_last = _last_in_queue(kernel)
    except InternalMissing:
        return False
    moved_id = moved["header"]["msg_id"]
    note = not_run_note(image) + "\n"

    async def not_run(stream: Any, ident: Any, parent: dict) -> None:
        _answered.append(parent["header"].get("msg_id"))
        _activity.append(time.monotonic())
        session.send(IPYKERNEL.attr(kernel, "iopub_socket"), "stream", {"name": "stderr", "text": note},
                     parent=parent, ident=b"stream.stderr")  # fmt: skip
        metadata = {"status": "aborted", "started": parent["header"].get("date")}
        session.send(stream, "execute_reply", {"status": "aborted"}, metadata=metadata, parent=parent, ident=ident)

    send = session.send

    def send_but_this_cells_end(stream: Any, msg_or_type: Any, content: Any = None, parent: Any = None, *a, **kw):
        """This cell's reply and its "idle" come from the successor; the HandedOver that ended it is not shown.

        ``parent`` is a message or a bare header (the display hook passes one); what
        is not sent is still returned as the message it would have been (callers read it).
        """
        header = parent.get("header", parent) if isinstance(parent, dict) else None
        ends_this_cell = msg_or_type in ("execute_reply", "error") or (
            msg_or_type == "status" and isinstance(content, dict) and content.get("execution_state") == "idle"
        )
        if ends_this_cell and isinstance(header, dict) and header.get("msg_id") == moved_id:
            if msg_or_type == "status":  # ipykernel is done with the moving cell: the queue's turn
                _activity.append(time.monotonic())
                _moving_cell_over.set()
            return session.msg(msg_or_type, content=content, parent=parent)
        return send(stream, msg_or_type, content, parent, *a, **kw)

    handlers["execute_request"] = not_run
    session.send = send_but_this_cells_end
    # The HandedOver that ends this cell is an error to ipykernel, which would abort what is queued on its
    # own (stop_on_error), without saying why: here every queued request is answered by not_run instead.
    IPYKERNEL.assign(kernel, "abort_queues", lambda *args, **kwargs: None)
    threading.Timer(DRAIN_LIMIT, _end).start()
    if queue_last is not None:
        queue_last()
    else:
        threading.Thread(target=_end_when_quiet, daemon=True).start()
    return True


#: The requests answered "not run" by this (old) kernel: none in the common case (one cell at a time).
_answered: list[str] = []
#: When the old kernel last finished something (the moving cell, a "not run" answer), and the moving cell's end.
_activity: list[float] = [0.0]
_moving_cell_over = threading.Event()
#: Seconds without an answer after which an ipykernel 6 kernel's queue counts as empty.
QUIET = 0.3


def reset() -> None:
    """Forget a hand-over's bookkeeping (``envpin.reset_caches``; a real old kernel ends instead)."""
    _answered.clear()
    _activity[:] = [0.0]
    _moving_cell_over.clear()


def _end() -> None:
    """End this process once what it sent is out (replies pass the shell thread, output the iopub thread)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.2 if _answered else OUTPUT_DRAIN)
    os._exit(0)  # no cleanup: closing the sockets would unlink paths the new kernel now owns


def _last_in_queue(kernel: Any):
    """A function that queues the final message behind every request waiting in ``kernel``; None if unknown.

    ipykernel 7 reads the shell socket in its own thread and passes requests
    to the main thread through an inproc socket, where each waits for the
    cell lock: the final message goes the same way, sent from that thread
    (which owns the socket) under its lock, after whatever it has read.
    None for ipykernel 6 (no such thread): :func:`_end_when_quiet` then.
    """
    import asyncio

    channel = IPYKERNEL.attr(kernel, "shell_channel_thread", None)
    if channel is not None:
        socket = IPYKERNEL.attr(IPYKERNEL.attr(channel, "subshell_manager"), "main_shell_socket")(None)
        dispatch = IPYKERNEL.attr(kernel, "dispatch_shell")
        lock = IPYKERNEL.attr(channel, "channel_lock")

        async def dispatch_until_last(msg: Any, *args: Any, **kwargs: Any) -> Any:
            if len(msg) == 1 and bytes(getattr(msg[0], "bytes", msg[0])) == _LAST:
                threading.Thread(target=_end, daemon=True).start()
                return None
            return await dispatch(msg, *args, **kwargs)

        async def send_last() -> None:
            async with lock:  # behind every request this thread has read and not yet passed on
                socket.send(_LAST)

        def on_channel_thread() -> None:
            IPYKERNEL.attr(kernel, "shell_stream").flush()
            asyncio.ensure_future(send_last())

        IPYKERNEL.assign(kernel, "dispatch_shell", dispatch_until_last)
        loop = IPYKERNEL.attr(channel, "channel_loop")
        return lambda: loop.add_callback(on_channel_thread)
    return None


def _end_when_quiet() -> None:
    """ipykernel 6: end once the moving cell is over and no queued request was answered for :data:`QUIET` s.

    Its queue holds what the client had sent (Run All sends all at once,
    before the move began), answered back to back as soon as the moving cell
    ends; a pause that long means it is empty.  It costs a move that much
    time on ipykernel 6 images; ipykernel 7's queue is seen to its end.
    """
    _moving_cell_over.wait(DRAIN_LIMIT)
    while time.monotonic() - _activity[-1] < QUIET:
        time.sleep(0.02)
    _end()


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
            loop.call_later(0.005, _send_reply, kernel, data, loop, deadline)  # the client is back within ms
        return
    finally:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    threading.Thread(target=_publish_idle, args=(kernel, parent, data.get("note", "")), daemon=True).start()


def _subscribers_back_within() -> float:
    """Seconds the successor gives the clients' iopub sockets to come back before it sends the moved cell's note.

    They reconnect about when the shell client did; the note goes out once (a
    repeat would show twice) and must come before "idle", so it waits for them.
    The Jupyter server's sockets (and its clients') reconnect 10-20 ms after the
    old kernel's exit (``envpin_provisioner.kernel.client_sockets``), locally
    and through SSH forwards alike, so they are back within 0.03 s.  On a TLS
    engine each connection is relayed by a ``docker exec`` started for it
    (``envpin_provisioner.remote.tls_kernel``), a round trip of the engine's
    API: 0.5 s (seen in JupyterLab: 0.03 s lost the note there).  With libzmq's
    default reconnect (100-200 ms, a random spread) even 0.05 s was too short
    now and then, so a client of another program may miss the note; the idle
    repeats cover a late subscriber.
    """
    return 0.5 if os.environ.get(names.REMOTE_ENGINE, "").startswith("tcp://") else 0.03


def _publish_idle(kernel: Any, parent: dict, note: str) -> None:
    """Tell iopub listeners the moved cell is done.

    PUB drops messages for subscribers that have not reconnected yet and
    cannot tell when they have, so "idle" is repeated a few times: clients
    ignore the repeats (they match a cell that is already finished).
    """
    time.sleep(_subscribers_back_within())
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
