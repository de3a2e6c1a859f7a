"""``engine.create_owned``: what a cancelled start was creating is removed, even when the event loop stops next.

A pool's fill or a standby's creation is cancelled when its kernel goes or its pool is drained; the
container being created in a worker thread must still be removed once the engine returns it.  CI
found one left behind: the test's event loop closed right after the drain, and the removal had been
a callback that a closed loop never ran.  No engine here: the "creation" is a function that takes a
while, and the "removal" records what it was given.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from envpin_provisioner import engine


def wait_until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_a_creation_cancelled_as_the_loop_stops_is_disposed_of_when_it_returns():
    disposed: list[str] = []

    def slow_create() -> str:
        time.sleep(0.3)
        return "container-1"

    async def start_then_stop() -> None:
        task = asyncio.ensure_future(engine.create_owned(slow_create, dispose=disposed.append))
        await asyncio.sleep(0.05)  # the creation is under way in its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(start_then_stop())  # the loop stops at once: nothing may depend on it running again
    assert wait_until(lambda: disposed == ["container-1"]), f"disposed of: {disposed}"


def test_a_creation_that_returned_before_its_caller_was_cancelled_is_disposed_of():
    disposed: list[str] = []
    returned = threading.Event()

    def quick_create() -> str:
        returned.set()
        return "container-2"

    async def cancel_after_it_returned() -> None:
        task = asyncio.ensure_future(engine.create_owned(quick_create, dispose=disposed.append))
        await asyncio.sleep(0)  # the thread starts
        returned.wait(5)  # blocking the loop: the result cannot reach the caller before the cancel
        time.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_it_returned())
    assert wait_until(lambda: disposed == ["container-2"]), f"disposed of: {disposed}"


def test_a_creation_its_caller_receives_is_never_disposed_of():
    disposed: list[str] = []
    result = asyncio.run(engine.create_owned(lambda: "container-3", dispose=disposed.append))
    time.sleep(0.1)
    assert result == "container-3" and disposed == []
