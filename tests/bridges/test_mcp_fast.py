"""The stdio hot path (FastCalls): the calls it takes are answered with the bytes the SDK
would write, with progress and cancellation; every other line is left to the SDK.

In process, on a real mesh: the lines a client sends are given to FastCalls as the stdio
transport gives them, and what it writes is read back. The same calls over a spawned
``agoramesh mcp`` with the SDK's client are in test_mcp_server.py (stdio modes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp import types
from mcp_support import Agents
from mcp_types import methods

from agoramesh.bridges.mcp_fast import FAST_VERSIONS, FastCalls
from agoramesh.bridges.mcp_server import MeshMcpServer
from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.bus import tracecontext
from agoramesh.config import BusConfig
from agoramesh.testing import wait_until

pytestmark = pytest.mark.integration


class Wire:
    """FastCalls with a session the SDK initialized at ``version``; its writes, parsed."""

    def __init__(self, server: MeshMcpServer, version: str = "2025-11-25") -> None:
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.fast = FastCalls(server, self._write)
        self.fast.outbound(types.JSONRPCResponse(jsonrpc="2.0", id=0, result={
            "protocolVersion": version, "capabilities": {},
            "serverInfo": {"name": "agoramesh", "version": "0"}}))
        assert not self.fast.take(line({"jsonrpc": "2.0", "method": "notifications/initialized"}))

    async def _write(self, data: bytes) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        message = json.loads(data)
        types.jsonrpc_message_adapter.validate_python(message)  # what a client accepts
        self.lines.put_nowait(message)

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(20):
            return await self.lines.get()

    async def call(self, ident: Any, name: str, arguments: Any = None,
                   **params: Any) -> dict[str, Any]:
        body = {"name": name, **({} if arguments is None else {"arguments": arguments}),
                **params}
        assert self.fast.take(line({"jsonrpc": "2.0", "id": ident, "method": "tools/call",
                                    "params": body}))
        answer = await self.next()
        assert answer["id"] == ident
        return answer


def line(message: Any) -> bytes:
    return json.dumps(message).encode()


def as_the_sdk_writes(result: dict[str, Any], version: str) -> dict[str, Any]:
    """``result`` read as a CallToolResult and shaped for the wire by the SDK's server."""
    model = types.CallToolResult.model_validate(result)
    dumped = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dict(methods.serialize_server_result("tools/call", version, dumped))


@pytest_asyncio.fixture
async def server(agents: Agents) -> AsyncIterator[MeshMcpServer]:
    async with MeshClient(BusConfig(servers=(agents.url,)), discover_timeout=0.3) as mesh:
        yield MeshMcpServer(mesh, task_timeout=20)


@pytest.mark.parametrize("version", sorted(FAST_VERSIONS))
async def test_answers_are_what_the_sdk_writes(server: MeshMcpServer, version: str) -> None:
    wire = Wire(server, version)
    calls = [
        ("echo", {"text": "grüße, 世界"}),  # non-ASCII, structured content
        ("math_evaluate", {"expression": "6*7"}),
        ("math_evaluate", {"expression": 5}),  # a bad argument: a tool error
        ("mesh_submit", {}),  # a required property missing: a tool error
        ("mesh_agents", {}),  # answered without the mesh
        ("mesh_submit", {"capability": "no.such.thing", "timeout": 2}),  # a mesh error
        ("echo", None),  # no arguments at all
    ]
    for ident, (name, arguments) in enumerate(calls, start=1):
        answer = await wire.call(ident, name, arguments)
        assert answer.keys() == {"jsonrpc", "id", "result"}
        assert answer["result"] == as_the_sdk_writes(answer["result"], version), name
    results = [await wire.call(100 + i, *call) for i, call in enumerate(calls[:4])]
    assert results[0]["result"]["structuredContent"]["result"] == {
        "echo": {"text": "grüße, 世界"}}
    assert results[1]["result"]["isError"] is False
    assert results[2]["result"]["content"][0]["text"].startswith(
        "InvalidInput: math_evaluate: arguments.expression: 5 is not of type 'string'")
    assert results[3]["result"]["isError"] is True
    assert wire.fast.taken == len(calls) + 4


async def test_lines_it_does_not_take_are_left_to_the_sdk(server: MeshMcpServer) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}}}
    not_ready = FastCalls(server, Wire(server).fast.write)
    assert not not_ready.take(line(call))  # no handshake seen
    for version in ("2024-11-05", "2025-03-26", "2026-07-28"):
        assert not Wire(server, version).fast.take(line(call))  # another result surface
    wire = Wire(server)
    params = call["params"]
    assert isinstance(params, dict)
    refused = [
        b"not json \"tools/call\"",
        line([call]),
        line({**call, "jsonrpc": "1.0"}),
        line({**call, "id": True}),
        line({**call, "id": 1.5}),
        line({**call, "id": None}),
        line({**call, "params": "zz"}),
        line({**call, "params": {**params, "extra": 1}}),
        line({**call, "params": {**params, "name": 7}}),
        line({**call, "params": {**params, "arguments": ["not", "an", "object"]}}),
        line({**call, "params": {**params, "_meta": {"progressToken": 1, "other": 2}}}),
        line({**call, "params": {**params, "_meta": {"progressToken": True}}}),
        line({**call, "params": {**params, "_meta": "x"}}),
        line({**call, "params": {**params, "name": "no_such_tool"}}),  # the SDK's error
        line({"jsonrpc": "2.0", "method": "tools/call", "params": params}),  # no id
        line({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        line({"jsonrpc": "2.0", "method": "notifications/cancelled",
              "params": {"requestId": 99}}),  # not one of ours
    ]
    for data in refused:
        assert not wire.fast.take(data), data
    tracecontext.install(lambda: None)
    try:
        assert not wire.fast.take(line(call))  # tracing on: the SDK's span is in the trace
    finally:
        tracecontext.install(None)
    assert wire.lines.empty() and wire.fast.taken == 0
    wire.fast.outbound(types.JSONRPCResponse(jsonrpc="2.0", id=0, result={
        "protocolVersion": "2025-11-25", "capabilities": {},
        "serverInfo": {"name": "agoramesh", "version": "0"}}))
    assert not wire.fast.take(line(call))  # initialized again: not until the client says so


async def test_progress_then_the_answer(server: MeshMcpServer, agents: Agents) -> None:
    wire = Wire(server)
    assert wire.fast.take(line({"jsonrpc": "2.0", "id": "p", "method": "tools/call", "params": {
        "name": "slow_steps", "arguments": {"steps": 3, "pause": 0.05},
        "_meta": {"progressToken": "tok"}}}))
    seen = [await wire.next()]
    while "id" not in seen[-1]:
        seen.append(await wire.next())
    notes = seen[:-1]
    assert {note["method"] for note in notes} == {"notifications/progress"}
    assert [note["params"]["progress"] for note in notes] == [
        float(n) for n in range(1, len(notes) + 1)]
    assert {note["params"]["progressToken"] for note in notes} == {"tok"}
    messages = [note["params"]["message"] for note in notes]
    assert any("step 3 of 3" in message for message in messages), messages
    assert seen[-1]["result"]["structuredContent"]["result"] == {"steps": 3}


async def test_a_cancelled_call_is_cancelled_on_the_mesh_and_not_answered(
        server: MeshMcpServer, agents: Agents) -> None:
    wire = Wire(server)
    for ident in (7, 8):
        assert wire.fast.take(line({"jsonrpc": "2.0", "id": ident, "method": "tools/call",
                                    "params": {"name": "slow_steps",
                                               "arguments": {"steps": 600, "pause": 0.1}}}))
    backend = agents.backend
    await wait_until(lambda: len(backend.started) == 2, timeout=10)
    again = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "slow_steps", "arguments": {"steps": 1}}}
    assert not wire.fast.take(line(again))  # id 7 is in flight here: the SDK's to answer
    assert wire.fast.take(line({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                "params": {"requestId": 7, "reason": "enough"}}))
    await wait_until(lambda: len(backend.cancelled) == 1, timeout=10)
    await wire.fast.close()  # the session ends: what still runs is stopped
    await wait_until(lambda: len(backend.cancelled) == 2, timeout=10)
    assert sorted(backend.cancelled) == sorted(backend.started)
    await asyncio.sleep(0.2)
    assert wire.lines.empty()  # neither was answered


async def test_a_call_that_breaks_is_a_json_rpc_error_not_silence(
        server: MeshMcpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure that is no tool error (a bug of ours) still answers the call, as the SDK's
    dispatcher does: code 0 and the exception's text."""
    async def broken(*_: Any) -> Any:
        raise RuntimeError("the handler broke")

    monkeypatch.setattr(server, "answer", broken)
    wire = Wire(server)
    assert wire.fast.take(line({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                                "params": {"name": "echo", "arguments": {"text": "x"}}}))
    assert await wire.next() == {"jsonrpc": "2.0", "id": 5,
                                 "error": {"code": 0, "message": "the handler broke"}}
