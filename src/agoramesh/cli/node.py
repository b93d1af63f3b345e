"""``agoramesh node``: run one agent with its own embedded nats-server until Ctrl-C.

Roles: no flag starts a seed (a new mesh, or one joining ``--bootstrap``
routes); ``--leaf host:port`` starts a leaf attached to those hubs;
``--connect nats://…`` embeds nothing and uses an existing NATS deployment.
``--discover mdns`` finds the seeds of ``--mesh`` on the LAN instead of being
given addresses: a seed routes to every seed it hears of within a second (none:
it starts the mesh) and announces itself; ``--role leaf`` waits for one.

A seed runs JetStream (the durable jobs, stored under the node's home, so a
restarted node finds them), clustered with the other seeds: its JetStream
has a leader once a second seed has joined. Leaves and ``--connect`` nodes
use the seeds' JetStream. Every node takes up to ``--max-jobs`` durable
jobs at a time from the mesh (0: none).

``--type mcp`` joins an MCP server's tools to the mesh, each tool a
capability (``--mcp-command``: a server it runs over stdio; ``--mcp-url``: one
it reaches over streamable HTTP). ``--mesh-tools`` gives a claude-code or
codex agent this mesh as MCP tools (``agoramesh mcp --server`` this node's
server), so the agent can hand sub-tasks to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.mdns import SeedAd
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.certs import add_tls_option, tls_directory
from agoramesh.cli.discovery import (
    add_discovery_options,
    announced,
    check_discovery_options,
    discovered_seeds,
    lan_discovery,
)
from agoramesh.cli.output import emit, emit_json, warn
from agoramesh.cli.runtime import (
    Endpoints,
    a2a_bridge,
    add_a2a_port_option,
    add_api_token_option,
    add_jetstream_options,
    add_otlp_option,
    add_sign_all_option,
    api_token,
    jetstream_config,
    on_signals,
    serve_endpoints,
    traced,
    with_sign_all,
)
from agoramesh.config import (
    DEFAULT_PREFIX,
    BusConfig,
    Environment,
    ServerConfig,
    ServerRole,
    TlsConfig,
)
from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.cli import MCP_SERVER, McpServer
from agoramesh.nodes.backends.registry import BACKEND_TYPES, create_backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.auction.policy import AuctionPolicy
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
    parser.add_argument("--mcp-command", metavar="COMMAND",
                        help="--type mcp: the MCP server to run (stdio), e.g. \"npx -y "
                             "@modelcontextprotocol/server-everything\"; each tool is a "
                             "capability (--capability: only those)")
    parser.add_argument("--mcp-url", metavar="URL",
                        help="--type mcp: the MCP server's streamable HTTP endpoint (bearer "
                             "token: --api-key or $AGORAMESH_MCP_TOKEN)")
    parser.add_argument("--mesh-tools", action="store_true",
                        help="--type claude-code or codex: give the CLI agent this mesh as MCP "
                             "tools (agoramesh mcp), so it can delegate to other agents")
    parser.add_argument("--a2a-url", metavar="URL",
                        help="the A2A agent for --type a2a: its skills become this node's "
                             "capabilities (token: --api-key or $AGORAMESH_A2A_TOKEN)")
    parser.add_argument("--backend-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="the longest one call to the backend may take: a provider's "
                             "request, a CLI run, an MCP tool call, an A2A message "
                             "(default 60)")
    where = parser.add_argument_group("mesh")
    where.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                       help="a seed's cluster address to join (repeatable)")
    where.add_argument("--leaf", action="append", default=[], metavar="HOST:PORT",
                       help="join as a leaf of these hubs' leafnode addresses (repeatable)")
    where.add_argument("--connect", metavar="URL", help="use this NATS server, embed none")
    where.add_argument("--role", choices=[role.value for role in ServerRole],
                       help="the embedded server's role (default: leaf with --leaf, else seed)")
    add_discovery_options(where)
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
    parser.add_argument("--no-direct-award", action="store_true",
                        help="always call for proposals in this node's auctions, even when "
                             "one agent alone is known to offer the capability (default: "
                             "award that one directly, one round trip fewer)")
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
    add_otlp_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_node)


def _role(args: argparse.Namespace) -> ServerRole:
    """The embedded server's role, once the flags are checked against each other."""
    check_discovery_options(args)
    if args.leaf and args.bootstrap:
        raise ConfigError("use --leaf or --bootstrap, not both")
    if args.discover and (args.leaf or args.bootstrap or args.connect):
        raise ConfigError("--discover mdns finds the seeds: drop --bootstrap/--leaf/--connect")
    role = ServerRole(args.role) if args.role else (
        ServerRole.LEAF if args.leaf else ServerRole.SEED)
    if role is ServerRole.SEED and args.leaf:
        raise ConfigError("--role seed does not take --leaf (a seed's peers are --bootstrap)")
    if role is ServerRole.LEAF and not (args.leaf or args.discover):
        raise ConfigError("a leaf needs its hubs: --leaf HOST:PORT or --discover mdns")
    return role


def _server_config(args: argparse.Namespace, env: Environment, data_dir: Path,
                   found: list[SeedAd]) -> ServerConfig:
    role = _role(args)
    bootstrap = (*args.bootstrap, *(ad.cluster for ad in found if role is ServerRole.SEED))
    hubs = (*args.leaf, *(ad.leaf for ad in found if role is ServerRole.LEAF))
    tls_dir = tls_directory(args, env)
    trust = TrustStore.open(args.trust, prefix=env.prefix) if args.trust else None
    # A secured mesh runs without JetStream for now (its accounts grant none).
    jetstream = None if role is ServerRole.LEAF or trust is not None else jetstream_config(args)
    return ServerConfig(name=args.name.replace(" ", "-"), role=role, data_dir=data_dir,
                        host=args.host, port=args.port, cluster_port=args.cluster_port,
                        leaf_port=args.leaf_port, bootstrap=bootstrap,
                        hubs=hubs, binary=env.nats_server,
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


def _check_backend_flags(args: argparse.Namespace) -> None:
    """The flags of one backend type are not given to another."""
    if args.type == "mcp" and bool(args.mcp_command) == bool(args.mcp_url):
        raise ConfigError("--type mcp needs its MCP server: --mcp-command or --mcp-url (one)")
    if args.type != "mcp" and (args.mcp_command or args.mcp_url):
        raise ConfigError("--mcp-command and --mcp-url are for --type mcp")
    if args.mcp_command and args.api_key:
        raise ConfigError("--api-key is the token of an MCP server over HTTP (--mcp-url); a "
                          "server run with --mcp-command takes its secrets from its environment")
    if args.a2a_url is not None and args.type != "a2a":
        raise ConfigError("--a2a-url is for --type a2a")
    if args.mesh_tools and args.type not in ("claude-code", "codex"):
        raise ConfigError("--mesh-tools is for --type claude-code or codex")
    if not args.backend_timeout > 0:  # NaN too
        raise ConfigError("--backend-timeout must be a positive number of seconds")


def _mesh_tools(args: argparse.Namespace, env: Environment, url: str) -> McpServer:
    """``agoramesh mcp`` for this node's mesh, as a CLI agent is to start it."""
    command = [sys.executable, "-m", "agoramesh", "mcp", "--server", url]
    tls_dir = tls_directory(args, env)
    if tls_dir is not None:
        command += ["--tls", str(tls_dir.resolve())]
    if env.credentials is not None:
        command += ["--creds", str(env.credentials.resolve())]
    elif args.jwt is not None or args.trust is not None:
        raise ConfigError("--mesh-tools on a secured mesh needs credentials for its MCP server: "
                          "set AGORAMESH_CREDS (agoramesh trust creds)")
    extra = {"AGORAMESH_PREFIX": env.prefix} if env.prefix != DEFAULT_PREFIX else {}
    if env.sign_all:
        extra["AGORAMESH_SIGN_ALL"] = "1"
    return McpServer(name="agoramesh", command=tuple(command), env=tuple(extra.items()))


def _backend_config(args: argparse.Namespace, env: Environment, url: str) -> BackendConfig:
    if args.mcp_command:
        command = tuple(shlex.split(args.mcp_command))
    else:
        command = tuple(args.command.split()) if args.command else ()
    return BackendConfig(
        model=args.model, api_key=args.api_key or env.api_keys.get(args.type),
        base_url=args.mcp_url or args.a2a_url or args.base_url, command=command,
        timeout=args.backend_timeout,
        options=((MCP_SERVER, _mesh_tools(args, env, url)),) if args.mesh_tools else ())


async def _node(args: argparse.Namespace, env: Environment) -> int:
    with traced(args, env, args.name):
        return await _run_node(args, env)


async def _run_node(args: argparse.Namespace, env: Environment) -> int:
    role = _role(args)
    env = with_sign_all(args, env)
    token = api_token(args, env)
    _check_backend_flags(args)
    if args.a2a_port is not None:
        a2a_bridge()  # a missing extra fails before anything starts
    # An MCP server or an A2A agent says what it offers once reached; the other types'
    # capabilities are the catalogue's, checked now.
    known = None if args.type in ("mcp", "a2a") else capabilities_for(args.type, args.capability)
    access = load_policy(args.acl) if args.acl else AccessPolicy()
    identity = Identity.load_or_create(args.key_file or env.home / f"{args.name}.nk")
    trust = TrustStore.open(args.trust, prefix=env.prefix) if args.trust else None
    tls_dir = tls_directory(args, env)
    tls = tls_config(tls_dir, client=True) if tls_dir is not None else None
    stop = asyncio.Event()
    async with lan_discovery(args, trust) as discovery:
        found = ([] if discovery is None else
                 await discovered_seeds(discovery, role, args.discover_timeout))
        server = None
        if not args.connect:
            server = EmbeddedServer(_server_config(args, env, env.home / "nodes" / args.name,
                                                   found))
        with on_signals(stop.set):
            try:
                if server is not None:
                    server.on_crash.append(lambda _: stop.set())
                    await server.start()
                    _note_a_lone_jetstream(server.config)
                url = args.connect or (server.client_url if server else "")
                node = await _start_agent(args, env, identity, known, access, tls, url)
                seeds = [server] if server is not None and role is ServerRole.SEED else []
                try:
                    async with announced(discovery, seeds), serve_endpoints(
                            host=args.host, metrics_port=args.metrics_port,
                            http_port=args.http_port, api_agent=node, agents=[node],
                            servers=[server] if server is not None else [],
                            api_token=token, a2a_port=args.a2a_port) as endpoints:
                        _ready(args, node, server, url, endpoints, found)
                        await stop.wait()
                finally:
                    await node.stop()
            finally:
                if server is not None:
                    await server.stop()
    if server is not None:
        server.check()  # a crash stopped us: exit with its error
    return 0


def _note_a_lone_jetstream(config: ServerConfig) -> None:
    """A first seed's JetStream is clustered and elects no leader alone: say so at start."""
    if config.role is ServerRole.SEED and config.jetstream is not None and not config.bootstrap:
        warn("note: this first seed's JetStream is clustered and has no leader until a "
             "second seed joins (--bootstrap to this one): durable jobs wait until then. "
             "`agoramesh up --seeds 1` runs a standalone seed.")


async def _start_agent(args: argparse.Namespace, env: Environment, identity: Identity,
                       known: tuple[Capability, ...] | None, access: AccessPolicy,
                       tls: TlsConfig | None, url: str) -> AgentNode:
    """The node's agent, started on ``url``: its backend made once the server runs (an MCP
    server's tools are its capabilities), its membership on a secured mesh."""
    backend = create_backend(args.type, _backend_config(args, env, url))
    if args.jwt is None and args.trust is None:
        warn("WARNING: open mesh: this node's server admits anyone who can reach its "
             "ports; fine for a local demo only. Use --trust DIR (agoramesh trust init) "
             "to enforce membership (docs/SECURITY.md).")
    try:
        capabilities = known if known is not None else tuple(
            await backend.offered(args.capability) or ())
        user_jwt = _membership(args, env, identity, [cap.name for cap in capabilities])
        trajectory = (Trajectory(args.trajectory, agent=args.name,
                                 agent_id=identity.agent_id) if args.trajectory else None)
        node = AgentNode(identity, NodeConfig(
            name=args.name, type=args.type, capabilities=capabilities,
            max_concurrent_tasks=args.max_tasks, heartbeat_interval=args.heartbeat,
            access=access, max_jobs=args.max_jobs),
            backend, BusConfig(servers=(url,), name=args.name, prefix=env.prefix,
                               tls=tls, user_jwt=user_jwt, envelope=env.envelope),
            trajectory=trajectory,
            auction_policy=AuctionPolicy(direct_award=False) if args.no_direct_award else None)
        await node.start()
    except BaseException:
        await backend.aclose()
        raise
    return node


def _ready(args: argparse.Namespace, node: AgentNode, server: EmbeddedServer | None,
           url: str, endpoints: Endpoints, found: list[SeedAd]) -> None:
    api, metrics = endpoints.api, endpoints.metrics
    info: dict[str, object] = {"event": "ready", "name": node.config.name, "id": node.agent_id,
                               "type": node.config.type, "client": url,
                               "capabilities": [c.name for c in node.config.capabilities]}
    if server is not None:
        info["pid"] = server.pid
        if server.config.role is ServerRole.SEED:
            info |= {"cluster": server.cluster_address, "leaf": server.leaf_address}
    if args.discover:
        info |= {"mesh": args.mesh, "discovered": sorted(ad.server for ad in found)}
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
                                       "mesh", "discovered", "a2a")))
        emit(f"  capabilities: {', '.join(info['capabilities'])}")  # type: ignore[arg-type]
