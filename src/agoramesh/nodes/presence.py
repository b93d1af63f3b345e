"""Presence and discovery: what an agent says of itself, and who else is on the mesh.

With no registry (docs/ARCHITECTURE.md, "Agent nodes"): an agent says ``hello`` with its card,
``heartbeat`` every ``heartbeat_interval`` with its status and its card's
digest (peers fetch a card they lack or that changed), and ``bye``; every
process keeps a soft-state :class:`Directory` that evicts a peer after missed
beats. ``agora.discover`` is a scatter-gather answered with the same card.

Agents hosted in one process (nodes/host.py) still say their own hello (its
``host`` field names the host) and bye, but beat together: their host
sends one ``heartbeat_batch`` a beat for all of them, which a receiver
applies only to agents whose own signed card body named that host, and a
host's ``bye`` drops every agent that named it.

:class:`PeerWatch` is the listening side (a standalone agent's, or a host's);
:class:`Presence` what one agent says. Every body is read as hostile: one that
is not a usable card of its signer's changes nothing and is counted as a
rejection (PROTOCOL.md §15).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.envelope import Envelope
from agoramesh.bus.identity import is_agent_id
from agoramesh.errors import AgoraError, SchemaError, SubjectError, WrongSubject
from agoramesh.nodes.card import AgentCard, AgentStatus, presence_interval
from agoramesh.nodes.directory import Directory

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("MAX_BATCH", "PeerWatch", "Presence", "answer_discovery", "beat_every",
           "presence_body", "presence_ttl_ms")

#: Entries one ``heartbeat_batch`` (or ``telemetry_batch``) carries at most.
MAX_BATCH = 1024
#: Card fetches a watch keeps waiting at most (others are asked on a later beat).
_MAX_FETCHING = 256
#: Agents named by a batch before their card, remembered at most.
_MAX_UNKNOWN = 8192


async def answer_discovery(delivery: Delivery, card: AgentCard,
                           body: Callable[[], dict[str, Any]]) -> None:
    """Answer an ``agora.discover`` query with ``body()`` if ``card`` matches it."""
    query = delivery.body if isinstance(delivery.body, dict) else {}
    try:
        if not card.answers(query):
            return
    except AgoraError:
        await delivery.respond_error(SubjectError(
            f"bad capability pattern {query.get('capability')!r}"))
        return
    await delivery.respond("discovery", body(), public=True)  # a card: public anyway


def presence_body(kind: str, *, card: dict[str, Any], status: dict[str, Any], interval: float,
                  digest: str, host: str = "") -> dict[str, Any]:
    """The body of a ``hello`` (the shape of ``card`` replies and discovery answers too),
    ``heartbeat`` or ``bye`` (PROTOCOL.md §15): a heartbeat is small, its card's digest
    instead of the card; ``host`` names the host beating for the agent ("" for none)."""
    if kind == "bye":
        return {}
    if kind == "heartbeat":
        return {"status": status, "interval": interval, "digest": digest}
    body = {"card": card, "status": status, "interval": interval, "digest": digest}
    if host:
        body["host"] = host
    return body


def presence_ttl_ms(interval: float) -> int:
    """How long presence (and telemetry) envelopes live: a few missed beats, never less
    than a second (PROTOCOL.md §15)."""
    return max(1000, int(interval * 3000))


def _fingerprint(status: object) -> int | None:
    """A hash of a status map as received (None if it has no hashable form)."""
    if not isinstance(status, dict):
        return None
    try:
        return hash(tuple(status.items()))
    except TypeError:  # a list or map inside: read it the long way
        return None


async def beat_every(interval: float, directory: Directory | None,
                     send: Callable[[], Awaitable[None]],
                     log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
    """Every ``interval`` until cancelled: evict ``directory``'s silent peers, then
    ``send`` this beat (a failure is logged: reconnecting, the next beat will do).

    No eviction on a beat that comes late (our process was paused, or starved of
    CPU): the peers' beats are then waiting in our buffer, unread; the next beat
    judges them, once they are read.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        late, last = now - last > 2 * interval, now
        if directory is not None and not late:
            directory.evict_silent()
        try:
            await send()
        except AgoraError as exc:
            log.debug("beat not sent: %s", exc)


class PeerWatch:
    """Listens to ``agora.presence.>`` and keeps ``directory`` up to date.

    ``bus`` fetches the cards it lacks; ``interval``: the heartbeat interval
    assumed for a peer that does not say its own; ``spawn`` runs a card fetch
    in the background (owned by the caller); ``running`` says whether to still
    start any; ``own``: the id whose presence to ignore (our own).
    """

    def __init__(self, bus: Bus, directory: Directory, *, interval: float, own: str,
                 spawn: Callable[[Awaitable[None], str], None], running: Callable[[], bool],
                 log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self.bus = bus
        self.directory = directory
        self.interval = interval
        self.own = own
        self._spawn = spawn
        self._running = running
        self.log = log
        self._fetching: set[str] = set()
        self._fetch_slots = asyncio.Semaphore(4)  # card fetches in flight, bounded
        #: Agents a batch named that we did not know: their hello may still be on its
        #: way (on another connection than the batch), so only a second batch naming
        #: them fetches their card. Bounded.
        self._unknown: dict[str, str] = {}

    async def on_presence(self, delivery: Delivery) -> None:
        sender = delivery.sender
        if sender is None or sender == self.own:
            return
        if not delivery.subject.endswith("." + sender):  # a hello or bye for someone else
            self.bus.guard.reject(WrongSubject(
                f"presence from {sender} on {delivery.subject}, not its own subject"))
            self.log.warning("presence from %s on %s ignored", sender[:8], delivery.subject)
            return
        if delivery.type == "bye":  # an agent leaves; a host takes its agents along
            self.directory.remove(sender, "bye")
            self.directory.remove_hosted(sender)
        elif delivery.type == "hello":
            self.learn(delivery.body, sender)
        elif delivery.type == "heartbeat":
            self._heard(delivery.body, sender)
        elif delivery.type == "heartbeat_batch":
            self._heard_batch(delivery.body, sender)

    def _heard(self, body: Any, sender: str) -> None:
        """A heartbeat: refresh a known peer; fetch the card of a new or changed one."""
        try:
            if not isinstance(body, dict):
                raise SchemaError(f"the body is a {type(body).__name__}, not a map")
            interval = presence_interval(body.get("interval"), self.interval)
        except SchemaError as exc:
            self.bus.guard.reject(exc)
            self.log.warning("unusable heartbeat from %s: %s", sender[:8], exc)
            return
        self._beat(sender, body, interval)

    def _beat(self, agent_id: str, beat: dict[str, Any], interval: float) -> None:
        entry = self.directory.get(agent_id)
        if entry is None or beat.get("digest") != entry.digest:
            self.fetch(agent_id)
            return
        raw = beat.get("status")
        mark = _fingerprint(raw)  # an idle agent beats the same status: read it once
        status = (entry.status if mark is not None and mark == entry.status_mark
                  else AgentStatus.from_dict(raw))
        self.directory.touch(agent_id, status, interval, mark=mark)

    def _heard_batch(self, body: Any, host: str) -> None:
        """A host's beat for its agents: each entry refreshes an agent whose card named it.

        An entry for an agent we do not know yet fetches its card (whose own
        ``host`` field then says whether this host speaks for it); entries for
        agents whose card names another host change nothing and are counted
        (``wrong_subject``), unusable ones too (``schema``), once per batch.
        """
        try:
            if not isinstance(body, dict):
                raise SchemaError(f"the body is a {type(body).__name__}, not a map")
            interval = presence_interval(body.get("interval"), self.interval)
            beats = body.get("beats")
            if not isinstance(beats, list) or len(beats) > MAX_BATCH:
                raise SchemaError(f"beats must be a list of at most {MAX_BATCH} maps")
        except SchemaError as exc:
            self.bus.guard.reject(exc)
            self.log.warning("unusable heartbeat batch from %s: %s", host[:8], exc)
            return
        unusable = foreign = 0
        for beat in beats:
            agent_id = beat.get("id") if isinstance(beat, dict) else None
            entry = self.directory.get(agent_id) if isinstance(agent_id, str) else None
            if entry is None and not (isinstance(agent_id, str) and is_agent_id(agent_id)):
                unusable += 1  # (a known id is a valid one: checked once, when learnt)
                continue
            assert isinstance(agent_id, str) and isinstance(beat, dict)
            if entry is not None and entry.host != host:
                foreign += 1
            elif entry is None and self._unknown.get(agent_id) != host:
                if len(self._unknown) >= _MAX_UNKNOWN:
                    del self._unknown[next(iter(self._unknown))]
                self._unknown[agent_id] = host  # the next batch naming it fetches it
            else:
                self._unknown.pop(agent_id, None)
                self._beat(agent_id, beat, interval)
        if unusable:
            self.bus.guard.reject(SchemaError(
                f"{unusable} unusable entries in a heartbeat batch from {host}"))
        if foreign:
            self.bus.guard.reject(WrongSubject(
                f"a heartbeat batch from {host} speaks for {foreign} agents that did not "
                f"name it as their host"))
            self.log.warning("heartbeat batch from %s speaks for %d agents it does not host",
                             host[:8], foreign)

    def fetch(self, agent_id: str) -> None:
        """Ask ``agent_id`` for its card in the background, unless asked already."""
        if (agent_id in self._fetching or len(self._fetching) >= _MAX_FETCHING
                or not self._running()):
            return
        self._fetching.add(agent_id)
        self._spawn(self.fetch_card(agent_id), f"card-{agent_id[:8]}")

    async def sweep(self, timeout: float) -> int:
        """Learn every agent on the mesh now, by one ``agora.discover`` scatter-gather
        whose answers are learnt as they arrive (a host that joins a mesh of thousands
        asks once, instead of fetching each card its first batches name); returns how
        many answered."""
        def learn(envelope: Envelope) -> None:
            if envelope.sender is not None and envelope.sender != self.own:
                self.learn(envelope.body, envelope.sender)

        answers = await self.bus.gather(self.bus.subjects.discover, "discovery", {},
                                        timeout=timeout, each=learn)
        return len(answers)

    async def fetch_card(self, agent_id: str) -> None:
        """Ask a peer for its card (we missed its hello, or its card changed)."""
        try:
            async with self._fetch_slots:
                reply = await self.bus.request(self.bus.subjects.agent(agent_id),
                                               "card_request", {}, to=agent_id,
                                               timeout=2 * self.interval)
            self.learn(reply.body, agent_id)
        except AgoraError as exc:
            self.log.debug("no card from %s: %s", agent_id[:8], exc)
        finally:
            self._fetching.discard(agent_id)

    def learn(self, body: Any, sender: str) -> AgentCard | None:
        """Record a peer from a presence or discovery body it signed; None if unusable.

        A body without a usable card of the signer's (or with an unusable
        ``interval`` or ``host``) changes nothing and is counted as a ``schema``
        rejection (PROTOCOL.md §15).
        """
        try:
            return self.directory.learn(body, sender, default_interval=self.interval)
        except SchemaError as exc:
            self.bus.guard.reject(exc)
            self.log.warning("unusable card from %s: %s", sender[:8], exc)
            return None


class Presence:
    """An agent's hello, heartbeats and bye, its discovery answers, and its peer watch."""

    def __init__(self, node: BaseNode, *, host: str = "", interval: float | None = None) -> None:
        """``host``: the id of the host beating for this agent ("" for none: it beats itself);
        ``interval``: its beat (default: the agent's ``heartbeat_interval``)."""
        self.node = node
        self.host = host
        self.interval = node.config.heartbeat_interval if interval is None else interval
        self.ttl_ms = presence_ttl_ms(self.interval)
        self.watch = PeerWatch(node.bus, node.directory, interval=self.interval,
                               own=node.agent_id, spawn=node.spawn,
                               running=lambda: node.is_running, log=node.log)

    def body(self) -> dict[str, Any]:
        """The card, status, interval, digest (and host): a hello, a discovery answer, a card."""
        node = self.node
        return presence_body("hello", card=node.card_dict, status=node.status.as_dict(),
                             interval=self.interval, digest=node.card_digest, host=self.host)

    def beat_entry(self) -> dict[str, Any]:
        """This agent's entry in its host's ``heartbeat_batch``."""
        node = self.node
        return {"id": node.agent_id, "status": node.status_dict(), "digest": node.card_digest}

    async def announce(self, kind: str) -> None:
        node = self.node
        body = (self.body() if kind == "hello" else
                presence_body(kind, card=node.card_dict, status=node.status_dict(),
                              interval=self.interval, digest=node.card_digest))
        await node.bus.publish(node.bus.subjects.presence(node.agent_id), kind, body,
                               ttl_ms=self.ttl_ms)

    async def beat(self, owns_directory: bool) -> None:
        """Heartbeats (and telemetry) until cancelled; evict silent peers first
        (:func:`beat_every`)."""
        await beat_every(self.interval, self.node.directory if owns_directory else None,
                         self._send_beat, self.node.log)

    async def _send_beat(self) -> None:
        if not self.node.is_running:  # stopping: our bye was (or is about to be) the last word
            return
        await self.announce("heartbeat")
        await self.publish_telemetry()

    def telemetry(self) -> dict[str, Any]:
        """The body of this agent's telemetry beat (PROTOCOL.md §18); drains recent events."""
        node = self.node
        body: dict[str, Any] = {
            "name": node.config.name, "type": node.config.type,
            "status": node.status_dict(), **node.metrics.totals(),
            "rejections": {str(reason): count for reason, count in node.bus.rejections.items()},
            "denied": node.metrics.denials(), "recent": node.metrics.take_recent()}
        server = node.bus.connection.server()
        if server is not None:
            body["server"] = server
        return body

    async def publish_telemetry(self) -> None:
        # Nobody but `agoramesh watch` subscribes: with no interest, servers drop it.
        node = self.node
        await node.bus.publish(node.bus.subjects.telemetry(node.agent_id), "telemetry",
                               self.telemetry(), ttl_ms=self.ttl_ms)

    async def on_presence(self, delivery: Delivery) -> None:
        await self.watch.on_presence(delivery)

    def learn(self, body: Any, sender: str) -> AgentCard | None:
        """See :meth:`PeerWatch.learn`."""
        return self.watch.learn(body, sender)

    async def fetch_card(self, agent_id: str) -> None:
        await self.watch.fetch_card(agent_id)

    async def on_discover(self, delivery: Delivery) -> None:
        await answer_discovery(delivery, self.node.card, self.body)

    async def find(self, pattern: str, *, timeout: float = 1.0) -> list[AgentCard]:
        """Scatter-gather on ``agora.discover``; closes early once every known match answered.

        Only the answers of the agents known to match count towards closing
        early: anyone else's (a stranger's, an attacker's) is read, never awaited.
        """
        node = self.node
        known = node.directory.capable(pattern) | (
            {node.agent_id} if node.card.offers(pattern) else set())
        replies = await node.bus.gather(node.bus.subjects.discover, "discovery",
                                        {"capability": pattern}, timeout=timeout,
                                        expected_from=known or None)
        cards: dict[str, AgentCard] = {}
        for reply in replies:
            card = (node.card if reply.sender == node.agent_id
                    else self.learn(reply.body, reply.sender))
            if card is not None:
                cards[card.id] = card
        return sorted(cards.values(), key=lambda card: (card.name, card.id))
