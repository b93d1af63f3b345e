"""``agoramesh up``: a local mesh on loopback until Ctrl-C.

Starts N seed servers (fully routed) and optional leaves, plus offline demo
agents (see :data:`DEMO_AGENTS`) that also take plain JSON, so
``nats req agora.cap.echo '{"text":"hi"}'`` answers at once. Prints
``mesh ready: nats://127.0.0.1:<port>`` when usable (``tls://…`` with ``--tls DIR``).
SIGINT or SIGTERM stops everything in order: agents, leaves, seeds.

The seeds run one JetStream cluster (standalone with ``--seeds 1``) holding the
durable jobs and their results, replicated on min(3, seeds) of them and kept
in ``--dir`` across restarts; ``--no-jetstream`` leaves it out. A secured mesh
(``--secure``) runs without it for now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.mdns import SeedAd
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.certs import add_tls_option, tls_directory
from agoramesh.cli.discovery import (
    add_discovery_options,
    announced,
    check_discovery_options,
    discovered_seeds,
    lan_discovery,
    server_names,
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
    BusConfig,
    Environment,
    JetStreamConfig,
    JobsConfig,
    ServerAuth,
    ServerConfig,
    ServerRole,
    TlsConfig,
)
from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.auction.policy import AuctionPolicy
from agoramesh.security.acl import AccessPolicy, load_policy
from agoramesh.security.certs import tls_config
from agoramesh.security.trust import TrustStore, follow_trust

__all__ = ("DEMO_AGENTS", "create_job_store", "demo_agents", "local_mesh", "register")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "up", help="run a local mesh on loopback until Ctrl-C",
        description="Start a local mesh (seed servers, optional leaves, offline demo agents) "
                    "and keep it running until Ctrl-C.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seed servers (default 3)")
    add_sign_all_option(parser)
    parser.add_argument("--leaves", type=int, default=0, help="leaf servers (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--dir", type=Path, help="data directory (default: a temporary one)")
    add_discovery_options(parser)
    add_tls_option(parser, client=False)
    parser.add_argument("--secure", action="store_true",
                        help="enforce membership: servers admit only members of the trust store "
                             "(created if missing), each with permissions from its capabilities")
    parser.add_argument("--trust", type=Path, metavar="DIR",
                        help="trust store for --secure (default $AGORAMESH_TRUST or <home>/trust)")
    add_jetstream_options(parser)
    parser.add_argument("--jobs-ack-wait", type=float, default=JobsConfig().ack_wait,
                        metavar="SECONDS",
                        help="how long a node may work on a durable job without saying so "
                             "before another node gets it (default 10; when the job store "
                             "is created)")
    parser.add_argument("--no-agents", action="store_true", help="start no demo agents")
    parser.add_argument("--http-port", type=int,
                        help="serve the HTTP API from the first demo agent on this port "
                             "(0: any free port)")
    add_a2a_port_option(parser)
    add_api_token_option(parser)
    add_otlp_option(parser)
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics and /healthz for every agent and server "
                             "here; 0 picks a free port")
    parser.add_argument("--trajectory-dir", type=Path, metavar="DIR",
                        help="record each agent's trajectory as DIR/<name>.jsonl")
    parser.add_argument("--acl", type=Path, metavar="FILE",
                        help="access policy (YAML or JSON, docs/SECURITY.md) for every demo "
                             "agent; default: everyone, everything")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_up)


@contextlib.asynccontextmanager
async def local_mesh(env: Environment, *, seeds: int, leaves: int, host: str = "127.0.0.1",
                     data_dir: Path | None = None, tls: TlsConfig | None = None,
                     auth: ServerAuth | None = None,
                     jetstream: JetStreamConfig | None = None,
                     jobs: JobsConfig | None = None,
                     join: tuple[str, ...] = (), names: str = "") -> AsyncIterator[Mesh]:
    """A running mesh in ``data_dir`` (or a temporary directory removed afterwards).

    ``tls``: every server uses TLS on client, route and leaf links. ``auth``:
    every server enforces membership (``TrustStore.server_auth()``).
    ``jetstream``: the seeds run JetStream, and the job stream and the result
    store exist (replicated on min(3, seeds)) when the mesh is yielded, with
    ``jobs``'s limits. ``join``: cluster addresses of a running mesh's seeds to route to;
    ``names``: a prefix of the servers' names (see :class:`Mesh`).
    """
    if seeds < 1 or leaves < 0:
        raise ConfigError("--seeds must be at least 1 and --leaves at least 0")
    with contextlib.ExitStack() as stack:
        base = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agora-")))
        template = ServerConfig(name="template", data_dir=base, host=host,
                                binary=env.nats_server, tls=tls, auth=auth, jetstream=jetstream)
        mesh = await Mesh.launch(base, seeds=seeds, leaves=leaves, template=template,
                                 join=join, names=names)
        try:
            if jetstream is not None:
                await create_job_store(mesh, env, jobs)
            yield mesh
        finally:
            await mesh.stop()


async def create_job_store(mesh: Mesh, env: Environment, jobs: JobsConfig | None = None
                           ) -> None:
    """Create the job stream, its consumer and the result store on ``mesh``'s seeds
    (with ``jobs``'s limits; replicated on min(3, seeds) of them)."""
    tls = None if mesh.template.tls is None else TlsConfig(ca_file=mesh.template.tls.ca_file)
    domain = mesh.template.jetstream.domain if mesh.template.jetstream else JobsConfig().domain
    config = replace(jobs or JobsConfig(), domain=domain, replicas=min(3, len(mesh.seeds)))
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,), prefix=env.prefix,
                                                  name="agoramesh-up", tls=tls,
                                                  envelope=env.envelope)) as bus:
        await JetStream(bus, config).ensure()


#: The offline agents ``agoramesh up`` starts: (name, capabilities).
DEMO_AGENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coder", ("code.generate.python", "code.review.python")),
    ("runner", ("code.run.python",)),
    ("analyst", ("text.summarize", "math.evaluate", "echo")),
    ("pro", ("text.debate", "vote")),
    ("con", ("text.debate", "vote")),
)


async def demo_agents(mesh: Mesh, env: Environment, *, heartbeat: float = 1.0,
                      trajectory_dir: Path | None = None,
                      extra_capabilities: Mapping[str, Sequence[str]] | None = None,
                      quotes: Mapping[str, tuple[float, float]] | None = None,
                      label_servers: bool = False, auction_policy: AuctionPolicy | None = None,
                      started: Callable[[AgentNode], None] | None = None,
                      trust: TrustStore | None = None,
                      access: AccessPolicy | None = None) -> list[AgentNode]:
    """Start the offline demo agents, spread over the mesh's servers; all or none.

    ``trajectory_dir``: each agent records its trajectory in ``<dir>/<name>.jsonl``.
    ``extra_capabilities`` and ``quotes`` (latency hint in ms, USD per 1000 tokens)
    are by agent name; ``label_servers`` names each agent's server in its card's
    metadata. ``started`` is called as each agent has started, before the next.
    ``trust``: each agent is admitted to the secured mesh with its capabilities.
    ``access``: every agent's access policy (default: allow everything).
    """
    agents: list[AgentNode] = []
    servers = mesh.servers
    seeds = [seed.client_url for seed in mesh.seeds]
    # The agents' buses need only the CA: client ports do not ask for certificates.
    server_tls = mesh.template.tls
    tls = None if server_tls is None else TlsConfig(ca_file=server_tls.ca_file)
    try:
        for index, (name, names) in enumerate(DEMO_AGENTS):
            server = servers[index % len(servers)]
            identity = Identity.generate()
            trajectory = None if trajectory_dir is None else Trajectory(
                trajectory_dir / f"{name}.jsonl", agent=name, agent_id=identity.agent_id)
            capabilities = capabilities_for("offline", [*names,
                                                        *(extra_capabilities or {}).get(name, ())])
            metadata: dict[str, str] = {"server": server.config.name} if label_servers else {}
            backend = OfflineBackend()
            if quotes and name in quotes:
                latency, price = quotes[name]
                capabilities = tuple(replace(cap, cost_per_token=price / 1000)
                                     for cap in capabilities)
                metadata["latency_ms"] = f"{latency:g}"
                backend = OfflineBackend(BackendConfig(input_price_per_1k=price,
                                                       output_price_per_1k=price))
            user_jwt = None if trust is None else trust.admit(
                identity.agent_id, capabilities=[cap.name for cap in capabilities], name=name).jwt
            agent = AgentNode(
                identity,
                NodeConfig(name=name, type="offline", capabilities=capabilities,
                           heartbeat_interval=heartbeat, metadata=metadata,
                           access=access or AccessPolicy()),
                # Its own server first; the seeds after it, to fail over to if it dies.
                backend, BusConfig(servers=(server.client_url, *(url for url in seeds
                                                                 if url != server.client_url)),
                                   name=name, prefix=env.prefix, tls=tls, user_jwt=user_jwt,
                                   envelope=env.envelope),
                directory=agents[0].directory if agents else None,  # one view per process
                auction_policy=auction_policy, trajectory=trajectory)
            await agent.start()
            agents.append(agent)
            if started is not None:
                started(agent)
    except BaseException:
        await asyncio.gather(*(agent.stop(grace=1.0) for agent in agents))
        raise
    return agents


def _describe(server: EmbeddedServer) -> dict[str, object]:
    info: dict[str, object] = {"name": server.config.name, "role": server.config.role.value,
                               "pid": server.pid, "client": server.client_url}
    if server.config.role.value == "seed":
        cluster = None if server.config.standalone else server.cluster_address
        info |= {"cluster": cluster, "leaf": server.leaf_address}
    return info


async def _up(args: argparse.Namespace, env: Environment) -> int:
    with traced(args, env, "agoramesh-up"):
        return await _run_up(args, env)


async def _run_up(args: argparse.Namespace, env: Environment) -> int:
    check_discovery_options(args)
    env = with_sign_all(args, env)
    token = api_token(args, env)
    if args.a2a_port is not None:
        a2a_bridge()  # a missing extra fails before any server
    access = load_policy(args.acl) if args.acl else None  # a bad file fails before any server
    stop = asyncio.Event()
    trust = _trust_store(args, env)
    with on_signals(stop.set):
        async with contextlib.AsyncExitStack() as stack:
            tls_dir = tls_directory(args, env)
            discovery = await stack.enter_async_context(lan_discovery(args, trust))
            found = ([] if discovery is None else
                     await discovered_seeds(discovery, ServerRole.SEED, args.discover_timeout))
            mesh = await stack.enter_async_context(local_mesh(
                env, seeds=args.seeds, leaves=args.leaves, host=args.host, data_dir=args.dir,
                tls=tls_config(tls_dir) if tls_dir is not None else None,
                auth=trust.server_auth() if trust else None,
                jetstream=None if trust else jetstream_config(args),
                jobs=JobsConfig(ack_wait=args.jobs_ack_wait),
                join=tuple(ad.cluster for ad in found),
                names="" if discovery is None else server_names(args.dir)))
            await stack.enter_async_context(announced(discovery, mesh.seeds))
            agents = [] if args.no_agents else await demo_agents(
                mesh, env, trajectory_dir=args.trajectory_dir, trust=trust, access=access)
            follower = None if trust is None else asyncio.ensure_future(
                follow_trust(trust, lambda: mesh.servers))
            try:
                if (args.http_port is not None or args.a2a_port is not None) and not agents:
                    raise ConfigError("--http-port and --a2a-port need the demo agents "
                                      "(drop --no-agents)")
                async with serve_endpoints(
                        host=args.host, metrics_port=args.metrics_port,
                        http_port=args.http_port, api_agent=agents[0] if agents else None,
                        agents=agents, servers=mesh.servers, api_token=token,
                        a2a_port=args.a2a_port) as endpoints:
                    _ready(args, mesh, agents, endpoints, trust, found)
                    await stop.wait()
            finally:
                if follower is not None:
                    follower.cancel()
                    await asyncio.wait([follower])
                await asyncio.gather(*(agent.stop(grace=2.0) for agent in agents))
    if args.json:
        emit_json({"event": "stopped"})
    else:
        emit("mesh stopped")
    return 0


def _trust_store(args: argparse.Namespace, env: Environment) -> TrustStore | None:
    """The trust store for --secure (created the first time), else None and a loud warning."""
    if not args.secure:
        if args.trust is not None:
            raise ConfigError("--trust needs --secure")
        warn("WARNING: open mesh: anyone who can reach these ports can join, read every "
             "subject and publish on any; fine for a local demo only. Use --secure to "
             "enforce membership (docs/SECURITY.md).")
        return None
    directory = args.trust or env.trust_dir or env.home / "trust"
    store = (TrustStore.open(directory, prefix=env.prefix) if (directory / "operator.jwt").exists()
             else TrustStore.init(directory, prefix=env.prefix))
    if not (directory / "client.creds").exists():
        store.credentials("client")
    return store


def _ready(args: argparse.Namespace, mesh: Mesh, agents: list[AgentNode],
           endpoints: Endpoints, trust: TrustStore | None = None,
           found: list[SeedAd] | None = None) -> None:
    api, metrics = endpoints.api, endpoints.metrics
    servers = [_describe(server) for server in mesh.servers]
    creds = None if trust is None else str(trust.directory / "client.creds")
    js = mesh.template.jetstream
    jetstream = None if js is None else {"domain": js.domain,
                                         "replicas": min(3, len(mesh.seeds))}
    if args.json:
        emit_json({"event": "ready", "url": mesh.url, "servers": servers,
                   "secure": trust is not None, "creds": creds, "jetstream": jetstream,
                   "agents": [agent.card.as_dict() for agent in agents],
                   "http": api.url if api else None,
                   "a2a": endpoints.a2a.url if endpoints.a2a else None,
                   "metrics": f"{metrics.url}/metrics" if metrics else None,
                   "mesh": args.mesh if args.discover else None,
                   "discovered": sorted(ad.server for ad in found or ())})
        return
    for info in servers:
        emit("  ".join(f"{key}={value}" for key, value in info.items() if value is not None))
    for agent in agents:
        emit(f"agent {agent.config.name:<8} {agent.agent_id[:12]}…  "
             f"{', '.join(c.name for c in agent.config.capabilities)}")
    if api is not None:
        emit(f"http api: {api.url}")
    if endpoints.a2a is not None:
        emit(f"a2a: {endpoints.a2a.url} (agent card: {endpoints.a2a.url}/.well-known/"
             f"agent-card.json)")
    if metrics is not None:
        emit(f"metrics: {metrics.url}/metrics")
    if jetstream is not None:
        emit(f"durable jobs: JetStream domain {jetstream['domain']}, "
             f"{jetstream['replicas']} replica(s) (agoramesh submit --durable, agoramesh jobs)")
    if args.discover:
        joined = ", ".join(sorted(ad.server for ad in found or ()))
        emit(f"mesh {args.mesh!r} (mDNS): " + (f"joined seeds {joined}" if joined
                                                 else "no seed heard of: this is its first"))
    if creds is not None:
        emit(f"secured mesh: trust store {trust.directory if trust else ''}; "
             f"clients connect with --creds {creds}")
    emit(f"mesh ready: {mesh.url}")
    emit("press Ctrl-C to stop")
