"""Helpers the benchmark scripts share (imported as a sibling: run them as scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter

import nats
from nats.aio.client import Client as NatsClient

from agoramesh.nodes.node import AgentNode

__all__ = ("Warnings", "WrongAnswer", "percentile", "raw_client", "stop_all")


class WrongAnswer(Exception):
    """A reply that is not the expected result."""


class Warnings(logging.Handler):
    """Counts the runtime's log warnings (shown as a number, not hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[str(record.msg).split("%")[0].strip()[:60]] += 1


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds (0 for none)."""
    ordered = sorted(values) or [0]
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] / 1e6


async def stop_all(nodes: list[AgentNode], grace: float = 1.0) -> None:
    """Stop every node concurrently, bounded; kill whatever a stop could not finish."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace + 30):
            await asyncio.gather(*(node.stop(grace) for node in nodes), return_exceptions=True)
    for node in nodes:
        if node.bus.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.kill(), 5)


async def raw_client(stack: contextlib.AsyncExitStack, url: str) -> NatsClient:
    """A plain nats-py client (the baseline), closed with ``stack``; every wait bounded."""
    nc = await asyncio.wait_for(nats.connect(url, connect_timeout=3, allow_reconnect=False), 5)
    stack.push_async_callback(lambda: asyncio.wait_for(nc.close(), 5))
    return nc
