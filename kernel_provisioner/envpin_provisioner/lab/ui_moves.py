"""A move asked for from JupyterLab's dialog: the kernel runs ``%use_image``, exactly as if a cell had.

Why through the kernel, and not straight to the provisioner's move server:
what a move may do depends on the kernel.  Whether it holds state that a
move would lose (and so needs ``--restart``) is known only inside it; and the
old kernel must hand its clients over and exit (``envpin.notebook.handoff``)
for the new one to take its place cleanly.  So the server extension sends
the kernel one ``execute_request`` of ``%use_image IMAGE [--restart] [--pull]``
on a shell connection of its own; the kernel sends the control request the
move server answers (``envpin_provisioner.moves.mover``), with the same
checks, refusals and one-paragraph messages as a cell's.  The reply (from
the new kernel, after a move) ends the move here; its error text is the
refusal's paragraph.

Only a validated image name reaches the code sent (``IMAGE_NAME``: letters,
digits and ``._:/@+-``), as a Python string literal; the flags are booleans.
One move per kernel at a time; a busy kernel is refused rather than queued
behind a running cell.  The move is bounded in time (``MOVE_TIMEOUT``): a pull
has its own limits, and a kernel that never answers frees its slot.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from envpin import printable

#: What an image name from a page may look like: a reference, an id or an alias, nothing a shell or parser splits.
IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,299}\Z")
#: Seconds a move from the page may take, pull included, before it is given up (the kernel goes on alone).
MOVE_TIMEOUT = 1800.0
#: Moves from pages in flight on this server at once.
MAX_MOVES = 8


@dataclass
class UiMove:
    """One move asked for from the page: what, and how it ended."""

    image: str
    restart: bool
    pull: bool
    #: ``running``; then ``done`` (moved, or already there: pinned), ``refused`` (needs --restart) or ``error``
    state: str = "running"
    message: str = ""
    started: float = 0.0
    ended: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def code_for(image: str, restart: bool, pull: bool) -> str:
    """The code the kernel runs: load envpin (quietly, if it is not), then the magic, as a cell would."""
    if not IMAGE_NAME.match(image):
        raise ValueError("not an image name")
    line = " ".join([image, *(["--restart"] if restart else []), *(["--pull"] if pull else [])])
    return (
        "get_ipython().extension_manager.load_extension('envpin')\n"
        f"get_ipython().run_line_magic('use_image', {line!r})\n"
    )


class UiMoves:
    """The moves pages asked this server for: the one in flight per kernel, and the last one's outcome."""

    def __init__(self) -> None:
        self.by_kernel: dict[str, UiMove] = {}
        self._tasks: set[asyncio.Task] = set()

    def running(self, kernel_id: str) -> bool:
        move = self.by_kernel.get(kernel_id)
        return move is not None and move.state == "running"

    def in_flight(self) -> int:
        return sum(1 for m in self.by_kernel.values() if m.state == "running")

    def forget(self, kernel_ids: set[str]) -> None:
        """Drop the records of kernels this server no longer has (bounded by the live kernels)."""
        for kid in list(self.by_kernel):
            if kid not in kernel_ids:
                del self.by_kernel[kid]

    def start(self, kernel_id: str, km: Any, provisioner: Any, image: str, restart: bool, pull: bool) -> UiMove:
        move = UiMove(image=image, restart=restart, pull=pull, started=time.time())
        self.by_kernel[kernel_id] = move
        task = asyncio.ensure_future(self._run(km, provisioner, move))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return move

    async def _run(self, km: Any, provisioner: Any, move: UiMove) -> None:
        mover = provisioner.mover
        serial = mover.activity.last.serial if mover is not None and mover.activity.last else 0
        client = km.client()
        try:
            client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
            msg_id = client.execute(
                code_for(move.image, move.restart, move.pull), silent=False, store_history=False, allow_stdin=False
            )
            reply = await asyncio.wait_for(self._reply(client, msg_id), MOVE_TIMEOUT)
        except asyncio.TimeoutError:
            self._end(move, "error", f"The move to '{move.image}' did not finish within {MOVE_TIMEOUT:.0f} s.")
            return
        except (OSError, RuntimeError, ValueError) as exc:  # no connection to the kernel (it went away)
            self._end(move, "error", f"envpin could not ask the kernel to move: {type(exc).__name__}: {exc}")
            return
        finally:
            client.stop_channels()
        content = reply.get("content", {})
        last = mover.activity.last if mover is not None else None
        outcome = last.phase if last is not None and last.serial > serial else None
        if content.get("status") == "ok":
            self._end(move, "done", last.message if last is not None and outcome in ("same", "moved") else "")
        elif outcome == "refused":
            self._end(move, "refused", str(content.get("evalue") or (last.message if last else "")))
        else:
            self._end(move, "error", str(content.get("evalue") or content.get("ename") or "the move failed"))

    @staticmethod
    async def _reply(client: Any, msg_id: str) -> dict:
        while True:
            msg = await client.get_shell_msg()
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    @staticmethod
    def _end(move: UiMove, state: str, message: str) -> None:
        move.state, move.ended = state, time.time()
        move.message = printable.one_line(message, 2000)
