"""``agoramesh node``: run one agent with its own embedded nats-server until Ctrl-C.

Roles: no flag starts a seed (a new mesh, or one joining ``--bootstrap``
routes); ``--leaf host:port`` starts a leaf attached to those hubs;
``--connect nats://…`` embeds nothing and uses an existing NATS deployment.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.runtime import on_signals, serve_endpoints
from agoramesh.config import BusConfig, Environment, Role, ServerConfig
from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.registry import BACKEND_TYPES, create_backend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import AgentNode, NodeConfig
from agoramesh.observability.http import MetricsServer
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.http_api import HttpApi

__all__ = ("register",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "node", help="run one agent (with its own embedded nats-server)",
        description="Run an agent node. Without --bootstrap/--leaf/--connect it starts a new "
                    "mesh as its first seed.")
    parser.add_argument("--type", default="offline", choices=sorted(BACKEND_TYPES),
                        help="backend (default offline)")
    parser.add_argument("--name", required=True, help="agent name")
    parser.add_argument("--capability", action="append", default=[], metavar="NAME",
                        help="capability to offer (repeatable; offline default: all)")
    parser.add_argument("--model", help="model name for LLM backends")
    parser.add_argument("--api-key", help="provider API key (default: OPENAI_API_KEY / "
                                          "ANTHROPIC_API_KEY)")
    parser.add_argument("--base-url", help="provider URL (OpenAI-compatible servers, Ollama)")
    parser.add_argument("--command", help="program for --type command (JSON in, JSON out)")
    where = parser.add_argument_group("mesh")
    where.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                       help="a seed's cluster address to join (repeatable)")
    where.add_argument("--leaf", action="append", default=[], metavar="HOST:PORT",
                       help="join as a leaf of these hubs' leafnode addresses (repeatable)")
    where.add_argument("--connect", metavar="URL", help="use this NATS server, embed none")
    where.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    where.add_argument("--port", type=int, default=-1, help="client port (default: any free)")
    where.add_argument("--cluster-port", type=int, default=-1, help="route port (seed)")
    where.add_argument("--leaf-port", type=int, default=-1, help="leafnode port (seed)")
    parser.add_argument("--max-tasks", type=int, default=8, help="concurrent tasks (default 8)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--key-file", type=Path, help="seed file (default $AGORAMESH_HOME/"
                                                      "<name>.nk, created if missing)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics and /healthz here; 0 picks a free port")
    parser.add_argument("--trajectory", type=Path, metavar="FILE",
                        help="append what the agent saw, decided and sent to FILE (JSON lines)")
    parser.add_argument("--http-port", type=int,
                        help="serve the HTTP API (/api/agents, /api/tasks, /api/collaborate) "
                             "here; 0 picks a free port")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_node)


def _server_config(args: argparse.Namespace, env: Environment, data_dir: Path) -> ServerConfig:
    if args.leaf and args.bootstrap:
        raise ConfigError("use --leaf or --bootstrap, not both")
    role = Role.LEAF if args.leaf else Role.SEED
    return ServerConfig(name=args.name.replace(" ", "-"), role=role, data_dir=data_dir,
                        host=args.host, port=args.port, cluster_port=args.cluster_port,
                        leaf_port=args.leaf_port, bootstrap=tuple(args.bootstrap),
                        hubs=tuple(args.leaf), binary=env.nats_server)


async def _node(args: argparse.Namespace, env: Environment) -> int:
    capabilities = capabilities_for(args.type, args.capability)
    backend = create_backend(args.type, BackendConfig(
        model=args.model, api_key=args.api_key or env.api_keys.get(args.type),
        base_url=args.base_url, command=tuple(args.command.split()) if args.command else ()))
    identity = Identity.load_or_create(args.key_file or env.home / f"{args.name}.nk")
    server = None
    if not args.connect:
        server = EmbeddedServer(_server_config(args, env, env.home / "nodes" / args.name))
    stop = asyncio.Event()
    with on_signals(stop.set):
        try:
            if server is not None:
                server.on_crash.append(lambda _: stop.set())
                await server.start()
            url = args.connect or (server.client_url if server else "")
            trajectory = (Trajectory(args.trajectory, agent=args.name,
                                     agent_id=identity.agent_id) if args.trajectory else None)
            node = AgentNode(identity, NodeConfig(
                name=args.name, type=args.type, capabilities=capabilities,
                max_concurrent_tasks=args.max_tasks, heartbeat_interval=args.heartbeat),
                backend, BusConfig(servers=(url,), name=args.name, prefix=env.prefix),
                trajectory=trajectory)
            await node.start()
            try:
                async with serve_endpoints(
                        host=args.host, metrics_port=args.metrics_port,
                        http_port=args.http_port, api_agent=node, agents=[node],
                        servers=[server] if server is not None else []) as endpoints:
                    _ready(args, node, server, url, endpoints.api, endpoints.metrics)
                    await stop.wait()
            finally:
                await node.stop()
        finally:
            if server is not None:
                await server.stop()
    if server is not None:
        server.check()  # a crash stopped us: exit with its error
    return 0


def _ready(args: argparse.Namespace, node: AgentNode, server: EmbeddedServer | None,
           url: str, api: HttpApi | None, metrics: MetricsServer | None) -> None:
    info: dict[str, object] = {"event": "ready", "name": node.config.name, "id": node.agent_id,
                               "type": node.config.type, "client": url,
                               "capabilities": [c.name for c in node.config.capabilities]}
    if server is not None:
        info["pid"] = server.pid
        if server.config.role is Role.SEED:
            info |= {"cluster": server.cluster_address, "leaf": server.leaf_address}
    if api is not None:
        info["http"] = api.url
    if metrics is not None:
        info["metrics"] = metrics.url + "/metrics"
    if args.json:
        emit_json(info)
    else:
        emit(f"node ready: {node.config.name} ({node.config.type}) {node.agent_id}")
        emit("  " + "  ".join(f"{k}={v}" for k, v in info.items()
                              if k in ("client", "cluster", "leaf", "pid", "http", "metrics")))
        emit(f"  capabilities: {', '.join(info['capabilities'])}")  # type: ignore[arg-type]
