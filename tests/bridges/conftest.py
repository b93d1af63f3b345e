"""A seed running JetStream, with offline agents and a slow streaming one, for the MCP tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from mcp_support import PLOD, Agents, Plodder

from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import JetStreamConfig, ServerConfig
from agoramesh.testing.plugin import AgentFactory
from agoramesh.testing.processes import assert_stopped


@pytest_asyncio.fixture
async def js_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """One seed with JetStream of its own (durable jobs need no second seed)."""
    server = EmbeddedServer(ServerConfig(name="mcp", data_dir=tmp_path / "mcp",
                                         jetstream=JetStreamConfig(), standalone=True))
    await server.start()
    try:
        yield server
    finally:
        pid = server.pid
        await server.stop(grace=2.0)
        assert_stopped([pid])


@pytest_asyncio.fixture
async def agents(js_server: EmbeddedServer, agent_factory: AgentFactory) -> Agents:
    url = js_server.client_url
    backend = Plodder()
    alpha = await agent_factory(url, "alpha", ["echo", "math.evaluate"])
    plodder = await agent_factory(url, "plodder", [PLOD], backend=backend, agent_type="plodder")
    return Agents(url=url, alpha=alpha, plodder=plodder, backend=backend)
