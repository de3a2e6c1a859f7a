"""A refill a start leaves for later (``Pools.refill_later``) runs after its delay, and never after a drain:
a server that drains its pools (a test's end, the tag moved) gets no warm container made behind its back."""

from __future__ import annotations

import asyncio

from envpin_provisioner.warm.pool import Pools


async def test_a_refill_left_for_later_runs_after_its_delay_unless_the_pools_were_drained_first():
    pools = Pools()
    ran: list[str] = []
    pools.refill_later(0.05, lambda: ran.append("kept"))
    pools.refill_later(0.05, lambda: ran.append("drained"))
    await asyncio.sleep(0)
    assert ran == []  # not at once
    await asyncio.sleep(0.1)
    assert ran == ["kept", "drained"]
    pools.refill_later(0.05, lambda: ran.append("after drain"))
    assert pools.drain() == []
    await asyncio.sleep(0.1)
    assert ran == ["kept", "drained"]  # the drain cancelled it
