"""``tools/call`` on stdio without the SDK's request machinery: the MCP server's hot path.

A tool call through the SDK's server costs about as much as the mesh task it
runs: the JSON-RPC dispatcher, its memory streams and spawned tasks, pydantic
validation of the message, of the params and of the result, a middleware span
per message. :class:`FastCalls` answers the common call itself, on the stdio
transport (:mod:`~agoramesh.bridges.mcp_stdio`), with the same code behind it
(:meth:`MeshMcpServer.answer <agoramesh.bridges.mcp_server.MeshMcpServer.answer>`)
and the same bytes on the wire; everything else goes to the SDK as before.

Taken here: a ``tools/call`` request of a session the SDK has initialized
(the client's ``notifications/initialized`` seen after the SDK answered
``initialize`` with a protocol version whose call result is content,
structured content and ``isError``), with a string or integer id not already
in flight here, params of only ``name`` (a tool that exists), ``arguments``
(an object, or absent) and ``_meta`` (only a ``progressToken``, a string or an
integer), while tracing is off (the SDK's span of the call is then part of
the trace). Its ``notifications/cancelled`` is taken here too: the call is
cancelled on the mesh and, as the SDK does, never answered; a call that fails
other than with a tool error (a bug) is the JSON-RPC error the SDK's dispatcher
would send (code 0, the exception's text). Anything else,
malformed or unusual, is the SDK's, so it is answered exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcp import types

from agoramesh.bus import tracecontext

if TYPE_CHECKING:
    from agoramesh.bridges.mcp_calls import Answer
    from agoramesh.bridges.mcp_catalog import ToolSpec
    from agoramesh.bridges.mcp_server import MeshMcpServer

__all__ = ("FAST_VERSIONS", "FastCalls", "result_of")

log = logging.getLogger("agoramesh.mcp")

#: Protocol versions whose CallToolResult is content, structuredContent and isError.
FAST_VERSIONS = frozenset({"2025-06-18", "2025-11-25"})
#: Markers of a line this module may take; any other line is not even parsed here.
_MARKERS = (b'"tools/call"', b'"notifications/cancelled"', b'"notifications/initialized"')

Write = Callable[[bytes], Awaitable[None]]


def result_of(answer: Answer) -> dict[str, Any]:
    """The wire form of a CallToolResult for ``answer``, as the SDK writes it."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": answer.text}]}
    if answer.structured is not None:
        result["structuredContent"] = answer.structured
    result["isError"] = answer.error
    return result


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode() + b"\n"


def _request_id(value: object) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


class FastCalls:
    """The calls of one stdio session that are answered here; ``write`` sends a line."""

    def __init__(self, server: MeshMcpServer, write: Write) -> None:
        self.server = server
        self.write = write
        self.version: str | None = None  # what the SDK's initialize result agreed
        self.ready = False  # and the client said it is initialized
        self.taken = 0  # calls answered here (for tests and the log)
        self._calls: dict[str | int, asyncio.Task[None]] = {}

    def outbound(self, message: types.JSONRPCMessage) -> None:
        """Look at what the SDK sends: its initialize result names the protocol version."""
        if (isinstance(message, types.JSONRPCResponse) and isinstance(message.result, dict)
                and "protocolVersion" in message.result and "serverInfo" in message.result):
            version = message.result["protocolVersion"]
            self.version = version if isinstance(version, str) else None
            self.ready = False

    def take(self, line: bytes) -> bool:
        """True if ``line`` was taken here (answered or to be answered); False: the SDK's."""
        if not any(marker in line for marker in _MARKERS):
            return False
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return False
        method, params = message.get("method"), message.get("params")
        if method == "notifications/initialized":
            self.ready = self.version is not None
            return False  # the SDK's as well: it commits the session
        if method == "notifications/cancelled":
            return "id" not in message and self._cancelled(params)
        if method == "tools/call" and "id" in message:
            return self._call(message["id"], params)
        return False

    def _cancelled(self, params: object) -> bool:
        if not isinstance(params, dict):
            return False
        ident = _request_id(params.get("requestId"))
        call = None if ident is None else self._calls.pop(ident, None)
        if call is None:
            return False
        call.cancel()  # the mesh is told to stop; the call is not answered
        return True

    def _call(self, ident: object, params: object) -> bool:
        request = _request_id(ident)
        if (request is None or request in self._calls or not self.ready
                or self.version not in FAST_VERSIONS or tracecontext.current() is not None
                or not isinstance(params, dict) or not params.keys() <= {"name", "arguments",
                                                                       "_meta"}):
            return False
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params.get(
            "_meta", {})
        if (not isinstance(name, str) or not isinstance(arguments, dict)
                or not isinstance(meta, dict) or not meta.keys() <= {"progressToken"}):
            return False
        token = _request_id(meta.get("progressToken"))
        if "progressToken" in meta and token is None:
            return False
        spec = self.server.tool(name)
        if spec is None:
            return False  # the SDK's "Unknown tool" error
        report = None if token is None else self._reporter(token)
        call = asyncio.ensure_future(self._answer(request, spec, arguments, report))
        self._calls[request] = call
        call.add_done_callback(lambda _: self._calls.pop(request, None)
                               if self._calls.get(request) is call else None)
        self.taken += 1
        return True

    def _reporter(self, token: str | int) -> Callable[[int, str], Awaitable[None]]:
        async def report(count: int, note: str) -> None:
            await self.write(_encode({"jsonrpc": "2.0", "method": "notifications/progress",
                                      "params": {"progressToken": token,
                                                 "progress": float(count), "message": note}}))
        return report

    async def _answer(self, request: str | int, spec: ToolSpec, arguments: dict[str, Any],
                      report: Callable[[int, str], Awaitable[None]] | None) -> None:
        try:
            answer = await self.server.answer(spec, arguments, report)
        except Exception as exc:  # a bug of ours: answered as the SDK's dispatcher answers it
            log.exception("tools/call %s failed", spec.name)
            await self.write(_encode({"jsonrpc": "2.0", "id": request,
                                      "error": {"code": 0, "message": str(exc)}}))
            return
        response = {"jsonrpc": "2.0", "id": request, "result": result_of(answer)}
        try:
            data = _encode(response)
        except (TypeError, ValueError):  # not JSON as it stands (NaN, ...): the SDK's encoding
            data = types.JSONRPCResponse(jsonrpc="2.0", id=request, result=types.CallToolResult(
                content=[types.TextContent(type="text", text=answer.text)],
                structured_content=answer.structured, is_error=answer.error,
            ).model_dump(by_alias=True, mode="json", exclude_none=True)).model_dump_json(
                by_alias=True, exclude_unset=True).encode() + b"\n"
        await self.write(data)

    async def close(self, grace: float = 2.0) -> None:
        """Cancel the calls still running (stdin ended): each tells the mesh to stop."""
        calls = list(self._calls.values())
        self._calls.clear()
        for call in calls:
            call.cancel()
        if calls:
            with contextlib.suppress(Exception):
                await asyncio.wait(calls, timeout=grace)
