"""``agoramesh a2a``: the mesh's agents as A2A agents, served by a client of the mesh.

The process is no agent: it connects like ``agoramesh submit`` (``--server``,
``--creds``, ``--tls``), keeps its view of the agents current by listening to
presence (an :class:`~agoramesh.nodes.host.AgentHost` hosting none, after one
discovery round), and runs each A2A message's auction itself, as the initiator.
The mesh is one A2A agent at ``/`` (a skill per capability), each agent another
at ``/agents/<name or id>/`` (:mod:`agoramesh.bridges.a2a_server`); the bearer
token is ``--api-token`` or ``$AGORAMESH_API_TOKEN``. ``agoramesh node`` and
``agoramesh up`` serve the same with ``--a2a-port``, from an agent of theirs.
Runs until Ctrl-C; needs ``agoramesh[a2a]``.
"""

from __future__ import annotations

import argparse
import asyncio

from agoramesh.bus.credentials import client_identity
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.runtime import a2a_bridge, add_api_token_option, api_token, on_signals, serve_a2a
from agoramesh.config import Environment
from agoramesh.nodes.host import AgentHost
from agoramesh.protocols.allocation.dispatch import Dispatcher

__all__ = ("register",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "a2a", help="serve the mesh's agents as A2A agents until Ctrl-C",
        description="Serve the mesh as an A2A agent (a skill per capability, each message "
                    "auctioned) at /, and each of its agents at /agents/<name or id>/, over "
                    "A2A's JSON-RPC binding (1.0 and 0.3).")
    parser.add_argument("--port", dest="a2a_port", type=int, default=8100,
                        help="port to serve A2A on (default 8100; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="listen address (default 127.0.0.1)")
    parser.add_argument("--discover-timeout", type=float, default=0.5,
                        help="seconds to learn the agents at start (default 0.5)")
    parser.add_argument("--heartbeat", type=float, default=1.0,
                        help="the agents' heartbeat interval, to judge when one is gone "
                             "(seconds, default 1)")
    add_api_token_option(parser)
    add_client_options(parser)
    parser.set_defaults(handler=_a2a)


async def _a2a(args: argparse.Namespace, env: Environment) -> int:
    token = api_token(args, env)
    a2a_bridge()  # a missing extra fails before connecting
    config = client_config(args, env, "agoramesh-a2a")
    stop = asyncio.Event()
    with on_signals(stop.set):
        host = AgentHost(config, identity=client_identity(config), name="agoramesh-a2a",
                         heartbeat_interval=args.heartbeat)
        async with host:
            await host.watch.sweep(args.discover_timeout)
            dispatcher = Dispatcher(host.bus, host.directory)
            async with serve_a2a(dispatcher, host=args.host, port=args.a2a_port,
                                 token=token) as server:
                info = {"event": "ready", "a2a": server.url, "server": config.servers[0],
                        "agents": len(dispatcher.agents()),
                        "card": f"{server.url}/.well-known/agent-card.json"}
                if args.json:
                    emit_json(info)
                else:
                    emit(f"a2a ready: {server.url} ({info['agents']} agents on "
                         f"{config.servers[0]}); agent card: {info['card']}")
                await stop.wait()
    return 0
