"""Feeding a :class:`~agoramesh.monitoring.mesh_view.MeshView` from a connected bus.

The watcher is a client, not an agent: it listens to presence, telemetry and
calls for proposals, asks ``agora.discover`` once so the agents already on
the mesh show at once, and fetches the card of any agent it hears without
one (or that a host's heartbeat or telemetry batch names: only the agent's
card says whether that host speaks for it). It also asks JetStream for the
durable-job store's counts (job consumer and result stream info) at most
once a second, each reading bounded by a second. ``agoramesh watch`` and the
web console (:mod:`agoramesh.console`) both see the mesh through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.jetstream import JetStream
from agoramesh.config import JobsConfig
from agoramesh.errors import AgoraError
from agoramesh.monitoring.job_queue import read_job_queue
from agoramesh.monitoring.mesh_view import MeshView

__all__ = ("MeshWatcher",)

#: What tells of agents whose card we may lack: their own beats, or their host's batches.
_BEATS = frozenset({"heartbeat", "telemetry", "heartbeat_batch", "telemetry_batch"})


class MeshWatcher:
    """Feeds a :class:`MeshView` from a connected bus; ``stop`` leaves nothing running."""

    #: Card fetches in flight at once, and how long before asking a silent agent again.
    FETCH_SLOTS, FETCH_RETRY = 4, 5.0
    #: Card fetches started and not yet done, at most (the others are asked on a later beat).
    FETCH_QUEUE = 64

    def __init__(self, bus: Bus, view: MeshView, *,
                 clock: Callable[[], float] = time.time, jobs_every: float = 1.0) -> None:
        self.bus = bus
        self.view = view
        self.clock = clock
        #: Seconds between two readings of the job store (each bounded by this, at most 1 s).
        self.jobs_every = jobs_every
        self.js = JetStream(bus, JobsConfig(api_timeout=min(1.0, jobs_every)))
        self._jobs: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._asked: dict[str, float] = {}  # agent id -> when we last asked for its card
        self._slots = asyncio.Semaphore(self.FETCH_SLOTS)

    async def start(self) -> None:
        """Subscribe; returns once the server has our interest (nothing said since is lost)."""
        subjects = self.bus.subjects
        await self.bus.subscribe(subjects.presence_all, self._on_message)
        await self.bus.subscribe(subjects.telemetry_all, self._on_message)
        # Counted, never acted on: no tag check needed ("verify what you act on",
        # docs/ARCHITECTURE.md, "Messages").
        await self.bus.subscribe(subjects.cfp(">"), self._on_message, verify=False)
        if self._jobs is None:
            self._jobs = asyncio.create_task(self._read_jobs())

    async def _read_jobs(self) -> None:
        """The job store's counts into the view, at most once every ``jobs_every``."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self.view.set_jobs(await read_job_queue(self.js, min(1.0, self.jobs_every)))
            await asyncio.sleep(max(0.0, started + self.jobs_every - loop.time()))

    async def discover(self, timeout: float) -> None:
        """One scatter-gather on ``agora.discover``, answers taken in as they arrive.

        Not ``Bus.gather``, which returns them at the deadline: an answer's
        status would then be taken as newer than the heartbeats that
        followed it, and the screen would wait for the slowest agent.
        """
        bus = self.bus
        inbox = bus.new_inbox()
        answers = await bus.subscribe(inbox, self._on_message)
        try:
            await bus.publish(bus.subjects.discover, "discovery", {}, reply=inbox,
                              ttl_ms=max(1000, int(timeout * 1000)))
            await asyncio.sleep(timeout)
        finally:
            await answers.stop(timeout=0.5)

    async def _on_message(self, delivery: Delivery) -> None:
        now = self.clock()
        self.view.ingest(delivery, now=now)
        if delivery.type in _BEATS:
            self.fetch_missing_cards(now)

    def fetch_missing_cards(self, now: float) -> None:
        for agent_id in self.view.missing_cards(now):
            if len(self._fetches) >= self.FETCH_QUEUE:
                return
            if now - self._asked.get(agent_id, -self.FETCH_RETRY) < self.FETCH_RETRY:
                continue
            if len(self._asked) >= 4096:  # agents come and go: forget old askings
                self._asked.clear()
            self._asked[agent_id] = now
            task = asyncio.create_task(self._fetch_card(agent_id))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _fetch_card(self, agent_id: str) -> None:
        async with self._slots:
            try:
                reply = await self.bus.request(self.bus.subjects.agent(agent_id),
                                               "card_request", {}, to=agent_id, timeout=1.0)
            except AgoraError:
                return  # gone, or busy: asked again after FETCH_RETRY
        self.view.ingest(reply, now=self.clock())

    async def stop(self) -> None:
        """Cancel card fetches and the job-store reading still running (subscriptions end
        with the bus)."""
        running = list(self._fetches)
        if self._jobs is not None:
            running.append(self._jobs)
            self._jobs = None
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=1.0)
