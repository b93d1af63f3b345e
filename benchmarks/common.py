"""Helpers the benchmark scripts share (imported as a sibling: run them as scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from agoramesh.errors import AgoraError
from agoramesh.nodes.node import AgentNode

__all__ = ("Warnings", "WrongAnswer", "count_warnings", "latency", "percentile", "raw_client",
           "stop_all", "until_answers")


class WrongAnswer(Exception):
    """A reply that is not the expected result."""


class Warnings(logging.Handler):
    """Counts the runtime's log warnings (shown as a number, not hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[str(record.msg).split("%")[0].strip()[:60]] += 1


def count_warnings() -> Warnings:
    """Count the runtime's warnings instead of printing them (nothing else is logged)."""
    warnings = Warnings()
    runtime_log = logging.getLogger("agoramesh")
    runtime_log.addHandler(warnings)
    runtime_log.propagate = False
    return warnings


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds (0 for none)."""
    ordered = sorted(values) or [0]
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] / 1e6


def latency(samples: list[int]) -> dict[str, float]:
    """p50, p90 and p99 of nanosecond samples, in milliseconds."""
    return {f"p{q}": round(percentile(samples, q), 4) for q in (50, 90, 99)}


async def until_answers(op: Callable[[], Awaitable[object]], bound: float = 30.0) -> None:
    """Retry ``op`` (at most ``bound`` seconds) until it succeeds: interest has spread
    over the routes and whoever answers it is serving."""
    async with asyncio.timeout(bound):
        while True:
            try:
                await op()
                return
            except (TimeoutError, AgoraError, nats.errors.Error):
                await asyncio.sleep(0.05)


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
