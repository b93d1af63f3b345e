"""A launcher for a local mesh of embedded servers: N seeds, then any number of leaves.

The first seed starts a cluster; every other seed names only that one as its
bootstrap and route gossip completes the full mesh. Each leaf names one seed's
leafnode address; the hubs gossip the others, so a leaf fails over to any seed.
Used by ``agoramesh up``, ``agoramesh demo`` and the test fixtures.

With a template that runs JetStream, the seeds form one JetStream cluster and
:meth:`Mesh.launch` returns once it has a meta leader; a one-seed mesh runs
it standalone (no route listener), since a cluster needs two for a quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import replace
from pathlib import Path

from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import ServerConfig, ServerRole
from agoramesh.errors import ServerError

__all__ = ("Mesh",)


class Mesh:
    """Seeds and leaves on one machine, started and stopped together."""

    def __init__(self, base_dir: Path, *, template: ServerConfig | None = None,
                 names: str = "") -> None:
        """``names``: a prefix of the servers' names (``seed1``…), for a mesh that joins
        another one (server names are unique in a cluster)."""
        self.base_dir = base_dir
        self.names = names
        # Per-server fields (name, role, data_dir, bootstrap, hubs) are replaced per server.
        self.template = template or ServerConfig(name="template", data_dir=base_dir)
        self.seeds: list[EmbeddedServer] = []
        self.leaves: list[EmbeddedServer] = []
        self._numbers = {role: itertools.count(1) for role in ServerRole}

    @classmethod
    async def launch(
        cls, base_dir: Path, *, seeds: int = 3, leaves: int = 0,
        template: ServerConfig | None = None, join: tuple[str, ...] = (), names: str = "",
    ) -> Mesh:
        """Start ``seeds`` seeds (fully routed) and ``leaves`` leaves spread over them.

        ``join``: cluster addresses of seeds of a running mesh the first seed routes to
        (the others then learn the whole mesh by gossip).
        """
        mesh = cls(base_dir, template=template, names=names)
        if seeds == 1 and mesh.template.jetstream is not None and not join:
            mesh.template = replace(mesh.template, standalone=True)
        try:
            if seeds:
                await mesh.add_seed(join=join)  # the others bootstrap from this one
            if join and seeds and mesh.template.jetstream is not None:
                # Joining a running mesh: each new seed joins its JetStream meta group
                # before the next starts. New seeds started together can elect a meta
                # leader of their own (two JetStreams in one cluster, each refusing what
                # the other holds: "stream not found").
                await mesh.seeds[0].wait_jetstream()
                for _ in range(seeds - 1):
                    await (await mesh.add_seed()).wait_jetstream()
            else:
                await asyncio.gather(*(mesh.add_seed() for _ in range(seeds - 1)))
            await mesh.wait_full_mesh()
            if mesh.template.jetstream is not None:
                await mesh.wait_jetstream()
            await asyncio.gather(*(mesh.add_leaf(mesh.seeds[i % seeds]) for i in range(leaves)))
        except BaseException:
            await mesh.stop(grace=1.0)
            raise
        return mesh

    @property
    def servers(self) -> list[EmbeddedServer]:
        return [*self.seeds, *self.leaves]

    @property
    def url(self) -> str:
        """Client URL of the first seed still running."""
        for seed in self.seeds:
            if not seed.crashed.is_set() and seed.pid is not None:
                return seed.client_url
        raise ServerError("no seed of this mesh is running")

    def _config(self, role: ServerRole, **fields: object) -> ServerConfig:
        name = f"{self.names}{role.value}{next(self._numbers[role])}"
        if role is ServerRole.LEAF:  # a leaf uses its hubs' JetStream through the link
            fields.update(jetstream=None, standalone=False)
        return replace(self.template, name=name, role=role, data_dir=self.base_dir / name,
                       **fields)  # type: ignore[arg-type]

    async def add_seed(self, bootstrap: EmbeddedServer | None = None, *,
                       join: tuple[str, ...] = ()) -> EmbeddedServer:
        """Start a seed routed to ``bootstrap`` (default: the first seed, if any) and to the
        cluster addresses in ``join``."""
        anchor = bootstrap or (self.seeds[0] if self.seeds else None)
        if anchor is not None and anchor.config.standalone:
            raise ServerError(f"{anchor.config.name} is a standalone seed: it takes no routes")
        peers = (*((anchor.cluster_address,) if anchor else ()), *join)
        server = EmbeddedServer(self._config(ServerRole.SEED, bootstrap=peers))
        self.seeds.append(server)
        await server.start()
        return server

    async def add_leaf(self, hub: EmbeddedServer | None = None) -> EmbeddedServer:
        """Start a leaf attached to ``hub`` (default: the first seed)."""
        if not self.seeds and hub is None:
            raise ServerError("a leaf needs a seed to attach to; start a seed first")
        anchor = hub or self.seeds[0]
        server = EmbeddedServer(self._config(ServerRole.LEAF, hubs=(anchor.leaf_address,)))
        self.leaves.append(server)
        await server.start()
        return server

    async def wait_full_mesh(self, timeout: float = 10.0) -> None:
        """Wait until every live seed has a route to every other live seed."""
        live = [seed for seed in self.seeds if not seed.crashed.is_set()]
        await asyncio.gather(*(s.wait_routes(len(live) - 1, timeout=timeout) for s in live))

    async def wait_jetstream(self, timeout: float = 20.0) -> None:
        """Wait until every live seed's JetStream is healthy (a meta leader is elected)."""
        live = [seed for seed in self.seeds if not seed.crashed.is_set()]
        await asyncio.gather(*(s.wait_jetstream(timeout=timeout) for s in live))

    async def stop(self, grace: float | None = None) -> None:
        """Stop leaves first (they depend on the seeds), then seeds; all bounded."""
        failures: list[BaseException] = []
        for group in (self.leaves, self.seeds):
            results = await asyncio.gather(*(s.stop(grace) for s in group),
                                           return_exceptions=True)
            failures += [r for r in results if isinstance(r, BaseException)]
        if failures:  # every server got its stop; now report what went wrong
            raise failures[0]

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ServerError):
            await self.stop()
