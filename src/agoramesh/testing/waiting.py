"""Bounded waiting for conditions that have no event of their own (counters, lists, APIs)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ("wait_until",)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 2.0,
                     interval: float = 0.005) -> None:
    """Return once ``condition()`` is true; TimeoutError after ``timeout`` seconds.

    ``condition`` may be async (a coroutine function, or one returning an
    awaitable): its result is awaited each time. Poll an HTTP API with a
    larger ``interval``.
    """
    async with asyncio.timeout(timeout):
        while True:
            met = condition()
            if inspect.isawaitable(met):
                met = await met
            if met:
                return
            await asyncio.sleep(interval)
