"""``agoramesh agents``: who is on the mesh, found by scatter-gather on ``agora.discover``."""

from __future__ import annotations

import argparse
from pathlib import Path

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.cli.certs import add_tls_option, tls_directory
from agoramesh.cli.output import emit, emit_json
from agoramesh.config import BusConfig, Environment
from agoramesh.errors import AgoraError
from agoramesh.nodes.card import AgentCard, AgentStatus
from agoramesh.security.certs import tls_config

__all__ = ("add_client_options", "client_config", "register")

DEFAULT_SERVER = "nats://127.0.0.1:4222"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help=f"NATS URL (default $AGORAMESH_SERVER or "
                                         f"{DEFAULT_SERVER})")
    add_tls_option(parser, client=True)
    parser.add_argument("--creds", type=Path, metavar="FILE",
                        help="secured mesh: credentials from `agoramesh trust creds` "
                             "(default $AGORAMESH_CREDS)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def client_config(args: argparse.Namespace, env: Environment, name: str) -> BusConfig:
    """The Bus configuration of a client command given :func:`add_client_options`."""
    url = args.server or env.server_url or DEFAULT_SERVER
    directory = tls_directory(args, env)
    tls = tls_config(directory, client=True) if directory is not None else None
    return BusConfig(servers=(url,), name=name, prefix=env.prefix, tls=tls,
                     credentials=args.creds or env.credentials, envelope=env.envelope)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("agents", help="list the agents on the mesh")
    add_client_options(parser)
    parser.add_argument("--capability", help="only agents offering this (wildcards allowed)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to wait for answers (default 1)")
    parser.set_defaults(handler=_agents)


async def _agents(args: argparse.Namespace, env: Environment) -> int:
    config = client_config(args, env, "agoramesh-agents")
    async with Bus(client_identity(config), config) as bus:
        query = {"capability": args.capability} if args.capability else {}
        replies = await bus.gather(bus.subjects.discover, "discovery", query,
                                   timeout=args.timeout)
    rows: list[tuple[AgentCard, AgentStatus]] = []
    for reply in replies:
        try:
            card = AgentCard.from_dict(reply.body["card"])
            status = AgentStatus.from_dict(reply.body.get("status") or {})
        except (KeyError, TypeError, ValueError, AgoraError):
            continue
        if card.id == reply.sender:
            rows.append((card, status))
    rows.sort(key=lambda row: (row[0].name, row[0].id))
    if args.json:
        emit_json([{**card.as_dict(), "status": status.as_dict()} for card, status in rows])
        return 0
    if not rows:
        emit(f"no agents answered within {args.timeout:g}s on {config.servers[0]}")
        return 0
    emit(f"{'NAME':<16} {'TYPE':<12} {'ID':<14} {'LOAD':>5} {'LATENCY':>9} {'OK%':>5}  "
         f"CAPABILITIES")
    for card, status in rows:
        emit(f"{card.name[:16]:<16} {card.type[:12]:<12} {card.id[:12] + '…':<14} "
             f"{status.load:>5.2f} {status.avg_latency_ms:>7.1f}ms "
             f"{status.success_rate * 100:>5.0f}  {', '.join(c.name for c in card.capabilities)}")
    return 0
