"""Presence and discovery for one agent node: its view of who else is on the mesh.

With no registry (docs/ARCHITECTURE.md, "Agent nodes"): an agent says ``hello`` with its card,
``heartbeat`` every ``heartbeat_interval`` with its status and its card's
digest (peers fetch a card they lack or that changed), and ``bye``; every
node keeps a soft-state :class:`Directory` that evicts a peer after missed
beats. ``agora.discover`` is a scatter-gather answered with the same card.
Every body is read as hostile: one that is not a usable card of its signer's
changes nothing and is counted as a rejection (PROTOCOL.md §15).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Delivery
from agoramesh.errors import AgoraError, InvalidInput, SchemaError, WrongSubject
from agoramesh.nodes.card import AgentCard, AgentStatus, presence_interval

if TYPE_CHECKING:
    from agoramesh.nodes.node import AgentNode

__all__ = ("Presence", "answer_discovery")


async def answer_discovery(delivery: Delivery, card: AgentCard,
                           body: Callable[[], dict[str, Any]]) -> None:
    """Answer an ``agora.discover`` query with ``body()`` if ``card`` matches it."""
    query = delivery.body if isinstance(delivery.body, dict) else {}
    try:
        if not card.answers(query):
            return
    except AgoraError:
        await delivery.respond_error(InvalidInput(
            f"bad capability pattern {query.get('capability')!r}"))
        return
    await delivery.respond("discovery", body())


class Presence:
    """An agent's hello, heartbeats and bye, and what it learns of its peers."""

    def __init__(self, node: AgentNode) -> None:
        self.node = node
        # Presence and telemetry outlive a few missed beats, never less than a second.
        self.ttl_ms = max(1000, int(node.config.heartbeat_interval * 3000))
        self._fetching: set[str] = set()
        self._fetch_slots = asyncio.Semaphore(4)  # card fetches in flight, bounded

    def body(self) -> dict[str, Any]:
        """The card, status, interval and digest: a hello, a discovery answer, a card."""
        node = self.node
        return {"card": node.card_dict, "status": node.status.as_dict(),
                "interval": node.config.heartbeat_interval, "digest": node.card_digest}

    async def announce(self, kind: str) -> None:
        node = self.node
        if kind == "bye":
            body: dict[str, Any] = {}
        elif kind == "heartbeat":  # small: status and the card's digest, not the card
            body = {"status": node.status.as_dict(),
                    "interval": node.config.heartbeat_interval, "digest": node.card_digest}
        else:
            body = self.body()
        await node.bus.publish(node.bus.subjects.presence(node.agent_id), kind, body,
                               ttl_ms=self.ttl_ms)

    async def beat(self, owns_directory: bool) -> None:
        """Heartbeats (and telemetry) until cancelled; evict silent peers first.

        Not on a beat that comes late (our process was paused, or starved of CPU):
        the peers' beats are then waiting in our buffer, unread; the next beat
        judges them, once they are read.
        """
        node = self.node
        interval = node.config.heartbeat_interval
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            late, last = now - last > 2 * interval, now
            if owns_directory and not late:
                node.directory.evict_silent()
            try:
                await self.announce("heartbeat")
                await node.publish_telemetry()
            except AgoraError as exc:  # reconnecting: the next beat will do
                node.log.debug("heartbeat not sent: %s", exc)

    async def on_presence(self, delivery: Delivery) -> None:
        node = self.node
        sender = delivery.sender
        if sender is None or sender == node.agent_id:
            return
        if not delivery.subject.endswith("." + sender):  # a hello or bye for someone else
            node.bus.guard.reject(WrongSubject(
                f"presence from {sender} on {delivery.subject}, not its own subject"))
            node.log.warning("presence from %s on %s ignored", sender[:8], delivery.subject)
            return
        if delivery.type == "bye":
            node.directory.remove(sender, "bye")
        elif delivery.type == "hello":
            self.learn(delivery.body, sender)
        elif delivery.type == "heartbeat":
            self._heard(delivery.body, sender)

    def _heard(self, body: Any, sender: str) -> None:
        """A heartbeat: refresh a known peer; fetch the card of a new or changed one."""
        node = self.node
        entry = node.directory.get(sender)
        try:
            if not isinstance(body, dict):
                raise SchemaError(f"the body is a {type(body).__name__}, not a map")
            interval = presence_interval(body.get("interval"), node.config.heartbeat_interval)
        except SchemaError as exc:
            node.bus.guard.reject(exc)
            node.log.warning("unusable heartbeat from %s: %s", sender[:8], exc)
            return
        status = AgentStatus.from_dict(body.get("status"))
        if entry is not None and body.get("digest") == entry.digest:
            node.directory.touch(sender, status, interval)
        elif sender not in self._fetching and node.is_running:
            self._fetching.add(sender)
            node.spawn(self.fetch_card(sender), f"card-{sender[:8]}")

    async def fetch_card(self, agent_id: str) -> None:
        """Ask a peer for its card (we missed its hello, or its card changed)."""
        node = self.node
        try:
            async with self._fetch_slots:
                reply = await node.bus.request(node.bus.subjects.agent(agent_id),
                                               "card_request", {}, to=agent_id,
                                               timeout=2 * node.config.heartbeat_interval)
            self.learn(reply.body, agent_id)
        except AgoraError as exc:
            node.log.debug("no card from %s: %s", agent_id[:8], exc)
        finally:
            self._fetching.discard(agent_id)

    def learn(self, body: Any, sender: str) -> AgentCard | None:
        """Record a peer from a presence or discovery body it signed; None if unusable.

        A body without a usable card of the signer's (or with an unusable
        ``interval``) changes nothing and is counted as a ``schema`` rejection
        (PROTOCOL.md §15).
        """
        node = self.node
        try:
            return node.directory.learn(body, sender,
                                        default_interval=node.config.heartbeat_interval)
        except SchemaError as exc:
            node.bus.guard.reject(exc)
            node.log.warning("unusable card from %s: %s", sender[:8], exc)
            return None

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
