"""Gone or only paused (protocols/auction/liveness.py): an agent whose connection stands
answers its ``$SRV.PING.<name>.<id>`` (or, frozen, lets it time out); one whose connection
is closed draws "no responders" from the server at once. Real nats-server, real agents;
the frozen and killed node processes are in test_lost_winner.py and test_lapsed.py."""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh.bus.identity import Identity
from agoramesh.bus.requests import ping
from agoramesh.nodes.card import AgentCard, AgentStatus, Capability
from agoramesh.nodes.directory import Directory
from agoramesh.protocols.auction.liveness import gone
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory

pytestmark = pytest.mark.integration


def card(name: str) -> AgentCard:
    return AgentCard(id=Identity.generate().agent_id, name=name, type="worker", version="1",
                     endpoint="", capabilities=(Capability(name="work"),))


async def test_an_agent_whose_connection_stands_is_not_gone_and_one_without_is(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    driver = await agent_factory(nats_server.client_url, "driver", ["vote"])
    worker = await agent_factory(nats_server.client_url, "worker one", ["echo"])
    await wait_until(lambda: worker.agent_id in driver.directory, timeout=10)
    never = card("never connected")
    driver.directory.seen(never, AgentStatus(), 1.0)
    unnamed = Identity.generate().agent_id  # not known here: no name to ping
    # The service name is the agent's name made safe ("worker-one").
    assert await ping(driver.bus, f"$SRV.PING.worker-one.{worker.agent_id}", timeout=2) is True
    assert await gone(driver.bus, driver.directory, [worker.agent_id, never.id, unnamed],
                      timeout=2) == {never.id}
    assert await gone(driver.bus, None, [never.id], timeout=2) == set()
    assert await gone(driver.bus, driver.directory, [], timeout=2) == set()


async def test_an_agent_that_stopped_is_gone_once_its_connection_is_closed(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    driver = await agent_factory(nats_server.client_url, "driver", ["vote"])
    worker = await agent_factory(nats_server.client_url, "worker", ["echo"])
    await wait_until(lambda: worker.agent_id in driver.directory, timeout=10)
    entry = driver.directory.get(worker.agent_id)
    assert entry is not None
    await worker.stop()
    # Its bye took it out of the directory; a lapsed entry still names it.
    directory = Directory()
    directory.seen(entry.card, AgentStatus(), 1.0)
    assert await gone(driver.bus, directory, [worker.agent_id], timeout=2) == {worker.agent_id}
