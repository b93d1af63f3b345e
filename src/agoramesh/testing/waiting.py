"""Bounded waiting for conditions that have no event of their own (counters, lists)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ("wait_until",)


async def wait_until(condition: Callable[[], bool], *, timeout: float = 2.0,
                     interval: float = 0.005) -> None:
    """Return once ``condition()`` is true; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to await but the condition
            await asyncio.sleep(interval)
