"""Whether this process was paused lately (SIGSTOP, a starved machine, a debugger).

A job that reached us while we were paused may have sat in our socket past its
ack_wait; JetStream has then given it to another node as well, which drives it
too. The worker leaves a job read after a pause that long to JetStream, and
makes one read after a shorter pause its own at once ("in progress"); either
way it trusts only a result lookup made just before each award
(:mod:`~agoramesh.protocols.jobs.worker`, :mod:`~agoramesh.protocols.jobs.delivery`).
"""

from __future__ import annotations

import asyncio
import math

__all__ = ("StallWatch",)


class StallWatch:
    """Ticks every ``every`` seconds; a tick more than ``late`` seconds behind is a stall."""

    def __init__(self, every: float = 0.25, late: float = 0.5) -> None:
        self.every = every
        self.late = late
        self._last: float | None = None  # loop time of the latest tick; None: not running
        self._stall_ended = -math.inf  # loop time at which the latest stall was noticed
        self._stall_length = 0.0  # and how long it was

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        try:
            while True:
                await asyncio.sleep(self.every)
                now = loop.time()
                if now - self._last > self.every + self.late:
                    self._stall_ended, self._stall_length = now, now - self._last
                self._last = now
        finally:
            self._last = None

    def latest(self, window: float) -> float:
        """How long the stall going on now (no tick since it: we were just resumed) or the
        latest one, if it ended less than ``window`` seconds ago, lasted; else 0 (and 0
        while not running)."""
        if self._last is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        if now - self._last > self.every + self.late:
            return now - self._last
        return self._stall_length if now - self._stall_ended < window else 0.0
