"""How the protocols reach agents: the known agents, selectors, and task submission.

A :class:`Dispatcher` is what collaboration modes, workflows and the HTTP API
are written against. It wraps a Bus and the directory of the node (or client)
that drives the work — the submitting side drives, there is no central
controller (M-3.5) — and submits tasks by one of three routes:

- ``Strategy.AUCTION`` (default): a contract-net auction among the capable
  agents, with re-auction if the winner dies (protocols/auction/auctioneer.py);
- ``Strategy.DIRECT``: straight to one capable agent via the capability's
  queue group (``agora.cap.<capability>``);
- ``agent_id=…``: to that agent and no other.

Selectors (M-3.5) pick agents from the directory: ``capability:<pattern>``,
``type:<agent type>``, ``id:<agent id>``, ``name:<agent name>``; a bare word
is a capability pattern.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from enum import StrEnum
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.bus.identity import Identity
from agoramesh.bus.subjects import validate_capability_pattern
from agoramesh.config import BusConfig
from agoramesh.errors import SchemaError, SubjectError
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.task import Task, TaskResult
from agoramesh.observability.tracing import SpanKind, span
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.protocols.auction.policy import Progress

__all__ = ("SELECTOR_KINDS", "Dispatcher", "Strategy", "client_dispatcher", "discover",
           "parse_selector")

log = logging.getLogger("agoramesh.dispatch")

SELECTOR_KINDS = ("capability", "type", "id", "name")


class Strategy(StrEnum):
    AUCTION = "auction"
    DIRECT = "direct"


def parse_selector(selector: str) -> tuple[str, str]:
    """``"type:claude"`` → ``("type", "claude")``; a bare word is a capability pattern."""
    if not isinstance(selector, str) or not selector.strip():
        raise SubjectError(f"an agent selector must be a non-empty string, got {selector!r}")
    kind, sep, value = selector.strip().partition(":")
    if not sep:
        kind, value = "capability", kind
    if kind not in SELECTOR_KINDS:
        raise SubjectError(f"unknown selector kind {kind!r} in {selector!r}; "
                           f"use one of {', '.join(k + ':' for k in SELECTOR_KINDS)}")
    if not value:
        raise SubjectError(f"selector {selector!r} names nothing after {kind}:")
    if kind == "capability":
        validate_capability_pattern(value)
    return kind, value


class Dispatcher:
    """Submit tasks and select agents on behalf of one node or client."""

    def __init__(self, bus: Bus, directory: Directory, *, auctioneer: Auctioneer | None = None,
                 own_card: Callable[[], AgentCard | None] | None = None,
                 timeout: float = 30.0) -> None:
        """``own_card``: the driving agent's own card, listed with its peers (None: a client)."""
        self.bus = bus
        self.directory = directory
        self._own_card = own_card or (lambda: None)
        self.auctioneer = auctioneer or Auctioneer(bus, directory, own_card=self._own_card)
        self.timeout = timeout

    def agents(self) -> list[AgentCard]:
        """Every agent known here (peers, this process's agents, the driver), by name then id."""
        cards = {entry.card.id: entry.card for entry in self.directory}
        cards.update((card.id, card) for card in self.directory.local_cards())
        own = self._own_card()
        if own is not None:
            cards[own.id] = own
        return sorted(cards.values(), key=lambda card: (card.name, card.id))

    def card(self, agent_id: str) -> AgentCard | None:
        """The card of the known agent ``agent_id`` (the driver, this process's, a peer)."""
        own = self._own_card()
        if own is not None and own.id == agent_id:
            return own
        local = next((card for card in self.directory.local_cards() if card.id == agent_id), None)
        if local is not None:
            return local
        entry = self.directory.get(agent_id)
        return entry.card if entry is not None else None

    def load_order(self, card: AgentCard) -> tuple[float, str, str]:
        """Sort key: least loaded first (load as last heard, 0 if unknown), then name, id."""
        entry = self.directory.get(card.id)
        return (entry.status.load if entry is not None else 0.0, card.name, card.id)

    def select(self, selector: str) -> list[AgentCard]:
        """Known agents matching ``selector`` (see the module docstring), by name then id."""
        kind, value = parse_selector(selector)
        match: Callable[[AgentCard], bool]
        if kind == "capability":
            def match(card: AgentCard) -> bool:
                return card.offers(value)
        elif kind == "type":
            def match(card: AgentCard) -> bool:
                return card.type == value
        elif kind == "id":
            def match(card: AgentCard) -> bool:
                return card.id == value
        else:
            def match(card: AgentCard) -> bool:
                return card.name == value
        return [card for card in self.agents() if match(card)]

    async def submit(self, capability: str, parameters: dict[str, Any] | None = None, *,
                     agent_id: str | None = None, strategy: Strategy | str = Strategy.AUCTION,
                     timeout: float | None = None, priority: int = 5,
                     exclude: Iterable[str] = (), task_id: str | None = None,
                     progress: Callable[[Progress], None] | None = None,
                     stream: bool = False, callback: str | None = None) -> TaskResult:
        """Run one task and return its result (COMPLETED or FAILED).

        ``stream``: an auction's winner streams its output, as ``chunk`` progress events.
        ``callback``: a subject the agent that runs it also publishes its final result on
        (PROTOCOL.md §15; InvalidTask if it is not one a callback may name).

        Raises only when no result can be had: NoResponders / NoBidders when
        nobody can take it, BusTimeout when ``timeout`` passes, AuctionFailed
        when every bidder declined.
        """
        wait = timeout or self.timeout
        extra = {"task_id": task_id} if task_id else {}
        task = Task(capability=capability, parameters=dict(parameters or {}), priority=priority,
                    deadline=time.time() + wait, callback=callback, **extra)
        route = Strategy(strategy)
        if agent_id is not None or route is Strategy.DIRECT:
            return await submit_task(self.bus, task, timeout=wait, agent_id=agent_id)
        with span("agoramesh.submit", SpanKind.CLIENT,
                  attributes={"agoramesh.task_id": task.task_id,
                              "agoramesh.capability": capability}):
            outcome = await self.auctioneer.run(task, timeout=wait, exclude=exclude,
                                                progress=progress, stream=stream)
        return outcome.result


async def discover(bus: Bus, directory: Directory, *, timeout: float = 0.5,
                   pattern: str | None = None, expected: int | None = None) -> int:
    """Fill ``directory`` from one ``agora.discover`` scatter-gather; returns how many answered.

    For clients without presence history (the CLI): every agent answers with
    its card, so the wait is ``timeout`` unless ``expected`` answers come first.
    An answer without a usable card of its signer's is counted as a ``schema``
    rejection and skipped.
    """
    query = {"capability": pattern} if pattern else {}
    replies = await bus.gather(bus.subjects.discover, "discovery", query, timeout=timeout,
                               expected=expected)
    learned = 0
    for reply in replies:
        try:
            directory.learn(reply.body, reply.sender, default_interval=1.0)
        except SchemaError as exc:
            bus.guard.reject(exc)
            log.warning("unusable discovery answer from %s: %s", reply.sender[:8], exc)
            continue
        learned += 1
    return learned


@contextlib.asynccontextmanager
async def client_dispatcher(config: BusConfig, *, identity: Identity | None = None,
                            discover_timeout: float = 0.5, timeout: float = 30.0
                            ) -> AsyncIterator[Dispatcher]:
    """A Dispatcher for a client that is not an agent (CLI, scripts).

    Connects with ``identity`` (a fresh one by default), learns the agents by
    one discovery round, and closes the bus on exit.
    """
    bus = await Bus.connect(identity or client_identity(config), config)
    try:
        directory = Directory()
        await discover(bus, directory, timeout=discover_timeout)
        yield Dispatcher(bus, directory, timeout=timeout)
    finally:
        await bus.close(timeout=1.0)
