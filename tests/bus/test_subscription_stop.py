"""Stopping a subscription lets a running handler finish (bounded), at any concurrency."""

from __future__ import annotations

import asyncio

import pytest

from agoramesh.bus import Bus, Delivery
from agoramesh.bus.server import EmbeddedServer
from agoramesh.testing.plugin import BusFactory

pytestmark = pytest.mark.integration

SUBJECT = "agora.cap.test"


class Paused:
    """A handler that waits for ``release`` before it replies."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = 0

    async def __call__(self, delivery: Delivery) -> None:
        self.started.set()
        await self.release.wait()
        await delivery.respond("task_response", {"done": True})
        self.finished += 1


@pytest.fixture
async def pair(nats_server: EmbeddedServer, bus_factory: BusFactory) -> tuple[Bus, Bus]:
    return await bus_factory(nats_server.client_url), await bus_factory(nats_server.client_url)


async def _stop_mid_handler(pair: tuple[Bus, Bus], stop: str) -> None:
    client, server = pair
    handler = Paused()
    subscription = await server.subscribe(SUBJECT, handler)  # concurrency 1, the default
    # No retry on NoResponders: subscribe() returned once the server had the SUB.
    request = asyncio.create_task(client.request(SUBJECT, "task_request", {}, timeout=5))
    async with asyncio.timeout(3):
        await handler.started.wait()
    stopping = asyncio.create_task(server.close(timeout=3) if stop == "close"
                                   else subscription.stop(3))
    await asyncio.sleep(0.1)  # stop is under way, waiting for the handler
    assert not stopping.done()
    handler.release.set()
    async with asyncio.timeout(4):
        reply = await request
        await stopping
    assert reply.body == {"done": True}
    assert handler.finished == 1


async def test_subscription_stop_drains_a_running_inline_handler(pair: tuple[Bus, Bus]) -> None:
    await _stop_mid_handler(pair, "stop")


async def test_bus_close_drains_a_running_inline_handler(pair: tuple[Bus, Bus]) -> None:
    await _stop_mid_handler(pair, "close")
