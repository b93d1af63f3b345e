"""The mesh as MCP tools: the SDK's own client, over stdio (``agoramesh mcp`` spawned as a
host spawns it, in a minimal environment) and over streamable HTTP, at both protocol eras
(the handshake, 2025-11-25; and 2026-07-28), against agents on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from mcp import Client, types
from mcp.shared.exceptions import MCPError
from mcp_support import Agents, http_client, stdio_client

from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # stdio spawns `agoramesh mcp`

Connect = Callable[..., contextlib.AbstractAsyncContextManager[Client]]


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """An MCP client of the mesh over each transport."""
    return stdio_client if request.param == "stdio" else http_client  # type: ignore[return-value]


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """The client's era: the initialize handshake, or 2026-07-28 (server/discover)."""
    return str(request.param)


class ToolChanges:
    """The tool-list changes a client is told of: notifications on the handshake versions,
    a ``subscriptions/listen`` stream on 2026-07-28."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    async def handler(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification | types.ToolListChangedNotification):
            if getattr(message, "method", "") == "notifications/tools/list_changed":
                self.changed.set()

    async def after(self, client: Client, action: Callable[[], Awaitable[Any]]) -> None:
        """Do ``action``; return once the client has been told the tools changed."""
        if client.protocol_version != "2026-07-28":
            self.changed.clear()
            await action()
            await asyncio.wait_for(self.changed.wait(), timeout=10)
            return
        async with client.listen(tools_list_changed=True) as events:
            await action()
            with anyio.fail_after(10):
                async for _ in events:
                    return


@contextlib.asynccontextmanager
async def client_of(connect: Connect, agents: Agents, mode: str,
                    changes: ToolChanges | None = None) -> AsyncIterator[Client]:
    async with connect(agents.url, mode=mode,
                       handler=changes.handler if changes else None) as client:
        yield client


def names(listing: types.ListToolsResult) -> list[str]:
    return [tool.name for tool in listing.tools]


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_tools_follow_the_mesh(connect: Connect, mode: str, agents: Agents,
                                     agent_factory: AgentFactory) -> None:
    changes = ToolChanges()
    async with client_of(connect, agents, mode, changes) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.tools.list_changed is True
        listing = await client.list_tools()
        assert names(listing) == ["mesh_agents", "mesh_submit", "mesh_result", "mesh_collaborate",
                                  "mesh_workflow", "echo", "math_evaluate", "slow_steps"]
        assert all(tool.input_schema["type"] == "object" for tool in listing.tools)
        evaluate = next(tool for tool in listing.tools if tool.name == "math_evaluate")
        assert evaluate.input_schema["required"] == ["expression"]
        assert "'math.evaluate'" in (evaluate.description or "")

        joined: list[Any] = []

        async def join() -> None:
            joined.append(await agent_factory(agents.url, "summarizer", ["text.summarize"]))

        await changes.after(client, join)
        assert "text_summarize" in names(await client.list_tools())
        await changes.after(client, lambda: joined[0].stop(grace=1.0))
        assert "text_summarize" not in names(await client.list_tools())


async def test_calls(connect: Connect, mode: str, agents: Agents) -> None:
    async with client_of(connect, agents, mode) as client:
        await client.list_tools()
        result = await client.call_tool("math_evaluate", {"expression": "6*7"})
        assert not result.is_error and text(result) == '{"value": 42}'
        assert result.structured_content["status"] == "COMPLETED"
        assert result.structured_content["agent_id"] == agents.alpha.agent_id

        for how in ({}, {"strategy": "direct"}, {"agent": "alpha"},
                    {"agent": agents.alpha.agent_id}):
            result = await client.call_tool("mesh_submit", {
                "capability": "echo", "parameters": {"text": "hi"}, **how})
            assert not result.is_error, (how, text(result))
            assert result.structured_content["result"] == {"echo": {"text": "hi"}}

        listed = await client.call_tool("mesh_agents", {"capability": "slow.*"})
        assert [agent["name"] for agent in listed.structured_content["agents"]] == ["plodder"]

        bad = await client.call_tool("math_evaluate", {"expression": 42})
        assert bad.is_error and text(bad).startswith("InvalidInput: math_evaluate: "
                                                     "arguments.expression: 42 is not")
        failed = await client.call_tool("math_evaluate", {"expression": "1/0"})
        assert failed.is_error and text(failed).startswith("InvalidInput: ")
        assert failed.structured_content["status"] == "FAILED"
        nobody = await client.call_tool("mesh_submit", {"capability": "nobody.here"})
        assert nobody.is_error and text(nobody).startswith("NoBidders: ")
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        assert unknown.value.error.code == types.INVALID_PARAMS
        assert unknown.value.error.message == "Unknown tool: no_such_tool"


async def test_progress_and_cancel(connect: Connect, mode: str, agents: Agents) -> None:
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async with client_of(connect, agents, mode) as client:
        await client.list_tools()
        result = await client.call_tool("slow_steps", {"steps": 3, "pause": 0.05},
                                        progress_callback=progress)
        assert not result.is_error and result.structured_content["result"] == {"steps": 3}
        # The one agent offering slow.steps: awarded directly, no call for proposals.
        assert notes[0] == "awarded directly to plodder (the one agent known to offer it)"
        assert [note for note in notes if note.startswith("step ")] == [
            "step 1 of 3", "step 2 of 3", "step 3 of 3"]
        assert notes[-1] == "result from plodder: COMPLETED"

        with anyio.move_on_after(1.0):
            await client.call_tool("slow_steps", {"steps": 600, "pause": 0.1})
        backend = agents.backend
        await wait_until(lambda: len(backend.cancelled) == 1, timeout=10)
        assert backend.cancelled == backend.started[-1:]
        await wait_until(lambda: agents.plodder.metrics.tasks["slow.steps", "cancelled"] == 1,
                         timeout=5)
        assert not agents.plodder.tasks.running
