"""Bad input on the MCP surfaces gets the protocol's error, and nothing crashes: raw
JSON-RPC lines to a spawned ``agoramesh mcp`` (stdio), raw HTTP to the streamable HTTP one."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import pytest
from mcp import types
from mcp_support import Agents, mcp_command

from agoramesh.bridges.mcp_http import McpHttp
from agoramesh.bridges.mcp_server import MeshMcpServer
from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.config import MAX_MESSAGE_BYTES, BusConfig

pytestmark = [pytest.mark.integration, pytest.mark.e2e]  # stdio spawns `agoramesh mcp`

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "raw", "version": "1"}}}


class RawStdio:
    """``agoramesh mcp`` with its pipes in our hands; every stdout line must be JSON-RPC."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[dict[str, Any]] = []

    async def send(self, line: bytes | dict[str, Any]) -> None:
        assert self.process.stdin is not None
        data = line if isinstance(line, bytes) else json.dumps(line).encode()
        self.process.stdin.write(data + b"\n")
        await self.process.stdin.drain()

    async def answer(self, ident: Any) -> dict[str, Any]:
        """The response with id ``ident`` (notifications before it are kept in ``seen``)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = await self.process.stdout.readline()
                assert line, "the server closed stdout"
                message = json.loads(line)
                types.jsonrpc_message_adapter.validate_python(message)
                self.seen.append(message)
                if "method" not in message and message.get("id") == ident:
                    return dict(message)

    async def call(self, ident: Any, name: str, arguments: Any) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": ident, "method": "tools/call",
                         "params": {"name": name, "arguments": arguments}})
        return await self.answer(ident)


def error_of(answer: dict[str, Any]) -> tuple[int, str]:
    return answer["error"]["code"], answer["error"]["message"]


def tool_error(answer: dict[str, Any]) -> str:
    result = answer["result"]
    assert result["isError"] is True, result
    return str(result["content"][0]["text"])


@pytest.mark.parametrize("calls", ["fast", "sdk"])
async def test_raw_json_rpc_over_stdio(agents: Agents, calls: str) -> None:
    """The same lines, answered the same way whether the common tools/call is answered by
    the fast path (the default) or by the SDK's dispatcher (--sdk-calls)."""
    command = mcp_command(agents.url, *(["--sdk-calls"] if calls == "sdk" else []))
    process = await asyncio.create_subprocess_exec(
        command.command, *command.args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env={**{k: os.environ[k] for k in ("HOME", "PATH")
                                               if k in os.environ}, **(command.env or {})})
    raw = RawStdio(process)
    try:
        await raw.send(INIT)
        assert (await raw.answer(0))["result"]["capabilities"]["tools"] == {"listChanged": True}
        await raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        await raw.send(b"this is not json")
        assert error_of(await raw.answer(None)) == (
            types.PARSE_ERROR, "Parse error: the line is not JSON")
        await raw.send(b"[1, 2]")
        assert error_of(await raw.answer(None))[0] == types.INVALID_REQUEST
        await raw.send({"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": "zz"})
        assert error_of(await raw.answer("b"))[0] == types.INVALID_REQUEST
        await raw.send({"jsonrpc": "2.0", "id": 3, "method": "no/such/method"})
        assert error_of(await raw.answer(3))[0] == types.METHOD_NOT_FOUND
        assert error_of(await raw.call(4, "no_such_tool", {})) == (
            types.INVALID_PARAMS, "Unknown tool: no_such_tool")
        assert error_of(await raw.call(5, "echo", ["not", "an", "object"]))[0] == (
            types.INVALID_PARAMS)
        assert tool_error(await raw.call(6, "math_evaluate", {"expression": 5})).startswith(
            "InvalidInput: math_evaluate: arguments.expression: 5 is not of type 'string'")
        assert tool_error(await raw.call(7, "mesh_submit", {})).startswith(
            "InvalidRequest: mesh_submit: arguments: 'capability' is a required property")
        oversize = tool_error(await raw.call(8, "echo", {"text": "x" * MAX_MESSAGE_BYTES}))
        assert oversize.startswith("OversizeEnvelope: ")

        done = await raw.call(9, "echo", {"text": "still here"})
        assert done["result"]["structuredContent"]["result"] == {"echo": {"text": "still here"}}
        assert done["result"]["content"] == [{"type": "text", "text": '{"echo": {"text": '
                                                                     '"still here"}}'}]
        assert done["result"]["isError"] is False and done.keys() == {"jsonrpc", "id", "result"}
        assert process.returncode is None
        assert agents.alpha.is_running and agents.plodder.is_running
    finally:
        assert process.stdin is not None
        process.stdin.close()  # as a host stops a server: stdin first
        async with asyncio.timeout(20):
            code = await process.wait()
    assert code == 0


async def test_raw_http(agents: Agents) -> None:
    async with (MeshClient(BusConfig(servers=(agents.url,)), discover_timeout=0.3) as mesh,
                McpHttp(MeshMcpServer(mesh), max_body=64 * 1024) as http,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session):
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}

        async def post(body: bytes, **extra: str) -> tuple[int, str]:
            async with session.post(http.url, data=body, headers={**headers, **extra}) as reply:
                return reply.status, await reply.text()

        status, body = await post(b"{not json")
        assert status == 400 and str(types.PARSE_ERROR) in body
        status, _ = await post(json.dumps({**INIT, "params": {
            "padding": "x" * 100_000}}).encode())
        assert status == 413
        status, _ = await post(json.dumps(INIT).encode(), Host="evil.example:80")
        assert status in (400, 421)
        status, body = await post(json.dumps(INIT).encode())
        assert status == 200 and '"listChanged":true' in body.replace(" ", "")
    assert agents.alpha.is_running


async def test_bearer_token(agents: Agents) -> None:
    token = "a-token-of-24-characters"
    async with (MeshClient(BusConfig(servers=(agents.url,)), discover_timeout=0.3) as mesh,
                McpHttp(MeshMcpServer(mesh), token=token) as http,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session):
        headers = {"Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        for given in ({}, {"Authorization": "Bearer wrong-token-of-24-chars"},
                      {"Authorization": f"Basic {token}"}):
            async with session.post(http.url, json=INIT, headers={**headers, **given}) as reply:
                assert reply.status == 401
                assert reply.headers["WWW-Authenticate"] == "Bearer"
        async with session.post(http.url, json=INIT, headers={
                **headers, "Authorization": f"Bearer {token}"}) as reply:
            assert reply.status == 200
