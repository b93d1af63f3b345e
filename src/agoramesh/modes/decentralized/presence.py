"""A member's presence, on the nodes' own: what it says of itself, and which teammates live.

A member is an agent like any other to the rest of the mesh: it says
``hello`` with its card (type ``autonomous``), a ``heartbeat`` every interval
and ``bye`` on leaving, in the bodies of
:func:`~agoramesh.nodes.presence.presence_body`, and answers ``card_request``
and ``agora.discover`` with its hello (PROTOCOL.md §15), so ``agoramesh
agents`` and ``watch`` list it.

Its teammates' presence is read as a node reads its peers': a
:class:`~agoramesh.nodes.presence.PeerWatch` keeps a
:class:`~agoramesh.nodes.directory.Directory`, which drops a teammate silent
for three of its intervals (checked before each of our beats,
:func:`~agoramesh.nodes.presence.beat_every`) or that said ``bye``. Unlike a
node, a member listens only to the teammates its roster named, one
subscription each (:meth:`TeamPresence.follow`, PROTOCOL.md §19): a team on
a shared mesh neither hears nor fetches the cards of everyone else. A
teammate is alive while the directory holds it; having come after its
``hello``, a member asks for its card at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.subscription import Subscription
from agoramesh.errors import AgoraError
from agoramesh.nodes.card import AgentCard, AgentStatus, card_digest
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.presence import (
    PeerWatch,
    answer_discovery,
    beat_every,
    presence_body,
    presence_ttl_ms,
)

__all__ = ("TeamPresence",)

log = logging.getLogger("agoramesh.decentralized")


async def _stop(subscription: Subscription) -> None:
    with contextlib.suppress(AgoraError):
        await subscription.stop(timeout=0.5)


class TeamPresence:
    """One member's presence, and its teammates' (module docstring).

    ``spawn`` runs card fetches and unsubscriptions in the background (owned by the
    member);
    ``running`` says whether to still start any. The directory's ``on_join``
    and ``on_leave`` hooks tell the member of teammates arriving and leaving.
    """

    def __init__(self, bus: Bus, card: AgentCard, *, interval: float,
                 spawn: Callable[[Awaitable[None], str], None],
                 running: Callable[[], bool]) -> None:
        self.bus = bus
        self.card = card
        self.interval = interval
        self._spawn = spawn
        self.ttl_ms = presence_ttl_ms(interval)
        self.directory = Directory()
        self.watch = PeerWatch(bus, self.directory, interval=interval, own=card.id,
                               spawn=spawn, running=running, log=log)
        self._card = card.as_dict()
        self._digest = card_digest(self._card)
        self._status = AgentStatus(capacity=1).as_dict()
        self._following: dict[str, Subscription] = {}

    def is_live(self, agent_id: str) -> bool:
        return agent_id in self.directory

    def body(self, kind: str = "hello") -> dict[str, Any]:
        return presence_body(kind, card=self._card, status=self._status,
                             interval=self.interval, digest=self._digest)

    async def announce(self, kind: str) -> None:
        """Publish our ``hello``, ``heartbeat`` or ``bye``."""
        await self.bus.publish(self.bus.subjects.presence(self.card.id), kind, self.body(kind),
                               ttl_ms=self.ttl_ms)

    async def beat(self) -> None:
        """Heartbeats until cancelled, silent teammates evicted first."""
        await beat_every(self.interval, self.directory, self._heartbeat, log)

    async def _heartbeat(self) -> None:
        await self.announce("heartbeat")

    async def follow(self, agent_id: str) -> None:
        """Listen to a teammate's presence, and ask for its card now."""
        if agent_id not in self._following:
            self._following[agent_id] = await self.bus.subscribe(
                self.bus.subjects.presence(agent_id), self.watch.on_presence)
        self.watch.fetch(agent_id)

    def unfollow(self, agent_id: str) -> None:
        """Stop listening to a teammate's presence (it was lost); following it again, if
        it comes back, makes a new subscription."""
        subscription = self._following.pop(agent_id, None)
        if subscription is not None:
            self._spawn(_stop(subscription), f"unfollow-{agent_id[:8]}")

    async def on_card_request(self, delivery: Delivery) -> None:
        await delivery.respond("card", self.body(), public=True)  # as hello says

    async def on_discover(self, delivery: Delivery) -> None:
        await answer_discovery(delivery, self.card, self.body)
