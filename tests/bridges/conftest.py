"""Fixtures of the bridge tests: offline agents on a real nats-server, the A2A bridge over
them, an A2A agent written with a2a-sdk alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from a2a_support import TOKEN, ToolAgent, tool_agent_site

from agoramesh.agent import AgentNode
from agoramesh.bridges.a2a_server import A2AServer
from agoramesh.bus.server import EmbeddedServer
from agoramesh.testing import wait_until


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


@pytest_asyncio.fixture
async def a2a(driver: AgentNode) -> AsyncIterator[A2AServer]:
    """The A2A bridge over ``driver``'s dispatcher, with a token and a 64 KiB body limit."""
    async with A2AServer(driver.dispatcher, token=TOKEN, max_body=64 * 1024,
                         task_timeout=20) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client carrying the bridge's token."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=20) as client:
        yield client


@pytest.fixture
def tool_agent() -> ToolAgent:
    return ToolAgent()


@pytest_asyncio.fixture
async def tool_url(tool_agent: ToolAgent) -> AsyncIterator[str]:
    """The URL of ``tool_agent``, served by a2a-sdk on loopback."""
    async with tool_agent_site(tool_agent) as site:
        yield site.url
