"""pytest fixtures that start real nats-servers and meshes, and always stop them.

Every server picks its own free loopback ports (port ``-1``); teardown stops
it (SIGTERM, then SIGKILL) and asserts by PID that nothing is left running.

Links are plaintext unless a test asks for TLS through the ``mesh_tls``
fixture: decorate it with :data:`over_plain_and_tls` (or parametrize
``mesh_tls`` indirectly with ``"tls"``) and ``nats_server``, ``mesh_factory``,
``bus_factory`` and ``agent_factory`` all use TLS, with one CA per session.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, EnvelopePolicy, ServerConfig, TlsConfig
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from agoramesh.security.certs import CertificateSet, issue_certificates
from agoramesh.testing.processes import assert_stopped

__all__ = ("AgentFactory", "BusFactory", "MeshFactory", "agent_factory", "bus_factory",
           "mesh_factory", "mesh_tls", "nats_server", "over_plain_and_tls", "running_server",
           "tls_certs")

MeshFactory = Callable[..., Awaitable[Mesh]]
BusFactory = Callable[..., Awaitable[Bus]]
AgentFactory = Callable[..., Awaitable[AgentNode]]

#: Run a test twice: plaintext links, then TLS on client, route and leaf links.
over_plain_and_tls = pytest.mark.parametrize("mesh_tls", ["plain", "tls"], indirect=True)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """A CA and a node certificate (``agoramesh certs``), shared by the session."""
    return issue_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mesh_tls(request: pytest.FixtureRequest) -> TlsConfig | None:
    """The servers' TLS settings: None (plaintext) unless parametrized with ``"tls"``."""
    flavour = getattr(request, "param", "plain")
    if flavour == "plain":
        return None
    if flavour == "tls":
        certs: CertificateSet = request.getfixturevalue("tls_certs")
        return certs.tls
    raise ValueError(f"mesh_tls is 'plain' or 'tls', not {flavour!r}")


def _client_tls(server_tls: TlsConfig | None) -> TlsConfig | None:
    """What a client of such servers needs: the CA (client ports ask for no certificate)."""
    return None if server_tls is None else TlsConfig(ca_file=server_tls.ca_file)


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig) -> AsyncIterator[EmbeddedServer]:
    """An embedded server of ``config``, started; on exit stopped, and its process gone."""
    server = EmbeddedServer(config)
    await server.start()
    try:
        yield server
    finally:
        pid = server.pid
        await server.stop(grace=2.0)
        assert_stopped([pid])


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path, mesh_tls: TlsConfig | None
                      ) -> AsyncIterator[EmbeddedServer]:
    """One standalone embedded server (a seed with no peers)."""
    async with running_server(ServerConfig(name="solo", data_dir=tmp_path / "solo",
                                           tls=mesh_tls)) as server:
        yield server


@pytest_asyncio.fixture
async def mesh_factory(tmp_path: Path, mesh_tls: TlsConfig | None
                       ) -> AsyncIterator[MeshFactory]:
    """``await mesh_factory(seeds=3, leaves=2)`` → a running :class:`Mesh`.

    ``template=`` overrides the servers' settings (default: ``mesh_tls`` on loopback).
    """
    meshes: list[Mesh] = []

    async def make(*, seeds: int = 3, leaves: int = 0,
                   template: ServerConfig | None = None) -> Mesh:
        base = tmp_path / f"mesh{len(meshes)}"
        template = template or ServerConfig(name="template", data_dir=base, tls=mesh_tls)
        mesh = await Mesh.launch(base, seeds=seeds, leaves=leaves, template=template)
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
async def bus_factory(mesh_tls: TlsConfig | None) -> AsyncIterator[BusFactory]:
    """``await bus_factory(url, identity=None, policy=None)`` → a connected :class:`Bus`.

    Other keywords go to :class:`BusConfig`; ``tls`` defaults to trusting ``mesh_tls``'s CA.
    """
    buses: list[Bus] = []

    async def make(url: str, *, identity: Identity | None = None,
                   policy: EnvelopePolicy | None = None, **config: object) -> Bus:
        config.setdefault("tls", _client_tls(mesh_tls))
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
async def agent_factory(mesh_tls: TlsConfig | None) -> AsyncIterator[AgentFactory]:
    """``await agent_factory(url, name, capabilities, **node_config)`` → a started agent.

    ``capabilities`` are offline capability names and/or Capability objects
    (with ``backend=``); ``backend`` defaults to :class:`OfflineBackend`,
    ``heartbeat_interval`` to 0.2 s. Agents started here are stopped after the
    test. ``directory=``, ``bid_strategy=``, ``auction_policy=`` and ``trajectory=`` go
    to AgentNode; ``bus=`` holds more BusConfig fields (``envelope``,
    ``user_jwt``, …); ``node_class=`` builds a subclass. Their buses trust
    ``mesh_tls``'s CA when the test uses TLS.
    """
    agents: list[AgentNode] = []

    async def make(url: str, name: str, capabilities: Sequence[str | Capability], *,
                   backend: Backend | None = None, agent_type: str = "offline",
                   identity: Identity | None = None, bus: Mapping[str, Any] | None = None,
                   node_class: type[AgentNode] = AgentNode, **settings: Any) -> AgentNode:
        named = [c for c in capabilities if isinstance(c, str)]
        objects = [c for c in capabilities if isinstance(c, Capability)]
        caps = (*(capabilities_for("offline", named) if named or not objects else ()), *objects)
        extras = {key: settings.pop(key) for key in ("directory", "bid_strategy", "auction_policy",
                                                      "trajectory") if key in settings}
        settings.setdefault("heartbeat_interval", 0.2)
        bus_settings = {"tls": _client_tls(mesh_tls), **(bus or {})}
        node = node_class(identity or Identity.generate(),
                          NodeConfig(name=name, type=agent_type, capabilities=caps, **settings),
                          backend or OfflineBackend(),
                          BusConfig(servers=(url,), name=name, **bus_settings), **extras)
        await node.start()
        agents.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(agents):
            await node.stop(grace=1.0)
