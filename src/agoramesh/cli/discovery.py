"""``--discover mdns`` for the commands that start servers (``node``, ``up``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from agoramesh.bus.mdns import MdnsDiscovery, SeedAd, follow_seeds, operator_fingerprint
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import ServerRole
from agoramesh.errors import ConfigError
from agoramesh.security.trust import TrustStore

__all__ = ("SEED_LISTEN", "add_discovery_options", "announced", "check_discovery_options",
           "discovered_seeds",
           "lan_discovery", "server_names")

#: How long a seed listens for others before it starts a mesh of its own (at most
#: ``--discover-timeout``).
SEED_LISTEN = 1.0


def add_discovery_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--discover", choices=["mdns"],
                        help="find the mesh's seeds on the LAN (mDNS) instead of addresses")
    parser.add_argument("--mesh", default="agoramesh", metavar="NAME",
                        help="with --discover: the mesh to join (default agoramesh)")
    parser.add_argument("--mdns-interface", action="append", default=[], metavar="ADDR",
                        help="with --discover: an IPv4 address to announce and listen on "
                             "(repeatable; default every interface)")
    parser.add_argument("--discover-timeout", type=float, default=2.0, metavar="SECONDS",
                        help="with --discover: how long a leaf looks for seeds (default 2)")


def check_discovery_options(args: argparse.Namespace) -> None:
    """ConfigError for discovery flags that do not go together (before anything starts)."""
    if args.discover is None and (args.mdns_interface or args.mesh != "agoramesh"):
        raise ConfigError("--mesh and --mdns-interface go with --discover mdns")
    if args.discover_timeout <= 0:
        raise ConfigError("--discover-timeout must be positive")
    MdnsDiscovery(mesh=args.mesh, interfaces=args.mdns_interface)  # checks the interfaces


@contextlib.asynccontextmanager
async def lan_discovery(args: argparse.Namespace,
                        trust: TrustStore | None) -> AsyncIterator[MdnsDiscovery | None]:
    """mDNS for ``--discover mdns`` (None without it), closed on exit: the seeds it
    announced are withdrawn. On a secured mesh only seeds of ``trust``'s operator count."""
    check_discovery_options(args)
    if args.discover is None:
        yield None
        return
    discovery = MdnsDiscovery(mesh=args.mesh, interfaces=args.mdns_interface,
                              operator=operator_fingerprint(trust.operator) if trust else "")
    async with discovery:
        yield discovery


async def discovered_seeds(discovery: MdnsDiscovery, role: ServerRole,
                           timeout: float) -> list[SeedAd]:
    """The seeds to link to: a leaf waits up to ``timeout`` for one (an error names what
    was looked for); a seed listens :data:`SEED_LISTEN` s and may find none (it starts the
    mesh)."""
    if role is ServerRole.LEAF:
        return await discovery.find(timeout)
    return await discovery.find(min(SEED_LISTEN, timeout), required=False)


@contextlib.asynccontextmanager
async def announced(discovery: MdnsDiscovery | None,
                    seeds: Iterable[EmbeddedServer]) -> AsyncIterator[None]:
    """Announce ``seeds`` and route each to seeds heard of later, while inside."""
    if discovery is None:
        yield
        return
    followers = []
    for seed in seeds:
        await discovery.announce(seed)
        followers.append(asyncio.ensure_future(follow_seeds(seed, discovery)))
    try:
        yield
    finally:
        for follower in followers:
            follower.cancel()
        if followers:
            await asyncio.wait(followers, timeout=5.0)


def server_names(data_dir: Path | None) -> str:
    """A prefix for the names of ``up``'s servers when they join a mesh found on the LAN:
    names are unique in a cluster, and every ``up`` calls its servers seed1, seed2, ….
    Stable for one ``--dir`` (JetStream keeps its data under the server's name)."""
    anchor = str(data_dir.resolve()) if data_dir is not None else str(os.getpid())
    digest = hashlib.sha256(f"{socket.gethostname()}:{anchor}".encode()).hexdigest()[:6]
    return f"{socket.gethostname()[:20]}-{digest}-"
