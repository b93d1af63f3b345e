"""The soft-state directory of peers every node keeps (M-2.3): no registry server.

Entries come from signed presence messages (hello, heartbeat, a host's
heartbeat batch) and discovery answers (:meth:`Directory.learn` reads both); a
peer that misses ``missed`` heartbeats in a row is evicted, and a ``bye``
removes it at once (a host's bye, every agent that named that host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agoramesh.bus.identity import is_agent_id
from agoramesh.errors import SchemaError
from agoramesh.nodes.card import AgentCard, AgentStatus, presence_interval

__all__ = ("Directory", "PeerEntry")

# Peer cards by (agent id, digest), shared by every directory in the process: a
# card is parsed once however many local agents (or clients) hear the same one.
_CARDS: dict[tuple[str, str], AgentCard] = {}
_CARD_CACHE_SIZE = 4096
#: Peers evicted for silence a directory remembers at most (the oldest forgotten first).
_LAPSED_SIZE = 1024


@dataclass(slots=True)
class PeerEntry:
    card: AgentCard
    status: AgentStatus
    last_seen: float  # time.monotonic()
    interval: float  # the peer's heartbeat interval, seconds
    digest: str = ""  # of the card, as its heartbeats announce it
    host: str = ""  # the id of the host that beats for it ("": it beats itself)
    status_mark: int | None = None  # hash of the status map ``status`` was read from

    @property
    def id(self) -> str:
        return self.card.id


class Directory:
    """Known peers by agent id; ``on_join`` / ``on_leave`` hooks see changes."""

    def __init__(self, *, missed: int = 3, clock: Callable[[], float] = time.monotonic) -> None:
        self.missed = missed
        self._clock = clock
        self._peers: dict[str, PeerEntry] = {}
        self._local: dict[str, AgentCard] = {}  # agents of this process sharing the directory
        self._capable: dict[str, frozenset[str]] = {}  # pattern -> ids; cleared on any change
        #: Peers evicted for silence, with when: they may only be paused (:meth:`lapsed`).
        self._lapsed: dict[str, tuple[PeerEntry, float]] = {}
        self.on_join: list[Callable[[PeerEntry], None]] = []
        self.on_leave: list[Callable[[str, str], None]] = []  # (agent id, reason)

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[PeerEntry]:
        return iter(list(self._peers.values()))

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._peers

    def get(self, agent_id: str) -> PeerEntry | None:
        return self._peers.get(agent_id)

    def name_of(self, agent_id: str) -> str | None:
        """The name on ``agent_id``'s card: a peer's, one lately evicted for silence, or an
        agent of this process; None for an agent not known here."""
        entry = self._peers.get(agent_id) or self._lapsed.get(agent_id, (None, 0.0))[0]
        card = entry.card if entry is not None else self._local.get(agent_id)
        return card.name if card is not None else None

    def forget_lapsed(self, agent_id: str) -> None:
        """Stop counting ``agent_id`` as lately evicted and maybe paused: it is gone."""
        self._lapsed.pop(agent_id, None)

    def seen(self, card: AgentCard, status: AgentStatus, interval: float, *,
             digest: str = "", host: str = "") -> PeerEntry:
        """Record a peer's card (hello, card reply, discovery answer)."""
        entry = self._peers.get(card.id)
        now = self._clock()
        if entry is None:
            self._capable.clear()
            self._lapsed.pop(card.id, None)
            entry = self._peers[card.id] = PeerEntry(card, status, now, interval, digest, host)
            for hook in self.on_join:
                hook(entry)
        else:
            if entry.card is not card:
                self._capable.clear()
            entry.card, entry.status, entry.last_seen = card, status, now
            entry.interval, entry.digest, entry.host = interval, digest, host
            entry.status_mark = None
        return entry

    def learn(self, body: object, sender: str, *, default_interval: float) -> AgentCard:
        """Record a peer from a presence or discovery body it signed; returns its card.

        SchemaError, and nothing is recorded, unless ``body`` is a map with a
        usable card of the signer's own and a usable ``interval``
        (``default_interval`` when absent). The caller counts the rejection
        (PROTOCOL.md §15).
        """
        if not isinstance(body, dict):
            raise SchemaError(f"the body is a {type(body).__name__}, not a map")
        digest = str(body.get("digest") or "")
        card = _CARDS.get((sender, digest)) if digest else None
        if card is None:
            card = AgentCard.from_dict(body.get("card"))
            if card.id != sender:
                raise SchemaError(f"a card for {card.id[:8]}, not the signer's")
            if digest:
                if len(_CARDS) >= _CARD_CACHE_SIZE:
                    del _CARDS[next(iter(_CARDS))]
                _CARDS[(sender, digest)] = card
        interval = presence_interval(body.get("interval"), default_interval)
        host = body.get("host", "")
        if host != "" and not is_agent_id(host):
            raise SchemaError("host must be the id of the agent's host")
        self.seen(card, AgentStatus.from_dict(body.get("status")), interval, digest=digest,
                  host=host)
        return card

    def touch(self, agent_id: str, status: AgentStatus, interval: float, *,
              mark: int | None = None) -> bool:
        """A heartbeat from a peer we know; False if we do not know it (yet). ``mark``:
        a hash of the status map ``status`` was read from (the next beat with the same
        map need not be read again)."""
        entry = self._peers.get(agent_id)
        if entry is None:
            return False
        entry.status, entry.last_seen, entry.interval = status, self._clock(), interval
        entry.status_mark = mark
        return True

    def remove(self, agent_id: str, reason: str = "bye") -> bool:
        entry = self._peers.pop(agent_id, None)
        if entry is None:
            self._lapsed.pop(agent_id, None)  # a bye from an agent already evicted
            return False
        if reason == "silent":
            if len(self._lapsed) >= _LAPSED_SIZE:
                del self._lapsed[next(iter(self._lapsed))]
            self._lapsed[agent_id] = (entry, self._clock())
        else:
            self._lapsed.pop(agent_id, None)
        self._capable.clear()
        for hook in self.on_leave:
            hook(agent_id, reason)
        return True

    def remove_hosted(self, host: str) -> list[str]:
        """Drop every peer whose card body named ``host`` as its host (the host said bye),
        and forget those evicted for silence: they are not paused, they are gone."""
        for agent_id in [agent_id for agent_id, (entry, _) in self._lapsed.items()
                         if entry.host == host]:
            del self._lapsed[agent_id]
        hosted = [entry.id for entry in self._peers.values() if entry.host == host]
        for agent_id in hosted:
            self.remove(agent_id, "bye")
        return hosted

    def evict_silent(self) -> list[str]:
        """Drop peers silent for ``missed`` of their heartbeat intervals; returns their ids."""
        now = self._clock()
        silent = [entry.id for entry in self._peers.values()
                  if now - entry.last_seen > self.missed * entry.interval]
        for agent_id in silent:
            self.remove(agent_id, "silent")
        return silent

    def lapsed(self, pattern: str, within: float) -> frozenset[str]:
        """Ids of agents offering ``pattern`` that were evicted for silence in the last
        ``within`` seconds and not heard from since: a frozen process (SIGSTOP, a long
        pause) looks like this until it resumes. Older ones are forgotten."""
        if not self._lapsed:
            return frozenset()
        now = self._clock()
        for agent_id in [agent_id for agent_id, (_, when) in self._lapsed.items()
                         if now - when > within]:
            del self._lapsed[agent_id]
        return frozenset(agent_id for agent_id, (entry, _) in self._lapsed.items()
                         if entry.card.offers(pattern))

    def add_local(self, card: AgentCard) -> None:
        """An agent of this process that shares the directory (never evicted, not a peer)."""
        self._local[card.id] = card
        self._capable.clear()

    def remove_local(self, agent_id: str) -> None:
        self._local.pop(agent_id, None)
        self._capable.clear()

    def local_cards(self) -> list[AgentCard]:
        """The cards of this process's agents that use this directory."""
        return list(self._local.values())

    def capable(self, pattern: str) -> frozenset[str]:
        """Ids of every agent known to offer ``pattern``: peers and this process's agents.

        Memoised per pattern until the membership or a card changes: auctions
        ask this for every task.
        """
        ids = self._capable.get(pattern)
        if ids is None:
            ids = frozenset(
                [entry.id for entry in self._peers.values() if entry.card.offers(pattern)]
                + [card.id for card in self._local.values() if card.offers(pattern)])
            if len(self._capable) >= 1024:
                self._capable.clear()
            self._capable[pattern] = ids
        return ids
