"""The console's live model: the mesh as ``agoramesh watch`` hears it, in frames for browsers.

A :class:`ConsoleFeed` owns a :class:`~agoramesh.monitoring.mesh_view.MeshView`
fed by its own :class:`~agoramesh.monitoring.watcher.MeshWatcher` (a bus of
its own: one bus's admission would take the second delivery of an envelope
its agent already heard for a replay), the :class:`~agoramesh.console.topology.Topology`
of the servers this process runs, and the HTTP API's
:class:`~agoramesh.api.activity.Activity`.

What a browser gets is a :meth:`~ConsoleFeed.snapshot` (everything: the
agents, the last :data:`KEEP_AUCTIONS` auctions with their bids, the last
task events, the topology, the job store's counts, the collaborations and
workflows), then frames: while at least one browser listens, every
``interval`` seconds one frame is built (once, whatever the number of
listeners) with only what changed — the agents table or the topology when
they differ from the last frame's, the auctions and task events that arrived
since (by ``seq``). A listener that falls more than :data:`FRAMES` frames
behind gets a new snapshot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from agoramesh.api.activity import Activity
from agoramesh.bus.bus import Bus
from agoramesh.bus.server import EmbeddedServer
from agoramesh.console.topology import Topology
from agoramesh.errors import AgoraError
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.records import AgentRecord
from agoramesh.monitoring.watcher import MeshWatcher

__all__ = ("FRAMES", "KEEP_AUCTIONS", "KEEP_TASKS", "ConsoleFeed", "agent_row", "console_feed")

log = logging.getLogger("agoramesh.console")

KEEP_AUCTIONS = 1000
KEEP_TASKS = 1000
FRAMES = 16


def agent_row(record: AgentRecord, now: float, missed: int) -> dict[str, Any]:
    """One row of the agents table (what changes every beat is rounded to what is shown)."""
    status = record.status
    return {"id": record.id, "name": record.name, "type": record.type,
            "capabilities": list(record.capabilities), "presence": str(
                record.presence(now, missed)), "state": status.state,
            "load": round(status.load, 2), "in_flight": status.in_flight,
            "capacity": status.capacity, "latency_ms": round(status.avg_latency_ms, 1),
            "success_rate": round(status.success_rate, 3),
            "cost_usd": round(status.total_cost_usd, 6),
            "completed": status.tasks_completed, "failed": status.tasks_failed,
            "server": record.server[1] or record.server[0][:12], "host": record.host}


class ConsoleFeed:
    """``await start()`` … ``await stop()``; :meth:`frames` for each listening browser."""

    def __init__(self, bus: Bus, *, servers: Sequence[EmbeddedServer] = (),
                 activity: Activity | None = None, interval: float = 0.5,
                 linger: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.clock = clock
        self.interval = interval
        self.view = MeshView(server=bus.config.servers[0] if bus.config.servers else "",
                             linger=linger, keep_auctions=KEEP_AUCTIONS, keep_tasks=KEEP_TASKS)
        self.watcher = MeshWatcher(bus, self.view, clock=clock)
        self.topology = Topology(servers)
        self.activity = activity or Activity()
        self.listeners = 0
        self._frames: deque[tuple[int, str]] = deque(maxlen=FRAMES)
        self._frame_no = 0
        self._new_frame = asyncio.Condition()
        self._last: dict[str, str] = {}
        self._seq = 0
        self._activity_version = -1
        self._ticker: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    async def start(self) -> None:
        """Listen to the mesh (one discovery round beside, so the agents already there show
        at once) and read the local servers once."""
        await self.watcher.start()
        self._discovery = asyncio.create_task(self._discover())
        await self.topology.start()

    async def _discover(self) -> None:
        try:
            await self.watcher.discover(1.0)
        except AgoraError as exc:  # the agents still show as they beat
            log.debug("the console's discovery round failed: %s", exc)

    async def close_streams(self) -> None:
        """End every browser's stream, for good (the server is shutting down)."""
        self.closing.set()
        async with self._new_frame:
            self._new_frame.notify_all()

    async def stop(self) -> None:
        await self.close_streams()
        tasks = [task for task in (self._ticker, self._discovery) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._ticker = self._discovery = None
        await self.topology.stop()
        await self.watcher.stop()

    # -- what a browser gets ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the console shows, now."""
        now = self.clock()
        view = self.view
        view.prune(now)
        names = view.names()
        return {"kind": "snapshot", "ts": round(now, 3), "server": view.server,
                "agents": self._agents(now), "rates": view.rates(now).as_dict(),
                "auctions": [a.as_dict(names) for a in view.history.auctions],
                "tasks": [{"seq": seq, **event.as_dict(names)}
                          for seq, event in view.history.tasks],
                "topology": self.topology.graph(view.agents.values(), now, view.missed),
                "jobs": None if view.jobs is None else view.jobs.as_dict(),
                "activity": self.activity.as_list()}

    def _agents(self, now: float) -> list[dict[str, Any]]:
        return [agent_row(record, now, self.view.missed) for record in self.view.rows(now)]

    def frame(self) -> dict[str, Any] | None:
        """What changed since the last frame, or None if nothing did."""
        now = self.clock()
        view = self.view
        view.prune(now)
        names = view.names()
        update: dict[str, Any] = {}
        parts = {"agents": self._agents(now),
                 "topology": self.topology.graph(view.agents.values(), now, view.missed),
                 "jobs": None if view.jobs is None else view.jobs.as_dict()}
        for key, value in parts.items():
            text = json.dumps(value, sort_keys=True)
            if self._last.get(key) != text:
                self._last[key] = text
                update[key] = value
        since = self._seq
        self._seq = view.history.seq
        auctions = [a.as_dict(names) for a in view.history.auctions if a.seq > since]
        tasks = [{"seq": seq, **event.as_dict(names)} for seq, event in view.history.tasks
                 if seq > since]
        if auctions:
            update["auctions"] = auctions
        if tasks:
            update["tasks"] = tasks
        if self.activity.version != self._activity_version:
            self._activity_version = self.activity.version
            update["activity"] = self.activity.as_list()
        if not update:
            return None
        return {"kind": "update", "ts": round(now, 3), "rates": view.rates(now).as_dict(),
                **update}

    async def _tick(self) -> None:
        failing = False  # logged once while frames fail, again once they stop failing
        while True:
            try:
                frame = self.frame()
            except Exception:
                if not failing:
                    log.exception("a console frame could not be built; the stream goes on")
                failing, frame = True, None
            else:
                if failing:
                    log.warning("console frames are built again")
                failing = False
            if frame is not None:
                async with self._new_frame:
                    self._frame_no += 1
                    self._frames.append((self._frame_no, json.dumps(frame)))
                    self._new_frame.notify_all()
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """One browser listening: frames are built while there is any."""
        self.listeners += 1
        if self._ticker is None:
            self._last.clear()
            self._seq = self.view.history.seq
            self._activity_version = self.activity.version
            self._ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            self.listeners -= 1
            if self.listeners == 0 and self._ticker is not None:
                ticker, self._ticker = self._ticker, None
                ticker.cancel()
                await asyncio.wait([ticker], timeout=1.0)

    async def _wait_past(self, sent: int, bound: float) -> None:
        """Until a frame after ``sent`` is built, the streams close, or ``bound`` seconds."""
        async with self._new_frame:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound):
                    await self._new_frame.wait_for(
                        lambda: self._frame_no > sent or self.closing.is_set())

    async def frames(self, idle: float = 1.0) -> AsyncGenerator[str, None]:
        """JSON texts for one browser: a snapshot, then each frame (another snapshot if it
        fell behind); ``""`` after ``idle`` seconds without one (the caller's chance to see
        whether the browser is still there)."""
        async with self.listening():
            sent = self._frame_no
            yield json.dumps(self.snapshot())
            while not self.closing.is_set():
                await self._wait_past(sent, idle)
                if self.closing.is_set():
                    return
                pending = [(no, text) for no, text in self._frames if no > sent]
                if not pending:
                    yield ""
                elif pending[0][0] != sent + 1:
                    sent = self._frame_no
                    yield json.dumps(self.snapshot())
                else:
                    for no, text in pending:
                        sent = no
                        yield text


@contextlib.asynccontextmanager
async def console_feed(beside: Bus, servers: Sequence[EmbeddedServer] = ()
                       ) -> AsyncIterator[ConsoleFeed]:
    """A started feed on a bus of its own, connected as ``beside`` is (its identity, servers,
    credentials); stopped, and its bus closed, on exit."""
    config = replace(beside.config, name=f"{beside.config.name or 'agoramesh'}-console")
    async with Bus(beside.identity, config) as bus:
        feed = ConsoleFeed(bus, servers=servers)
        await feed.start()
        try:
            yield feed
        finally:
            await feed.stop()
