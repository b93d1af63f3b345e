"""pytest fixtures that start real nats-servers and meshes, and always stop them.

Every server picks its own free loopback ports (port ``-1``); teardown stops
it (SIGTERM, then SIGKILL) and asserts by PID that nothing is left running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, EnvelopePolicy, ServerConfig
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import AgentNode, NodeConfig
from agoramesh.testing.processes import assert_stopped

__all__ = ("AgentFactory", "BusFactory", "MeshFactory", "agent_factory", "bus_factory",
           "mesh_factory", "nats_server")

MeshFactory = Callable[..., Awaitable[Mesh]]
BusFactory = Callable[..., Awaitable[Bus]]
AgentFactory = Callable[..., Awaitable[AgentNode]]


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """One standalone embedded server (a seed with no peers)."""
    server = EmbeddedServer(ServerConfig(name="solo", data_dir=tmp_path / "solo"))
    await server.start()
    try:
        yield server
    finally:
        pid = server.pid
        await server.stop(grace=2.0)
        assert_stopped([pid])


@pytest_asyncio.fixture
async def mesh_factory(tmp_path: Path) -> AsyncIterator[MeshFactory]:
    """``await mesh_factory(seeds=3, leaves=2)`` → a running :class:`Mesh`."""
    meshes: list[Mesh] = []

    async def make(*, seeds: int = 3, leaves: int = 0) -> Mesh:
        mesh = await Mesh.launch(tmp_path / f"mesh{len(meshes)}", seeds=seeds, leaves=leaves)
        meshes.append(mesh)
        return mesh

    try:
        yield make
    finally:
        pids = [server.pid for mesh in meshes for server in mesh.servers]
        for mesh in meshes:
            await mesh.stop(grace=2.0)
        assert_stopped(pids)


@pytest_asyncio.fixture
async def bus_factory() -> AsyncIterator[BusFactory]:
    """``await bus_factory(url, identity=None, policy=None)`` → a connected :class:`Bus`."""
    buses: list[Bus] = []

    async def make(url: str, *, identity: Identity | None = None,
                   policy: EnvelopePolicy | None = None, **config: object) -> Bus:
        settings = BusConfig(servers=(url,), envelope=policy or EnvelopePolicy(),
                             **config)  # type: ignore[arg-type]
        bus = await Bus.connect(identity or Identity.generate(), settings)
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close(timeout=1.0)


@pytest_asyncio.fixture
async def agent_factory() -> AsyncIterator[AgentFactory]:
    """``await agent_factory(url, name, capabilities, **node_config)`` → a started agent.

    ``capabilities`` are offline capability names (or Capability objects with
    ``backend=``); ``backend`` defaults to :class:`OfflineBackend`,
    ``heartbeat_interval`` to 0.2 s. Agents started here are stopped after the
    test. ``directory=``, ``bid_policy=``, ``auction_policy=`` and ``trajectory=`` go
    to AgentNode.
    """
    agents: list[AgentNode] = []

    async def make(url: str, name: str, capabilities: list[str] | list[Capability], *,
                   backend: Backend | None = None, agent_type: str = "offline",
                   identity: Identity | None = None, **settings: Any) -> AgentNode:
        caps = (capabilities_for("offline", [str(c) for c in capabilities])
                if all(isinstance(c, str) for c in capabilities)
                else tuple(c for c in capabilities if isinstance(c, Capability)))
        extras = {key: settings.pop(key) for key in ("directory", "bid_policy", "auction_policy",
                                                      "trajectory") if key in settings}
        settings.setdefault("heartbeat_interval", 0.2)
        node = AgentNode(identity or Identity.generate(),
                         NodeConfig(name=name, type=agent_type, capabilities=caps, **settings),
                         backend or OfflineBackend(), BusConfig(servers=(url,), name=name),
                         **extras)
        await node.start()
        agents.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(agents):
            await node.stop(grace=1.0)
