"""What the MCP bridge tests share: a slow streaming backend, and MCP clients of the mesh."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.session import MessageHandlerFnT

from agoramesh.agent import AgentNode
from agoramesh.bridges.mcp_http import McpHttp
from agoramesh.bridges.mcp_server import MeshMcpServer
from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task
from agoramesh.testing.processes import AGORAMESH

__all__ = ("PLOD", "Agents", "Plodder", "http_client", "mcp_command", "minimal_env", "stdio_client")

#: Counts ``steps`` steps, ``pause`` seconds each, streaming each one.
PLOD = Capability(name="slow.steps", description="Counts steps slowly, saying each one.",
                  input_schema={"type": "object", "required": ["steps"],
                                "properties": {"steps": {"type": "integer", "minimum": 1},
                                               "pause": {"type": "number", "minimum": 0}}})


class Plodder(Backend):
    """Streams one chunk per step; records the tasks it started and those cancelled."""

    type = "plodder"

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        self.started.append(task.task_id)
        steps = int(task.parameters["steps"])
        try:
            for step in range(steps):
                await asyncio.sleep(float(task.parameters.get("pause", 0.05)))
                yield Chunk(f"step {step + 1} of {steps}")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.append(task.task_id)
            raise
        yield Completion(output={"steps": steps})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        yield Completion(output="plodding")


@dataclass
class Agents:
    """``alpha`` (echo, math.evaluate) and ``plodder`` (slow.steps, its backend at hand)."""

    url: str
    alpha: AgentNode
    plodder: AgentNode
    backend: Plodder


def minimal_env() -> dict[str, str]:
    """What an MCP host gives a server beyond HOME, PATH and USER: nothing, but the path to
    this checkout's code when the tests run from one."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


def mcp_command(url: str, *extra: str) -> StdioServerParameters:
    """``agoramesh mcp --server URL`` as an MCP host launches it."""
    return StdioServerParameters(command=AGORAMESH[0], args=[*AGORAMESH[1:], "mcp", "--server",
                                                            url, *extra], env=minimal_env())


@asynccontextmanager
async def stdio_client(url: str, *, mode: str = "legacy",
                       handler: MessageHandlerFnT | None = None) -> AsyncIterator[Client]:
    """The SDK's client of a spawned ``agoramesh mcp`` (stdio)."""
    async with Client(mcp_command(url), mode=mode, message_handler=handler,
                      read_timeout_seconds=60) as client:
        yield client


@asynccontextmanager
async def http_client(url: str, *, mode: str = "legacy", handler: MessageHandlerFnT | None = None,
                      task_timeout: float = 30.0) -> AsyncIterator[Client]:
    """The SDK's client of an MCP server over streamable HTTP served in this process."""
    async with (MeshClient(BusConfig(servers=(url,)), discover_timeout=0.3) as mesh,
                McpHttp(MeshMcpServer(mesh, task_timeout=task_timeout)) as http,
                Client(http.url, mode=mode, message_handler=handler,
                       read_timeout_seconds=60) as client):
        yield client
