"""An MCP server written with the SDK, for the ``--type mcp`` tests: two tools, one slow.

``python tool_server.py stdio PIDFILE`` serves stdio; ``python tool_server.py http PORT
PIDFILE [TOKEN]`` serves streamable HTTP on 127.0.0.1:PORT at /mcp (with TOKEN: only to
requests bearing it, 401 to the rest). Either way it writes its pid to PIDFILE once it
listens, so a test can kill it.

- ``slow.square`` {n, seconds?}: sleeps ``seconds`` in ten steps, reporting each as progress,
  then answers ``{"square": n*n, "pid": …}`` as structured content;
- ``explode`` {reason?}: a tool error whose text is ``kaboom: <reason>``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

SQUARE = types.Tool(name="slow.square", description="Squares n, slowly.", input_schema={
    "type": "object", "required": ["n"],
    "properties": {"n": {"type": "integer"}, "seconds": {"type": "number", "minimum": 0}}})
EXPLODE = types.Tool(name="explode", description="Always fails.", input_schema={
    "type": "object", "properties": {"reason": {"type": "string"}}})


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[SQUARE, EXPLODE])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "explode":
        reason = arguments.get("reason", "no reason")
        return types.CallToolResult(content=[types.TextContent(type="text",
                                                               text=f"kaboom: {reason}")],
                                    is_error=True)
    seconds = float(arguments.get("seconds", 0))
    for step in range(10):
        await ctx.session.report_progress(step, 10, f"squaring, step {step + 1} of 10")
        await asyncio.sleep(seconds / 10)
    n = int(arguments["n"])
    return types.CallToolResult(content=[types.TextContent(type="text", text=str(n * n))],
                                structured_content={"square": n * n, "pid": os.getpid()})


server = Server("tool-server", on_list_tools=list_tools, on_call_tool=call_tool)


def guarded(app: Any, token: str) -> Any:
    """``app`` answering 401 to an HTTP request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    async def guard(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guard


def served(pidfile: str) -> None:
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(pidfile + ".tmp", pidfile)


async def main(mode: str, *rest: str) -> None:
    if mode == "stdio":  # stdio PIDFILE [LINGER]: LINGER seconds more once stdin has ended
        async with stdio_server() as (read, write):
            served(rest[0])
            await server.run(read, write, server.create_initialization_options())
        await asyncio.sleep(float(rest[1]) if rest[1:] else 0)
        return
    port, pidfile, *token = rest
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(port)))
    sock.listen(16)
    app = server.streamable_http_app()
    config = uvicorn.Config(guarded(app, token[0]) if token else app, log_level="warning",
                            lifespan="on")
    served(pidfile)  # it listens already: connections wait in the backlog
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
