"""StallWatch: a paused process (here: a loop blocked by time.sleep) is noticed."""

from __future__ import annotations

import asyncio
import time

from agoramesh.protocols.jobs.stalls import StallWatch


async def test_a_blocked_loop_is_a_stall_of_its_length_for_the_window_after_it() -> None:
    watch = StallWatch(every=0.02, late=0.1)
    assert watch.latest(10.0) == 0.0  # not running: nothing is known
    ticking = asyncio.ensure_future(watch.run())
    try:
        await asyncio.sleep(0.1)
        assert watch.latest(10.0) == 0.0  # ticking on time
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is held, as SIGSTOP would
        assert 0.3 <= watch.latest(0.0) < 0.5  # seen at once, before the watch ticks again
        await asyncio.sleep(0.05)
        assert 0.3 <= watch.latest(10.0) < 0.5  # ended just now: its length is kept
        await asyncio.sleep(0.2)
        assert watch.latest(0.1) == 0.0  # ended longer ago than the window
        time.sleep(0.05)  # noqa: ASYNC251 - late by less than ``late``: no stall
        await asyncio.sleep(0.05)
        assert watch.latest(0.1) == 0.0
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
    assert watch.latest(10.0) == 0.0
