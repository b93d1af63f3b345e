"""Fixtures of the bridge tests: a seed running JetStream with offline agents and a slow
streaming one (MCP), the A2A bridge over an agent's dispatcher, an A2A agent written with
a2a-sdk alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from a2a_support import TOKEN, ToolAgent, tool_agent_site
from mcp_support import PLOD, Agents, Plodder

from agoramesh.agent import AgentNode
from agoramesh.bridges.a2a_server import A2AServer
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import JetStreamConfig, ServerConfig
from agoramesh.testing.plugin import AgentFactory, running_server


@pytest_asyncio.fixture
async def js_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """One seed with JetStream of its own (durable jobs need no second seed)."""
    async with running_server(ServerConfig(name="mcp", data_dir=tmp_path / "mcp",
                                           jetstream=JetStreamConfig(),
                                           standalone=True)) as server:
        yield server


@pytest_asyncio.fixture
async def agents(js_server: EmbeddedServer, agent_factory: AgentFactory) -> Agents:
    url = js_server.client_url
    backend = Plodder()
    alpha = await agent_factory(url, "alpha", ["echo", "math.evaluate"])
    plodder = await agent_factory(url, "plodder", [PLOD], backend=backend, agent_type="plodder")
    return Agents(url=url, alpha=alpha, plodder=plodder, backend=backend)


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
