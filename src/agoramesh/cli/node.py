"""``agoramesh node``: run one agent with its own embedded nats-server until Ctrl-C.

Roles: no flag starts a seed (a new mesh, or one joining ``--bootstrap``
routes); ``--leaf host:port`` starts a leaf attached to those hubs;
``--connect nats://…`` embeds nothing and uses an existing NATS deployment.

A seed runs JetStream (the durable jobs, stored under the node's home, so a
restarted node finds them), clustered with the other seeds: its JetStream
has a leader once a second seed has joined. Leaves and ``--connect`` nodes
use the seeds' JetStream. Every node takes up to ``--max-jobs`` durable
jobs at a time from the mesh (0: none).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.certs import add_tls_option, tls_directory
from agoramesh.cli.output import emit, emit_json, warn
from agoramesh.cli.runtime import (
    Endpoints,
    a2a_bridge,
    add_a2a_port_option,
    add_api_token_option,
    add_jetstream_options,
    add_sign_all_option,
    api_token,
    jetstream_config,
    on_signals,
    serve_endpoints,
    with_sign_all,
)
from agoramesh.config import BusConfig, Environment, ServerConfig, ServerRole
from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.registry import BACKEND_TYPES, create_backend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from agoramesh.observability.trajectory import Trajectory
from agoramesh.security.acl import AccessPolicy, load_policy
from agoramesh.security.certs import tls_config
from agoramesh.security.trust import TrustStore, load_user_jwt

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
    parser.add_argument("--a2a-url", metavar="URL",
                        help="the A2A agent for --type a2a: its skills become this node's "
                             "capabilities (token: --api-key or $AGORAMESH_A2A_TOKEN)")
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
    add_tls_option(where, client=False)
    where.add_argument("--trust", type=Path, metavar="DIR",
                       help="secured mesh: the trust store (its *.jwt, route.secret and "
                            "link.creds) this node's server enforces; with its account key "
                            "present the node also admits itself")
    where.add_argument("--jwt", type=Path, metavar="FILE",
                       help="secured mesh: this agent's JWT from `agoramesh trust admit`")
    parser.add_argument("--max-tasks", type=int, default=8, help="concurrent tasks (default 8)")
    add_sign_all_option(parser)
    parser.add_argument("--max-jobs", type=int, default=32,
                        help="durable jobs this node drives at once (default 32; 0: none)")
    add_jetstream_options(where)
    parser.add_argument("--acl", type=Path, metavar="FILE",
                        help="access policy (YAML or JSON, docs/SECURITY.md): who may ask this "
                             "agent for what; default: everyone, everything")
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
    add_a2a_port_option(parser)
    add_api_token_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_node)


def _server_config(args: argparse.Namespace, env: Environment, data_dir: Path) -> ServerConfig:
    if args.leaf and args.bootstrap:
        raise ConfigError("use --leaf or --bootstrap, not both")
    role = ServerRole.LEAF if args.leaf else ServerRole.SEED
    tls_dir = tls_directory(args, env)
    trust = TrustStore.open(args.trust, prefix=env.prefix) if args.trust else None
    # A secured mesh runs without JetStream for now (its accounts grant none).
    jetstream = None if role is ServerRole.LEAF or trust is not None else jetstream_config(args)
    return ServerConfig(name=args.name.replace(" ", "-"), role=role, data_dir=data_dir,
                        host=args.host, port=args.port, cluster_port=args.cluster_port,
                        leaf_port=args.leaf_port, bootstrap=tuple(args.bootstrap),
                        hubs=tuple(args.leaf), binary=env.nats_server,
                        tls=tls_config(tls_dir) if tls_dir is not None else None,
                        auth=trust.server_auth() if trust else None, jetstream=jetstream)


def _membership(args: argparse.Namespace, env: Environment, identity: Identity,
                capabilities: list[str]) -> str | None:
    """This agent's user JWT on a secured mesh: ``--jwt``, or self-admission via ``--trust``."""
    if args.jwt is not None:
        return load_user_jwt(args.jwt, identity)
    if args.trust is None:
        return None
    store = TrustStore.open(args.trust, prefix=env.prefix)
    if not (args.trust / "account.nk").exists():
        raise ConfigError(f"{args.trust} has no account key to admit this agent: pass --jwt "
                          f"FILE from `agoramesh trust admit {identity.agent_id} …`")
    return store.admit(identity.agent_id, capabilities=capabilities, name=args.name).jwt


async def _node(args: argparse.Namespace, env: Environment) -> int:
    env = with_sign_all(args, env)
    token = api_token(args, env)
    if args.a2a_url is not None and args.type != "a2a":
        raise ConfigError("--a2a-url is for --type a2a")
    if args.a2a_port is not None:
        a2a_bridge()  # a missing extra fails before anything starts
    backend = create_backend(args.type, BackendConfig(
        model=args.model, api_key=args.api_key or env.api_keys.get(args.type),
        base_url=args.a2a_url or args.base_url,
        command=tuple(args.command.split()) if args.command else ()))
    offered = await backend.connect(args.capability)
    capabilities = (offered if offered is not None
                    else capabilities_for(args.type, args.capability))
    access = load_policy(args.acl) if args.acl else AccessPolicy()
    identity = Identity.load_or_create(args.key_file or env.home / f"{args.name}.nk")
    user_jwt = _membership(args, env, identity, [cap.name for cap in capabilities])
    if user_jwt is None and args.trust is None:
        warn("WARNING: open mesh: this node's server admits anyone who can reach its ports; "
             "fine for a local demo only. Use --trust DIR (agoramesh trust init) to enforce "
             "membership (docs/SECURITY.md).")
    tls_dir = tls_directory(args, env)
    tls = tls_config(tls_dir, client=True) if tls_dir is not None else None
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
                max_concurrent_tasks=args.max_tasks, heartbeat_interval=args.heartbeat,
                access=access, max_jobs=args.max_jobs),
                backend, BusConfig(servers=(url,), name=args.name, prefix=env.prefix, tls=tls,
                                   user_jwt=user_jwt, envelope=env.envelope),
                trajectory=trajectory)
            await node.start()
            try:
                async with serve_endpoints(
                        host=args.host, metrics_port=args.metrics_port,
                        http_port=args.http_port, api_agent=node, agents=[node],
                        servers=[server] if server is not None else [],
                        api_token=token, a2a_port=args.a2a_port) as endpoints:
                    _ready(args, node, server, url, endpoints)
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
           url: str, endpoints: Endpoints) -> None:
    api, metrics = endpoints.api, endpoints.metrics
    info: dict[str, object] = {"event": "ready", "name": node.config.name, "id": node.agent_id,
                               "type": node.config.type, "client": url,
                               "capabilities": [c.name for c in node.config.capabilities]}
    if server is not None:
        info["pid"] = server.pid
        if server.config.role is ServerRole.SEED:
            info |= {"cluster": server.cluster_address, "leaf": server.leaf_address}
    if api is not None:
        info["http"] = api.url
    if metrics is not None:
        info["metrics"] = metrics.url + "/metrics"
    if endpoints.a2a is not None:
        info["a2a"] = endpoints.a2a.url
    if args.json:
        emit_json(info)
    else:
        emit(f"node ready: {node.config.name} ({node.config.type}) {node.agent_id}")
        emit("  " + "  ".join(f"{k}={v}" for k, v in info.items()
                              if k in ("client", "cluster", "leaf", "pid", "http", "metrics",
                                       "a2a")))
        emit(f"  capabilities: {', '.join(info['capabilities'])}")  # type: ignore[arg-type]
