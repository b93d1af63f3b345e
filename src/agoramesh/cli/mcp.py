"""``agoramesh mcp``: the mesh as MCP tools, for Claude Code, Codex, Claude Desktop and others.

By default it serves MCP over stdin and stdout, as MCP hosts run a server:
stdout carries JSON-RPC and nothing else, logs go to stderr, and ``--server``
(or ``$AGORAMESH_SERVER``) is all it needs, so a host's minimal environment
(HOME, PATH, USER) will do. It serves until stdin ends or a signal comes.
``--http-port`` serves streamable HTTP at ``http://HOST:PORT/mcp`` instead,
and prints where once it listens (``--json``: one JSON line).

It is a client of the mesh, not an agent: it follows who is on the mesh
(presence), and the tasks its tools send are auctioned from here
(:mod:`agoramesh.bridges.mcp_server` has the tools). It needs the ``mcp``
extra: ``pip install 'agoramesh[mcp]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.runtime import api_token, on_signals
from agoramesh.config import Environment
from agoramesh.errors import ConfigError

__all__ = ("register",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "mcp", help="serve the mesh as MCP tools (stdio; --http-port for streamable HTTP)",
        description="Serve the mesh's agents as MCP tools: list the agents, submit tasks, "
                    "run collaborations and workflows, one tool per capability. Over stdio "
                    "by default (what MCP hosts launch); --http-port serves streamable HTTP.")
    add_client_options(parser)
    parser.add_argument("--http-port", type=int, metavar="PORT",
                        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio; "
                             "0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address --http-port listens on (default 127.0.0.1)")
    parser.add_argument("--api-token", metavar="TOKEN",
                        help="with --http-port: require 'Authorization: Bearer TOKEN' on every "
                             "request; at least 16 characters; default $AGORAMESH_API_TOKEN")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a task, collaboration or workflow may take unless the "
                             "call says otherwise (default 120)")
    parser.add_argument("--discover-timeout", type=float, default=0.5,
                        help="seconds to learn the agents already on the mesh at start "
                             "(default 0.5)")
    parser.add_argument("--sdk-calls", action="store_true",
                        help="on stdio, leave every tools/call to the MCP SDK's dispatcher "
                             "(by default the common call is answered without it: faster, "
                             "the same on the wire)")
    parser.set_defaults(handler=_mcp)


async def _mcp(args: argparse.Namespace, env: Environment) -> int:
    if args.timeout <= 0 or args.discover_timeout < 0:
        raise ConfigError("--timeout must be positive and --discover-timeout not negative")
    token = api_token(args, env)
    config = client_config(args, env, "agoramesh-mcp")
    try:
        from agoramesh.bridges.mcp_http import McpHttp
        from agoramesh.bridges.mcp_server import MeshMcpServer
    except ImportError as exc:
        raise ConfigError(f"agoramesh mcp needs the MCP SDK: pip install 'agoramesh[mcp]' "
                          f"({exc.name} missing)") from None
    stop = asyncio.Event()
    with on_signals(stop.set):
        async with MeshClient(config, timeout=args.timeout,
                              discover_timeout=args.discover_timeout) as mesh:
            server = MeshMcpServer(mesh, task_timeout=args.timeout)
            if args.http_port is None:
                await _until(stop, server.serve_stdio(fast=not args.sdk_calls))
                return 0
            async with McpHttp(server, host=args.host, port=args.http_port,
                               token=token) as http:
                if args.json:
                    emit_json({"event": "ready", "url": http.url, "server": config.servers[0],
                               "tools": len(server.tools)})
                else:
                    emit(f"mcp ready: {http.url} ({len(server.tools)} tools, mesh "
                         f"{config.servers[0]})")
                await stop.wait()
    return 0


async def _until(stop: asyncio.Event, serving: Coroutine[Any, Any, None]) -> None:
    """Run ``serving`` until it ends or ``stop`` is set (then it is cancelled)."""
    served = asyncio.ensure_future(serving)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({served, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        served.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await served
