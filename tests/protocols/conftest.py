"""Offline agents the collaboration and HTTP API tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.task import StreamItem, Task
from agoramesh.testing import wait_until


class Sloth(OfflineBackend):
    """Takes two seconds over every task."""

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        await asyncio.sleep(2)
        async for item in super().execute(task, context):
            yield item


@pytest.fixture
def sloth_backend() -> Sloth:
    """A backend that takes two seconds over every task, for timeout tests."""
    return Sloth()


@pytest_asyncio.fixture
async def driver(nats_server: EmbeddedServer, agent_factory: Any) -> AgentNode:
    """``analyst`` (text.summarize, echo, math.evaluate), with ``pro`` and ``con``
    (text.debate, vote) in its directory."""
    url = nats_server.client_url
    node: AgentNode = await agent_factory(url, "analyst", ["text.summarize", "echo",
                                                           "math.evaluate"])
    debaters = [await agent_factory(url, name, ["text.debate", "vote"]) for name in ("pro", "con")]
    await wait_until(lambda: all(debater.agent_id in node.directory for debater in debaters),
                     timeout=5)
    return node
