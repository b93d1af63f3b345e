"""pytest fixtures that start real nats-servers and meshes, and always stop them.

Every server picks its own free loopback ports (port ``-1``); teardown stops
it (SIGTERM, then SIGKILL) and asserts by PID that nothing is left running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest_asyncio

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, EnvelopePolicy, ServerConfig
from agoramesh.testing.processes import assert_stopped

__all__ = ("BusFactory", "MeshFactory", "bus_factory", "mesh_factory", "nats_server")

MeshFactory = Callable[..., Awaitable[Mesh]]
BusFactory = Callable[..., Awaitable[Bus]]


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
