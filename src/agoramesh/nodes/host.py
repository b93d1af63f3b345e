"""AgentHost: many agents in one process, at the cost of a few.

An agent on its own (``BaseNode`` without a host) has its own NATS
connection, listens to presence, answers discovery and the services protocol,
and signs a heartbeat and a telemetry envelope every beat. A thousand of them
in one process would be a thousand connections and two thousand signatures a
second, checked again by every process on the mesh. Agents given a host
instead (``BaseNode(..., host=host)``) share what can be shared:

- **one connection** per distinct server list (:class:`~agoramesh.bus.connection.Connection`),
  for agents that connect without credentials of their own (an agent with a
  JWT keeps its own connection: a connection authenticates one identity);
- **one directory** and one presence subscription for all of them;
- **one ``agora.discover`` subscription** and one ``$SRV.>`` subscription,
  answered for every hosted agent that matches (each discovery answer still
  signed by the agent itself);
- **one beat**: each beat the host signs one ``heartbeat_batch`` with every
  running agent's status and card digest, and one ``telemetry_batch``
  (PROTOCOL.md §15, §18), in chunks of at most :data:`~agoramesh.nodes.presence.MAX_BATCH`.

Each agent still says its own ``hello`` (naming the host in its ``host``
field, which is what lets receivers accept the host's batches for it) and its
own ``bye``; the host's ``bye`` drops every agent that named it. The host
signs with an identity of its own (``identity``), which is not an agent: it
has no card and serves nothing. On a secured mesh it is admitted as an agent
with no capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.connection import Connection
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy, encode_json
from agoramesh.bus.message import Message
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError, ConfigError, OversizeEnvelope, SubjectError
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.presence import MAX_BATCH, PeerWatch, beat_every
from agoramesh.observability.logs import agent_logger

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("AgentHost",)

log = logging.getLogger("agoramesh.host")

_VERBS = frozenset({"PING", "INFO", "STATS"})
#: Entries in one batch envelope, at first; halved while a batch does not fit.
_CHUNK = 256


class AgentHost:
    """The process-wide part of many agents: connections, directory, presence, beat."""

    def __init__(self, bus_config: BusConfig, *, identity: Identity | None = None,
                 name: str = "host", heartbeat_interval: float = 1.0,
                 missed_heartbeats: int = 3) -> None:
        if heartbeat_interval <= 0 or missed_heartbeats < 1:
            raise ConfigError("heartbeat_interval must be > 0 and missed_heartbeats >= 1")
        self.identity = identity or Identity.generate()
        self.config = bus_config
        self.name = name
        self.interval = heartbeat_interval
        #: Presence and telemetry outlive a few missed beats, never less than a second.
        self.ttl_ms = max(1000, int(heartbeat_interval * 3000))
        self.log = agent_logger(log, name, self.identity.agent_id)
        own = Connection(bus_config, self.identity)
        self._connections: dict[tuple[object, ...], Connection] = {self._key(bus_config): own}
        self.bus = Bus(self.identity, bus_config, connection=own)
        self.directory = Directory(missed=missed_heartbeats)
        self.watch = PeerWatch(self.bus, self.directory, interval=heartbeat_interval,
                               own=self.agent_id, spawn=self.spawn,
                               running=lambda: self.is_running, log=self.log)
        #: The running agents this host beats for, by id.
        self.agents: dict[str, BaseNode] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._job_driver: BaseNode | None = None
        self._state = "created"

    @property
    def agent_id(self) -> str:
        """The host's own id: its presence subject, and the ``host`` its agents name."""
        return self.identity.agent_id

    @property
    def is_running(self) -> bool:
        return self._state == "running"

    # -- what agents share -------------------------------------------------------------

    @staticmethod
    def _key(config: BusConfig) -> tuple[object, ...]:
        return (config.servers, config.tls)

    def connection_for(self, config: BusConfig) -> Connection | None:
        """The connection an agent with ``config`` shares (None: it needs its own, because
        it authenticates with credentials of its own)."""
        if config.user_jwt is not None or config.credentials is not None:
            return None
        key = self._key(config)
        connection = self._connections.get(key)
        if connection is None:
            connection = self._connections[key] = Connection(config, self.identity)
        return connection

    def takes_jobs(self, node: BaseNode) -> bool:
        """True for the one agent of this host that drives durable jobs (the first asking)."""
        if self._job_driver is None:
            self._job_driver = node
        return self._job_driver is node

    def add(self, node: BaseNode) -> None:
        """``node`` is running: beat for it, answer discovery and ``$SRV`` for it."""
        if not self.is_running:
            raise AgoraError(f"host {self.name} is not running: start it before its agents")
        self.agents[node.agent_id] = node

    def remove(self, node: BaseNode) -> None:
        self.agents.pop(node.agent_id, None)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, listen to presence, discovery and ``$SRV``, start beating."""
        if self._state != "created":
            raise AgoraError(f"host {self.name} was already started")
        self._state = "starting"
        try:
            await self.bus.start()
            subjects = self.bus.subjects
            await self.bus.subscribe(subjects.presence_all, self.watch.on_presence,
                                     confirm=False)
            await self.bus.subscribe(subjects.discover, self._on_discover,
                                     ingress=IngressPolicy.ALLOW, concurrency=4, confirm=False)
            await self.bus.listen("$SRV.>", self._on_service)
            await self.bus.confirm()
        except BaseException:
            self._state = "stopped"
            await asyncio.shield(self.bus.close(timeout=0.1))
            raise
        self._state = "running"
        self.spawn(self._beat(), "beat")

    async def stop(self, grace: float = 5.0) -> None:
        """Say bye for every agent at once (one envelope), then stop them (``grace`` each,
        all at once: they take no new work, finish what runs), then close."""
        if self._state in ("created", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        with contextlib.suppress(AgoraError):
            await self.bus.publish(self.bus.subjects.presence(self.agent_id), "bye", {},
                                   ttl_ms=self.ttl_ms)
        await asyncio.gather(*(node.stop(grace, say_bye=False)
                               for node in list(self.agents.values())),
                             return_exceptions=True)
        await self._cancel_background()
        await self.bus.close(timeout=min(grace, 2.0))
        self._state = "stopped"

    async def kill(self) -> None:
        """Stop at once, as a crash would: agents killed, no goodbye."""
        self._state = "stopping"
        for node in list(self.agents.values()):
            await node.kill()
        await self._cancel_background()
        await self.bus.close(timeout=0.1)
        self._state = "stopped"

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run ``coro`` until it ends or the host stops (it is cancelled)."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)

    async def __aenter__(self) -> AgentHost:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the beat ------------------------------------------------------------------------

    def _running(self) -> list[BaseNode]:
        return [node for node in self.agents.values() if node.is_running]

    async def _beat(self) -> None:
        """Every interval: evict silent peers, then one heartbeat batch and one telemetry
        batch for every running agent (:func:`beat_every`)."""
        await beat_every(self.interval, self.directory, self.beat, self.log)

    async def beat(self) -> None:
        """Send one heartbeat batch and one telemetry batch now (none once stopping: our
        bye spoke for every agent)."""
        nodes = self._running()
        if not nodes or not self.is_running:
            return
        subjects = self.bus.subjects
        await self._publish(subjects.presence(self.agent_id), "heartbeat_batch", "beats",
                            [node.presence.beat_entry() for node in nodes],
                            {"interval": self.interval})
        await self._publish(subjects.telemetry(self.agent_id), "telemetry_batch", "agents",
                            [{"id": node.agent_id, **node.presence.telemetry()}
                             for node in nodes], {})

    async def _publish(self, subject: str, type: str, key: str, entries: list[dict[str, Any]],
                       extra: dict[str, Any]) -> None:
        """``entries`` in as few envelopes as fit: chunks of :data:`_CHUNK`, halved while
        one is over the size limit (an entry that fits alone in none is dropped, logged)."""
        for chunk in _chunks(entries, min(_CHUNK, MAX_BATCH)):
            await self._publish_chunk(subject, type, key, chunk, extra)

    async def _publish_chunk(self, subject: str, type: str, key: str,
                             chunk: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        try:
            await self.bus.publish(subject, type, {**extra, key: chunk}, ttl_ms=self.ttl_ms)
        except OversizeEnvelope:
            if len(chunk) == 1:
                self.log.warning("%s entry of %s does not fit in a message: not sent", type,
                                 str(chunk[0].get("id"))[:8])
                return
            half = len(chunk) // 2
            await self._publish_chunk(subject, type, key, chunk[:half], extra)
            await self._publish_chunk(subject, type, key, chunk[half:], extra)

    # -- answering for every hosted agent ------------------------------------------------

    async def _on_discover(self, delivery: Delivery) -> None:
        """Every hosted agent whose card matches answers, signing its own answer."""
        query = delivery.body if isinstance(delivery.body, dict) else {}
        for node in self._running():
            try:
                matches = node.card.answers(query)
            except AgoraError:
                await delivery.respond_error(SubjectError(
                    f"bad capability pattern {query.get('capability')!r}"))
                return
            if matches:
                with contextlib.suppress(AgoraError):
                    await dataclasses.replace(delivery, bus=node.bus).respond(
                        "discovery", node.presence.body(), public=True)

    async def _on_service(self, msg: Message) -> None:
        """``$SRV.<verb>[.<name>[.<id>]]``: each hosted agent it names answers (plain JSON)."""
        tokens = msg.subject.split(".")
        if not msg.reply or len(tokens) > 4 or tokens[1] not in _VERBS:
            return
        name = tokens[2] if len(tokens) > 2 else None
        agent_id = tokens[3] if len(tokens) > 3 else None
        for node in self._running():
            service = node.service
            if (name is None or service.name == name) and (agent_id in (None, service.id)):
                with contextlib.suppress(AgoraError):
                    await self.bus.publish_raw(msg.reply, encode_json(service.answer(msg.subject)))


def _chunks(entries: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(entries), size):
        yield entries[start:start + size]
