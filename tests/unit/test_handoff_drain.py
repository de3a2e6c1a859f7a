"""Unit tier: the old kernel of a move answers what was queued behind the moving cell, then exits.

A local ipykernel (this venv's: ipykernel 7) stands in for the old kernel: the moving cell calls the same
function ``%use_image`` calls after its hand-over, with three more cells sent at once behind it, as
JupyterLab's Run All sends them.  (The whole move, in containers and in Chromium, is in
tests/test_server.py and tests/test_browser.py.)
"""

from __future__ import annotations

import queue
import time

from jupyter_client.manager import start_new_kernel

MOVING_CELL = (
    "from envpin.notebook import handoff\n"
    "kernel = get_ipython().kernel\n"
    "assert handoff._answer_queued_then_exit(kernel, kernel.get_parent('shell'), 'envpin-test/py311')\n"
    "raise handoff.HandedOver('envpin-test/py311')\n"
)


def test_the_requests_queued_behind_a_move_are_answered_not_run_and_the_kernel_ends():
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        ids = [kc.execute(MOVING_CELL)] + [kc.execute(f"print('ran {i}')") for i in range(3)]
        replies: dict[str, str] = {}
        output: dict[str, str] = {}
        deadline = time.monotonic() + 20
        # Until every reply and every aborted cell's note: ipykernel's IOPub thread may send a note after its reply.
        while time.monotonic() < deadline and (len(replies) < 3 or not all(i in output for i in ids[1:])):
            try:
                msg = kc.get_shell_msg(timeout=0.2)
                replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
            except queue.Empty:
                pass
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=0.05)
                except queue.Empty:
                    break
                if msg["msg_type"] in ("stream", "error"):
                    parent = msg["parent_header"].get("msg_id")
                    output[parent] = output.get(parent, "") + (msg["content"].get("text") or msg["msg_type"])
        assert [replies.get(i) for i in ids[1:]] == ["aborted"] * 3, (replies, output)
        for i in ids[1:]:
            assert output[i].startswith("envpin: not run: the kernel moved into envpin-test/py311 while this cell")
            assert "ran" not in output[i]
        # The moving cell gets nothing from here (its successor answers it), not even its HandedOver.
        assert ids[0] not in replies and ids[0] not in output
        deadline = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not km.is_alive()  # and the old kernel is gone once all is answered
    finally:
        km.shutdown_kernel(now=True)
