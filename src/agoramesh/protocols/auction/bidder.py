"""Contract net (M-3.1, M-3.3): the bidder's side, one per agent.

An agent listens on ``agora.cfp.<capability>`` for each of its capabilities:

- ``cfp``: answer ``bid`` (the :class:`BidStrategy`'s quote) or ``refuse`` (at
  capacity, stopping, excluded by the initiator). Refusing is an answer too,
  so the initiator can close its bid window early. A bid reserves a share of
  a slot for a short while — one over the number of bidders the cfp names,
  the chance of winning among equals — and the shares count in the load of
  later bids, so concurrent auctions spread over the agents.
- ``reject``: the auction went to someone else; the reservation is released.

cfps and rejects are admitted without their signature check: bidding acts on
nothing (the bid goes to the cfp's reply inbox), and the ``award`` the agent
does act on is verified. A forged cfp costs a bid; a forged reject frees a
reservation early. An agent with an access policy (security/acl.py) refuses
a cfp whose initiator may not ``bid`` on the capability, and verifies the
cfp before it bids for an initiator that may (a forger cannot borrow an
allowed initiator's id); it declines an award whose initiator may not ``execute``.

and on its direct subject for ``award``: ``decline`` (policy, capacity), or
run the task with the node's own execution path (schema check, timeout,
cancellation, streaming) and answer on the award's reply inbox. A result
ready within :data:`ACCEPT_WINDOW` implies acceptance; otherwise the agent
sends ``accept`` and then a ``lease`` every ``lease_interval`` until the
result goes out, so the initiator can tell a slow task from a dead agent.

Refusals and declines that only mean "at capacity" say ``retry: true``: the
initiator calls again a moment later instead of giving up. So does the decline
of an award read with less than :data:`LATE_AWARD_MS` of its lifetime left
(the agent was frozen or far behind): its initiator is giving up on it, and
running it would run the task twice. An agent that
already has the task (running it, or done with it a moment ago: its first
initiator was lost and the job is auctioned again) bids saying it ``holds``
it, whatever its load, and answers the award from that run
(nodes/task_memory.py). A ``durable`` award's final result is stored by the
winner in the result store before it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Delivery
from agoramesh.bus.envelope import Envelope, now_ms
from agoramesh.bus.subscription import Subscription
from agoramesh.errors import AgoraError, EnvelopeError
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.task import Task
from agoramesh.observability.tracing import Span, SpanKind, span
from agoramesh.protocols.auction.scoring import Bid
from agoramesh.security.acl import Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("ACCEPT_WINDOW", "AT_CAPACITY", "BidStrategy", "Bidder")

log = logging.getLogger("agoramesh.bidder")

#: Seconds a winner waits for its result before sending an explicit ``accept``.
ACCEPT_WINDOW = 0.02
#: The reason of a refusal or decline that only means "busy now": sent with ``retry: true``.
AT_CAPACITY = "at capacity"
#: The reason of a decline of an award read with less than :data:`LATE_AWARD_MS`
#: (or a quarter of a shorter lifetime) left: its agent was frozen or far behind, and
#: the initiator is about to give up on it and award again, so running it would run
#: the task twice. Sent with ``retry: true``.
AWARD_TOO_LATE = "award arrived too late"
#: A direct award's decline when a bid would have been a counter-offer (then one is made).
COUNTER_OFFER = "would counter-offer"
LATE_AWARD_MS = 250
#: Seconds a bid's reservation lasts without an award or a reject.
RESERVATION_TTL = 5.0
_MIN_LEASE_INTERVAL = 0.05


class BidStrategy:
    """How an agent prices its work and which awards it takes. Subclass to change it.

    The default quote: load = (running + reserved) / capacity; latency = the
    agent's moving average of task time (before any task: its card's
    ``latency_ms`` metadata, else 0); cost = the capability's
    ``cost_per_token`` times an estimate of the tokens (request size / 4,
    doubled for the answer); success rate as observed. Terms it cannot meet
    (``max_cost_usd``, ``deadline``) turn the bid into a counter-offer.
    """

    def quote(self, node: BaseNode, task: Task, capability: Capability,
              terms: dict[str, Any], reserved: float, *,
              request_size: int | None = None) -> Bid | str:
        """A bid, or the reason to refuse; ``reserved``: slots promised to open bids.

        ``request_size``: characters of the task's parameters as JSON, measured
        once per cfp for every local agent (None: measured here when needed).
        """
        status = node.status
        if status.state not in ("ready", "busy"):
            return f"agent is {status.state}"
        if status.in_flight >= status.capacity:
            return AT_CAPACITY
        latency = status.avg_latency_ms if status.tasks_completed else _hint(node, "latency_ms")
        cost = 0.0
        if capability.cost_per_token:
            size = _size(task) if request_size is None else request_size
            tokens = 2 * max(1, size // 4)
            cost = capability.cost_per_token * tokens
        counter: dict[str, float] = {}
        max_cost = terms.get("max_cost_usd")
        if isinstance(max_cost, int | float) and cost > max_cost:
            counter["cost_usd"] = cost
        deadline = terms.get("deadline")
        finish = time.time() + latency / 1000
        if isinstance(deadline, int | float) and finish > deadline:
            counter["deadline"] = round(finish + latency / 2000, 3)
        return Bid(agent_id=node.agent_id,
                   load=min(1.0, (status.in_flight + reserved) / status.capacity),
                   latency_ms=latency, cost_usd=cost, success_rate=status.success_rate,
                   capacity=status.capacity, in_flight=status.in_flight, counter=counter,
                   agent_type=node.config.type, priority=int(_hint(node, "priority")))

    def accept(self, node: BaseNode, task: Task, terms: dict[str, Any]) -> str | None:
        """None to take the award, or the reason to decline it."""
        status = node.status
        if status.state not in ("ready", "busy"):
            return f"agent is {status.state}"
        if status.in_flight >= status.capacity:
            return AT_CAPACITY
        return None


def _size(task: Task) -> int:
    return len(json.dumps(task.parameters, default=str))


def _terms(body: dict[str, Any]) -> dict[str, Any]:
    terms = body.get("terms")
    return terms if isinstance(terms, dict) else {}


def _hint(node: BaseNode, key: str) -> float:
    try:
        return float(node.config.metadata.get(key, 0) or 0)
    except ValueError:
        return 0.0


class Bidder:
    """One agent's participation in auctions: bids on cfps, runs what it is awarded."""

    def __init__(self, node: BaseNode, strategy: BidStrategy | None = None) -> None:
        self.node = node
        self.strategy = strategy or BidStrategy()
        # auction id -> (expiry, share of a slot); insertion order is expiry order
        self._reserved: dict[str, tuple[float, float]] = {}
        self._reserved_total = 0.0  # their shares' sum, kept as they come and go
        self._desk: _BidDesk | None = None

    @property
    def reserved(self) -> float:
        """Slots promised to bids not yet awarded or rejected (expired ones dropped)."""
        now = time.monotonic()
        reservations = self._reserved
        while reservations:  # oldest first: they all last RESERVATION_TTL
            oldest = next(iter(reservations))
            if reservations[oldest][0] >= now:
                break
            self._release(oldest)
        return max(0.0, self._reserved_total)

    def _reserve(self, auction_id: str, share: float) -> None:
        self._release(auction_id)  # a new round of the same auction: counted once, renewed
        self._reserved[auction_id] = (time.monotonic() + RESERVATION_TTL, share)
        self._reserved_total += share

    def _release(self, auction_id: str) -> None:
        reservation = self._reserved.pop(auction_id, None)
        if reservation is not None:
            self._reserved_total = (self._reserved_total - reservation[1]
                                    if self._reserved else 0.0)

    async def start(self) -> None:
        """Listen for cfps on every capability; take awards on the node's direct subject."""
        self.node.direct_handlers["award"] = self._on_award
        # Set first: stop() (BaseNode.start failing) also undoes joins made before one failed.
        desk = self._desk = _desk_for(self.node.directory)
        for capability in self.node.config.capabilities:
            await desk.join(self, capability)
        if self.node.is_running:  # started again on a running agent: listening on return
            await self.node.bus.confirm()

    async def stop(self) -> None:
        desk = self._desk
        if desk is not None:
            for capability in self.node.config.capabilities:
                await desk.leave(self, capability.name)
            self._desk = None

    def released(self, auction_id: str) -> None:
        """A ``reject``: someone else won; free what this agent reserved for the auction."""
        self._release(auction_id)

    async def answer(self, cfp: _Cfp, capability: Capability) -> None:
        """Bid or refuse, signed by this agent, on the cfp's reply inbox (traced as an
        ``agoramesh.bid`` span, a child of the cfp's)."""
        node = self.node
        if node.agent_id in cfp.exclude or not cfp.reply:
            return  # excluded agents are not counted among the expected bidders
        with span("agoramesh.bid", SpanKind.CONSUMER, parent=cfp.envelope.traceparent,
                  attributes={"agoramesh.auction_id": cfp.auction_id,
                              "agoramesh.agent_id": node.agent_id,
                              "agoramesh.capability": capability.name}) as bidding:
            await self._answer(cfp, capability, bidding)

    async def _answer(self, cfp: _Cfp, capability: Capability, bidding: Span) -> None:
        node = self.node
        offer: Bid | str
        denied = node.check_access(cfp.initiator, capability.name, Action.BID)
        if denied is None and not node.config.access.is_open:
            try:  # the policy admits the initiator the cfp names: make sure it sent it
                node.bus.guard.confirm(cfp.envelope)
            except EnvelopeError:
                return  # forged or replayed; the guard counted it
        holds = "" if cfp.task is None or denied is not None else node.memory.holds(cfp.task)
        if denied is not None:
            offer = str(denied)
        elif cfp.task is None:
            offer = f"unusable cfp: {cfp.problem}"
        elif holds:  # ours already: no capacity needed, no price to quote
            status = node.status
            offer = Bid(agent_id=node.agent_id, load=0.0, success_rate=1.0, holds=holds,
                        capacity=status.capacity, in_flight=status.in_flight,
                        agent_type=node.config.type)
        else:
            try:
                offer = self.strategy.quote(node, cfp.task, capability, cfp.terms, self.reserved,
                                          request_size=cfp.request_size)
            except AgoraError as exc:
                offer = f"unusable cfp: {exc}"
        body: dict[str, Any]
        if isinstance(offer, str):
            kind, body = "refuse", {"auction_id": cfp.auction_id, "reason": offer}
            if offer == AT_CAPACITY:
                body["retry"] = True
        else:
            if not offer.holds:  # a task it holds takes no new slot
                self._reserve(cfp.auction_id, cfp.share)
            kind, body = "bid", {"auction_id": cfp.auction_id, **offer.as_dict()}
        node.metrics.bids[capability.name, kind] += 1
        bidding.set_attribute("agoramesh.decision", kind)
        if node.trajectory is not None:
            node.trajectory.decided(kind, capability=capability.name, **body)
        try:
            await node.bus.publish(cfp.reply, kind, body, to=cfp.initiator, cid=cfp.cid,
                                   traced=False)
        except AgoraError as exc:  # the initiator will not hear from us; its window closes
            node.log.debug("%s for %s not sent: %s", kind, cfp.auction_id, exc,
                           extra={"auction_id": cfp.auction_id})

    async def _on_award(self, delivery: Delivery) -> None:
        """Decline, or run the task (traced as an ``agoramesh.award`` span on this side, a
        child of the initiator's, with the leases and the execution inside)."""
        with span("agoramesh.award", SpanKind.SERVER, parent=delivery.trace_parent,
                  attributes={"agoramesh.agent_id": self.node.agent_id}) as awarded:
            await self._awarded(delivery, awarded)

    async def _awarded(self, delivery: Delivery, awarded: Span) -> None:
        node = self.node
        body = delivery.body if isinstance(delivery.body, dict) else {}
        auction_id = str(body.get("auction_id", ""))
        self._release(auction_id)
        terms = _terms(body)
        try:
            task_body = dict(body["task"])
            lease_interval = max(_MIN_LEASE_INTERVAL, float(body.get("lease_interval", 1.0)))
            if isinstance(terms.get("deadline"), int | float):
                task_body["deadline"] = terms["deadline"]  # the counter-offer we made
            task = Task.from_dict({k: v for k, v in task_body.items() if k != "stream"})
            capability = next(c for c in node.config.capabilities if c.name == task.capability)
        except (KeyError, TypeError, ValueError, StopIteration, AgoraError) as exc:
            self._decided(awarded, "decline", "unknown", auction_id,
                          reason=f"unusable award: {exc}")
            await delivery.respond("decline", {"auction_id": auction_id,
                                               "reason": f"unusable award: {exc}"})
            return
        direct = body.get("direct") is True  # no cfp came first: would we have bid?
        denied = node.check_access(delivery.sender, capability.name, Action.BID) \
            if direct else None
        if denied is None:
            denied = node.check_access(delivery.sender, capability.name, Action.EXECUTE)
        holds = node.memory.holds(task) if denied is None else ""
        reason = str(denied) if denied is not None else (
            None if holds else _too_late(delivery.envelope)
            or (self._unbid(task, capability, terms) if direct
                else self.strategy.accept(node, task, terms)))
        if reason is not None:
            self._decided(awarded, "decline", capability.name, auction_id, reason=reason)
            decline: dict[str, Any] = {"auction_id": auction_id, "reason": reason}
            if reason in (AT_CAPACITY, AWARD_TOO_LATE):
                decline["retry"] = True
            await delivery.respond("decline", decline)
            return
        self._decided(awarded, "accept", capability.name, auction_id, task_id=task.task_id,
                      **({"holds": holds} if holds else {}))
        # Leases start once the result is not instant: a timer until then, not a task
        # (most results are instant, and a task created and cancelled costs more).
        leases: list[asyncio.Future[None]] = []
        timer = asyncio.get_running_loop().call_later(
            ACCEPT_WINDOW, lambda: leases.append(asyncio.ensure_future(
                self._leases(delivery, auction_id, task.task_id, lease_interval))))
        # Without the award's traceparent the execution is a child of our award span.
        award = delivery.envelope._replace(traceparent="") if delivery.envelope else None
        try:
            await node.serve(Delivery(delivery.bus, delivery.msg, award, task_body),
                             capability, durable=body.get("durable") is True)
        finally:
            timer.cancel()
            for lease in leases:
                lease.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lease

    def _unbid(self, task: Task, capability: Capability, terms: dict[str, Any]) -> str | None:
        """Why a direct award (no cfp came first) is declined: what the cfp would have
        been refused for, or terms that a bid would have countered; None to take it."""
        node = self.node
        try:
            offer = self.strategy.quote(node, task, capability, terms, self.reserved)
        except AgoraError as exc:
            return f"unusable award: {exc}"
        if isinstance(offer, str):
            return offer
        if offer.counter:
            return f"{COUNTER_OFFER}: {', '.join(sorted(offer.counter))}"
        return self.strategy.accept(node, task, terms)

    def _decided(self, awarded: Span, decision: str, capability: str, auction_id: str,
                 **fields: Any) -> None:
        node = self.node
        node.metrics.awards[capability, decision] += 1
        awarded.set_attribute("agoramesh.decision", decision)
        if node.trajectory is not None:
            node.trajectory.decided(decision, capability=capability, auction_id=auction_id,
                                    **fields)

    async def _leases(self, delivery: Delivery, auction_id: str, task_id: str,
                      interval: float) -> None:
        """``accept`` (the result was not instant), then a ``lease`` per interval."""
        body = {"auction_id": auction_id, "task_id": task_id}
        kind = "accept"
        with span("agoramesh.lease", SpanKind.PRODUCER, errors=False,
                  attributes={"agoramesh.task_id": task_id}) as leasing:
            while True:
                try:
                    await delivery.respond(kind, body)
                except AgoraError as exc:  # reconnecting: the next lease may get through
                    self.node.log.debug("lease for %s not sent: %s", task_id, exc,
                                        extra={"task_id": task_id})
                leasing.add_event(kind)
                kind = "lease"
                await asyncio.sleep(interval)


def _too_late(award: Envelope | None) -> str | None:
    """:data:`AWARD_TOO_LATE` for an award about to expire (by its sender's clock): less
    than :data:`LATE_AWARD_MS`, or a quarter of a shorter lifetime, left."""
    if award is None:
        return None
    margin = min(LATE_AWARD_MS, (award.exp - award.ts) // 4)
    return AWARD_TOO_LATE if award.exp - now_ms() < margin else None


@dataclass(frozen=True, slots=True)
class _Cfp:
    """A call for proposals, parsed once for every local agent that answers it."""

    envelope: Envelope  # admitted unverified: confirmed before acting for a policy
    auction_id: str
    reply: str
    initiator: str
    cid: str
    task: Task | None
    problem: str
    terms: dict[str, Any]
    exclude: frozenset[str]
    share: float  # of a slot a bid reserves: 1 / expected bidders
    request_size: int | None  # of the parameters as JSON; None: no bidder prices by size

    @classmethod
    def parse(cls, delivery: Delivery, capability: str, *, priced: bool) -> _Cfp | None:
        """``priced``: some bidder charges per token, so measure the request once here."""
        body = delivery.body if isinstance(delivery.body, dict) else {}
        auction_id, exclude = body.get("auction_id"), body.get("exclude") or []
        if delivery.envelope is None or not isinstance(auction_id, str) or \
                not isinstance(exclude, list):
            return None  # nothing to answer to
        task: Task | None = None
        problem = ""
        try:
            task = Task.from_dict(body.get("task"), capability=capability)
        except AgoraError as exc:
            problem = str(exc)
        bidders = body.get("bidders")
        return cls(envelope=delivery.envelope, auction_id=auction_id, reply=delivery.msg.reply,
                   initiator=delivery.envelope.sender, cid=delivery.envelope.cid, task=task,
                   problem=problem, terms=_terms(body), exclude=frozenset(map(str, exclude)),
                   share=1.0 / bidders if isinstance(bidders, int) and bidders > 1 else 1.0,
                   request_size=_size(task) if priced and task is not None else None)


class _BidDesk:
    """One cfp subscription per capability for all the agents sharing a directory.

    Agents hosted in one process receive a cfp once instead of once each:
    it is parsed once, then every local agent offering the capability bids,
    each signing with its own identity and sending on its own connection.
    """

    def __init__(self) -> None:
        #: capability -> {id(bidder): (bidder, capability)}, in joining order.
        self.members: dict[str, dict[int, tuple[Bidder, Capability]]] = {}
        self.subscriptions: dict[str, tuple[Bidder, Subscription]] = {}
        self._lock = asyncio.Lock()

    async def join(self, bidder: Bidder, capability: Capability) -> None:
        async with self._lock:
            self.members.setdefault(capability.name, {})[id(bidder)] = (bidder, capability)
            if capability.name not in self.subscriptions:
                await self._subscribe(bidder, capability.name)

    async def leave(self, bidder: Bidder, name: str) -> None:
        async with self._lock:
            members = self.members.get(name, {})
            members.pop(id(bidder), None)
            owner, subscription = self.subscriptions.get(name, (None, None))
            if owner is not bidder or subscription is None:
                return
            del self.subscriptions[name]
            if members:  # hand the subscription over before dropping ours: no cfp missed
                heir = next(iter(members.values()))[0]
                await self._subscribe(heir, name)
                await heir.node.bus.confirm()
            else:
                del self.members[name]
            await subscription.stop(1.0)

    async def _subscribe(self, bidder: Bidder, name: str) -> None:
        bus = bidder.node.bus

        async def handle(delivery: Delivery) -> None:
            if delivery.type == "cfp":
                members = list(self.members.get(name, {}).values())
                cfp = _Cfp.parse(delivery, name,
                                 priced=any(capability.cost_per_token for _, capability in members))
                if cfp is not None:
                    for member, capability in members:
                        try:
                            await member.answer(cfp, capability)
                        except Exception:  # one agent's broken strategy must not silence the rest
                            log.exception("agent %s could not answer a cfp",
                                          member.node.config.name)
            elif delivery.type == "reject" and isinstance(delivery.body, dict):
                auction_id = str(delivery.body.get("auction_id"))
                for member, _ in list(self.members.get(name, {}).values()):
                    member.released(auction_id)

        # Confirmed with the rest of the agent's subscriptions (BaseNode.start), or below.
        self.subscriptions[name] = (bidder, await bus.subscribe(bus.subjects.cfp(name), handle,
                                                                 verify=False, confirm=False))


_DESKS: weakref.WeakKeyDictionary[Directory, _BidDesk] = weakref.WeakKeyDictionary()


def _desk_for(directory: Directory) -> _BidDesk:
    """The desk of the agents sharing ``directory`` (one process's view of the mesh)."""
    desk = _DESKS.get(directory)
    if desk is None:
        desk = _DESKS[directory] = _BidDesk()
    return desk
