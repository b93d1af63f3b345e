"""The mesh as a long-lived client sees it: who is there now, and the ways to give them work.

A one-shot client (``agoramesh submit``) learns the agents by one discovery
round and leaves. A bridge serves for hours while agents come and go, so a
:class:`MeshClient` listens to presence as an agent does (hello, heartbeats,
bye; a :class:`~agoramesh.nodes.presence.PeerWatch` over its own
:class:`~agoramesh.nodes.directory.Directory`), evicts the agents that fell
silent, and tells its ``on_change`` hooks when the membership may have
changed: at once on a hello or a bye, and once a beat (a card that changed
under a known agent is only seen there). It is a client, not an agent: it
answers no discovery, offers nothing and bids on nothing, but it drives
auctions (it is their initiator) and submits durable jobs as any client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig, JobsConfig
from agoramesh.errors import AgoraError
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.presence import PeerWatch, beat_every
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.jobs.jobs import Jobs

__all__ = ("MeshClient",)

log = logging.getLogger("agoramesh.bridges")


class MeshClient:
    """A live view of the mesh and a :class:`Dispatcher` over it: ``async with MeshClient(…)``.

    ``heartbeat``: the interval assumed for agents that do not say theirs, and how
    often silent agents are evicted; ``timeout``: the dispatcher's default for a
    task; ``discover_timeout``: how long :meth:`start` listens to the first
    discovery round before it returns.
    """

    def __init__(self, config: BusConfig, *, identity: Identity | None = None,
                 heartbeat: float = 1.0, timeout: float = 60.0, discover_timeout: float = 0.5,
                 jobs: JobsConfig | None = None) -> None:
        self.config = config
        self._identity = identity
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.discover_timeout = discover_timeout
        self._jobs_config = jobs
        self.directory = Directory()
        self.directory.on_join.append(lambda _entry: self._changed())
        self.directory.on_leave.append(lambda _agent, _reason: self._changed())
        #: Called (synchronously, keep them quick) when the agents on the mesh may have changed.
        self.on_change: list[Callable[[], None]] = []
        self._bus: Bus | None = None
        self._dispatcher: Dispatcher | None = None
        self._jobs: Jobs | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._running = False

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise AgoraError("the mesh client is not started")
        return self._bus

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise AgoraError("the mesh client is not started")
        return self._dispatcher

    @property
    def jobs(self) -> Jobs:
        """The durable jobs of the mesh (made on first use: only JetStream meshes have them)."""
        if self._jobs is None:
            self._jobs = Jobs(self.bus, self._jobs_config)
        return self._jobs

    async def __aenter__(self) -> MeshClient:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, listen to presence, learn who is there already, start evicting."""
        bus = await Bus.connect(self._identity or client_identity(self.config), self.config)
        self._bus, self._running = bus, True
        try:
            watch = PeerWatch(bus, self.directory, interval=self.heartbeat, own=bus.agent_id,
                              spawn=self.spawn, running=lambda: self._running, log=log)
            await bus.subscribe(bus.subjects.presence_all, watch.on_presence)
            self._dispatcher = Dispatcher(bus, self.directory, timeout=self.timeout)
            await self._dispatcher.auctioneer.start()
            await watch.sweep(self.discover_timeout)
        except BaseException:
            await self.close()
            raise
        self.spawn(beat_every(self.heartbeat, self.directory, self._beat, log), "evict")

    async def close(self) -> None:
        """Stop what runs in the background, then close the connection."""
        self._running = False
        running = list(self._background)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=1.0)
        if self._bus is not None:
            await self._bus.close(timeout=1.0)

    def spawn(self, work: Awaitable[Any], name: str) -> None:
        """Run ``work`` in the background until it ends or the client closes."""
        async def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await work

        task = asyncio.ensure_future(run())
        task.set_name(f"mesh-client-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold ``task`` until it is done (asyncio keeps only weak references to tasks); how
        it ended is logged if nobody else asks (work a cancelled caller left behind)."""
        self._background.add(task)
        task.add_done_callback(self._kept)

    def _kept(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.debug("%s ended: %s", task.get_name(), error)

    def run(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """:meth:`spawn` for work whose failure is logged, not raised (a cancellation sent
        after its caller was gone)."""
        async def logged() -> None:
            try:
                await work
            except AgoraError as exc:
                log.info("%s: %s", name, exc)

        self.spawn(logged(), name)

    async def _beat(self) -> None:
        self._changed()

    def _changed(self) -> None:
        for hook in self.on_change:
            try:
                hook()
            except Exception:
                log.exception("a mesh change hook failed")
