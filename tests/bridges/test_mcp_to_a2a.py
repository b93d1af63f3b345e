"""The two bridges meet: an MCP client calls a tool whose work an A2A agent in the mesh does,
won in an auction (issue 18, item 4).

The A2A agent is written with a2a-sdk alone (a2a_support.ToolAgent) and joins as two mesh
agents through the A2A backend (so its skills are auctioned: with one agent known to offer a
capability the mesh awards it directly, without a call for proposals); a local offline agent
bids for ``echo`` beside them. The MCP client is
the SDK's own, on the mesh's MCP server over streamable HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from a2a_support import ToolAgent
from mcp import types
from mcp_support import http_client

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.nodes.backends.a2a import A2ABackend
from agoramesh.nodes.backends.base import BackendConfig

pytestmark = pytest.mark.integration


def _text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_an_mcp_tool_call_is_auctioned_to_an_a2a_agent(
        nats_server: EmbeddedServer, agent_factory: Any, tool_agent: ToolAgent,
        tool_url: str) -> None:
    url = nats_server.client_url
    remotes: list[AgentNode] = []
    for name in ("tools", "tools-2"):
        backend = A2ABackend(BackendConfig(base_url=tool_url))
        remotes.append(await agent_factory(url, name, await backend.offered(),
                                           backend=backend, agent_type="a2a"))
    local: AgentNode = await agent_factory(url, "local", ["echo"])
    by_id = {remote.agent_id: remote for remote in remotes}
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async with http_client(url) as client:
        wanted = {"Say-hello", "tool_fail", "echo"}
        deadline = asyncio.get_running_loop().time() + 10
        tools: set[str] = set()
        while not wanted <= tools and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)  # the MCP server learns the agents from presence
            tools = {tool.name for tool in (await client.list_tools()).tools}
        assert wanted <= tools, sorted(tools)

        hello = await client.call_tool("Say-hello", {"text": "hi"}, progress_callback=progress)
        assert not hello.is_error, _text(hello)
        assert hello.structured_content is not None
        assert hello.structured_content["result"] == {"text": "hello"}
        winner = by_id[hello.structured_content["agent_id"]]
        assert tool_agent.seen[-1] == ("Say hello!", {"text": "hi"})  # the A2A agent did it
        assert notes[0] == "call for proposals #1 to 2 known capable agent(s)"  # an auction
        assert notes[1].startswith("2 bid(s)") and f"awarded to {winner.config.name}" in notes

        broke = await client.call_tool("tool_fail", {"text": "x"})
        assert broke.is_error and "the tool broke" in _text(broke)

        # A capability two agents offer: each call is auctioned between them; the one the
        # A2A agent wins comes back as its own answer.
        winners = set()
        for _ in range(8):
            echoed = await client.call_tool("echo", {"text": "both"})
            assert not echoed.is_error, _text(echoed)
            assert echoed.structured_content is not None
            winners.add(echoed.structured_content["agent_id"])
        assert winners <= {*by_id, local.agent_id}
    assert winner.metrics.tasks["Say-hello", "completed"] == 1
