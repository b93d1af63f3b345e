"""The mesh's shape for the console: seeds, leaves, the links between them, agents on them.

Two sources, neither a new message:

- the servers this process runs (``agoramesh up``'s seeds and leaves, a
  node's own): each is asked on its monitoring port, every
  ``every`` seconds and bounded by a second, for its id and name
  (``/varz``), its routes (``/routez``: on a seed, every other seed of the
  cluster) and its leafnode links (``/leafz``: on a seed, the leaves on it; on
  a leaf, its hub). A local server that does not answer is ``down``;
  a server named by another's routes is a seed, one on another's leafnode
  links is a leaf when the asking server is a seed (a hub when it is a leaf);
- the agents' telemetry, which names the server each agent is connected to
  (PROTOCOL.md §18, ``server``): a server only agents name shows with no role,
  and an agent whose connection fails over moves to its new server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import ServerRole
from agoramesh.errors import AgoraError
from agoramesh.monitoring.records import AgentRecord, Presence

__all__ = ("ServerNode", "Topology")

log = logging.getLogger("agoramesh.console")


@dataclass(slots=True)
class ServerNode:
    """A server as the console knows it."""

    name: str
    role: str = ""  # seed | leaf | "" (only agents named it)
    id: str = ""
    local: bool = False  # run by this process, so asked directly
    up: bool = True
    routes: set[str] = field(default_factory=set)  # names of seeds it routes to
    leaves: set[str] = field(default_factory=set)  # names of leaves linked to it (a hub)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "role": self.role, "local": self.local,
                "state": "up" if self.up else "down"}


class Topology:
    """The local servers, asked now and then; merged with what agents say on :meth:`graph`."""

    def __init__(self, servers: Sequence[EmbeddedServer] = (), *, every: float = 2.0) -> None:
        self.servers = tuple(servers)
        self.every = every
        self.known: dict[str, ServerNode] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the servers once (the first snapshot shows them), then every ``every`` s."""
        if self._task is None and self.servers:
            await self.read()
            self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=2.0)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.read()

    async def read(self) -> None:
        """Ask every local server once (at once, each bounded by a second)."""
        nodes = await asyncio.gather(*(self._ask(server) for server in self.servers))
        known: dict[str, ServerNode] = {}
        for node in nodes:
            known[node.name] = node
        for node in nodes:
            for peer in node.routes:
                known.setdefault(peer, ServerNode(peer, role=ServerRole.SEED.value))
            for leaf in node.leaves:
                role = ServerRole.LEAF if node.role == ServerRole.SEED.value else ServerRole.SEED
                known.setdefault(leaf, ServerNode(leaf, role=role.value))
        self.known = known

    @staticmethod
    async def _ask(server: EmbeddedServer) -> ServerNode:
        node = ServerNode(server.config.name, role=server.config.role.value, local=True)
        monitor = server.monitor
        if monitor is None or not server.pid:
            node.up = False
            return node
        try:
            async with asyncio.timeout(1.0):
                varz = await monitor.varz()
                node.id = str(varz.get("server_id") or "")
                node.name = str(varz.get("server_name") or node.name)
                node.routes = await monitor.route_peers()
                node.leaves = {name for name in await monitor.leaf_hubs() if name}
        except (TimeoutError, OSError, AgoraError, ValueError, KeyError) as exc:
            log.debug("server %s did not answer: %s", node.name, exc)
            node.up = False
        return node

    def graph(self, agents: Iterable[AgentRecord], now: float, missed: int) -> dict[str, Any]:
        """``{servers, links, agents}``: the servers (local, theirs, and those agents name),
        route and leaf links, and each live or lost agent with its server's name."""
        servers = {name: ServerNode(node.name, node.role, node.id, node.local, node.up)
                   for name, node in self.known.items()}
        by_id = {node.id: node.name for node in servers.values() if node.id}
        placed = []
        for record in agents:
            presence = record.presence(now, missed)
            if presence is Presence.LEFT:
                continue
            server_id, name = record.server
            name = by_id.get(server_id, name or server_id[:12])
            if name and name not in servers:
                servers[name] = ServerNode(name, id=server_id)
            placed.append({"id": record.id, "name": record.label, "server": name,
                           "presence": str(presence)})
        links: set[tuple[str, str, str]] = set()
        for node in self.known.values():
            for peer in node.routes:
                low, high = sorted((node.name, peer))
                links.add((low, high, "route"))
            for other in node.leaves:
                leaf, hub = (other, node.name) if node.role == ServerRole.SEED.value else (
                    node.name, other)
                links.add((leaf, hub, "leaf"))
        return {"servers": sorted((s.as_dict() for s in servers.values()),
                                  key=lambda s: (s["role"] != "seed", s["name"])),
                "links": [{"a": a, "b": b, "kind": kind} for a, b, kind in sorted(links)],
                "agents": placed}
