"""Task allocation among teammates over the mesh: announce, bid, allocate, award.

One agent, the *initiator*, negotiates a set of tasks (PROTOCOL.md §19):

1. it announces the open tasks (``task_negotiation``, action ``announce``)
   to the team by the configured protocol;
2. every teammate's :class:`Negotiator` answers on the runtime's loop, even
   while its agent's thread is busy, with one direct message of action
   ``bid`` listing a bid per task it can do — ``bid_value`` (its
   suitability), ``capabilities`` and ``estimated_time`` (steps) — or, past
   its capacity in a later round, a ``counter_offer``;
3. with every live teammate's answer or at ``timeout``, the initiator
   allocates by the configured strategy
   (:func:`~agoramesh.protocols.allocation.strategies.allocate` with per-task bids:
   ``auction_based`` best bid, ``priority_based`` agents' turns,
   ``consensus`` a ballot per task put to every teammate over the bus);
   tasks left over go to the next round, up to ``negotiation_rounds``;
4. it awards: each teammate gets ``accept`` (with its tasks) or ``reject``,
   both carrying the whole allocation, which every agent commits.

Every agent thus holds the same allocation, and ``negotiate_task_allocation``
on the same tasks answers from it without negotiating again. Two initiators
of the same tasks (agents in different processes) are settled by
:func:`~agoramesh.protocols.allocation.strategies.resolve_conflict`: the earlier
decision wins, then the lower initiator id. A later negotiation of some of
the tasks (one given up, or whose agent was lost) overrides their owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agoramesh.errors import AgoraError, InvalidAllocation, InvalidBid
from agoramesh.modes.decentralized.communication import CommunicationManager, make_message
from agoramesh.protocols.allocation.negotiation import resolve_conflict
from agoramesh.protocols.allocation.strategies import (
    AgentProfile,
    NegotiationStrategy,
    TaskSpec,
    allocate,
    consensus_allocation,
    normalize_tasks,
)
from agoramesh.protocols.auction.scoring import Bid

__all__ = ("Commitment", "Negotiator", "Offer", "bid_of", "negotiation_id")

log = logging.getLogger("agoramesh.decentralized")

NEGOTIATION = "task_negotiation"

#: ``(profile, bids)`` for the tasks of one round: the agent's side of a negotiation.
Offer = tuple[AgentProfile, list[dict[str, Any]]]
Bidder = Callable[[Sequence[TaskSpec], int], Offer]


@dataclass(frozen=True, kw_only=True)
class Commitment:
    """One negotiation's outcome, as every teammate commits it."""

    negotiation_id: str
    initiator: str
    decided_at: float
    strategy: str
    rounds: int
    tasks: tuple[str, ...]
    assignments: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"negotiation_id": self.negotiation_id, "initiator": self.initiator,
                "decided_at": self.decided_at, "strategy": self.strategy,
                "rounds": self.rounds, "tasks": list(self.tasks),
                "assignments": dict(self.assignments), "reasons": dict(self.reasons),
                "scores": dict(self.scores)}

    @classmethod
    def from_dict(cls, data: Any) -> Commitment:
        if not isinstance(data, Mapping):
            raise InvalidAllocation("an allocation must be an object")
        try:
            tasks = tuple(str(t) for t in data["tasks"])
            assignments = {str(k): str(v) for k, v in dict(data["assignments"]).items()}
            return cls(negotiation_id=str(data["negotiation_id"]),
                       initiator=str(data["initiator"]),
                       decided_at=float(data["decided_at"]), strategy=str(data["strategy"]),
                       rounds=int(data["rounds"]), tasks=tasks, assignments=assignments,
                       reasons={str(k): str(v) for k, v in dict(data.get("reasons", {})).items()},
                       scores={str(k): float(v)
                               for k, v in dict(data.get("scores", {})).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAllocation(f"unusable allocation: {exc}") from None


def negotiation_id(team: str, specs: Sequence[TaskSpec]) -> str:
    """The same for every agent negotiating the same tasks in one team."""
    key = sorted((s.task_id, s.capability, json.dumps(s.source.get("location")))
                 for s in specs)
    return hashlib.blake2b(json.dumps([team, key]).encode(), digest_size=8).hexdigest()


def bid_of(sim_id: str, profile: AgentProfile, bid: Mapping[str, Any]) -> Bid:
    """A wire bid as the scorer sees it: one step of estimated time is one second."""
    steps = bid.get("estimated_time", 0)
    if isinstance(steps, bool) or not isinstance(steps, int | float) or not steps >= 0:
        raise InvalidBid(f"estimated_time must be a non-negative number, got {steps!r:.40}")
    return Bid(agent_id=sim_id, load=profile.load, latency_ms=float(steps) * 1000.0,
               success_rate=profile.success_rate, capacity=profile.capacity,
               in_flight=profile.in_flight, priority=profile.priority,
               counter={"deadline": float(steps)} if bid.get("action") == "counter_offer"
               else {})


class Negotiator:
    """One agent's side of every negotiation: initiating, bidding, committing."""

    def __init__(self, comm: CommunicationManager, bidder: Bidder, *,
                 strategy: NegotiationStrategy, rounds: int) -> None:
        self.comm = comm
        self.bidder = bidder
        self.strategy = strategy
        self.max_rounds = rounds
        self.commitments: dict[str, Commitment] = {}
        #: Counters: negotiations and rounds initiated, bids sent, conflicts settled.
        self.counts: dict[str, int] = {"negotiations": 0, "rounds": 0, "bids_sent": 0,
                                       "conflicts": 0, "awards_received": 0}
        self._lock = threading.Lock()
        self._collecting: dict[tuple[str, int], dict[str, Offer]] = {}
        self._arrived: dict[tuple[str, int], asyncio.Event] = {}
        self._background: set[asyncio.Task[None]] = set()
        comm.hooks.append(self._on_message)

    @property
    def me(self) -> str:
        return self.comm.sim_id

    # -- the agent's view ----------------------------------------------------------

    def owners(self) -> dict[str, str]:
        """Task id → agent, over every commitment (later decisions win per task)."""
        with self._lock:
            ordered = sorted(self.commitments.values(), key=lambda c: c.decided_at)
        owners: dict[str, str] = {}
        for commitment in ordered:
            for task in commitment.tasks:
                owners.pop(task, None)
            owners.update(commitment.assignments)
        return owners

    def answer(self, specs: Sequence[TaskSpec], commitment: Commitment) -> dict[str, Any]:
        """This agent's ``{accepted_tasks, rejected_tasks, proposals}`` (M-7's answer to
        ``negotiate_task_allocation``), with the allocation it comes from."""
        accepted, rejected, proposals = [], [], []
        for spec in specs:
            owner = commitment.assignments.get(spec.task_id)
            if owner == self.me:
                accepted.append(spec.wire_id)
                continue
            rejected.append(spec.wire_id)
            if owner is not None:
                proposals.append({"task_id": spec.wire_id, "agent_id": owner,
                                  "reason": f"{owner} is allocated it: "
                                            f"{commitment.reasons.get(spec.task_id, '')}",
                                  "score": round(commitment.scores.get(spec.task_id, 0.0), 4)})
        return {"accepted_tasks": accepted, "rejected_tasks": rejected, "proposals": proposals,
                "negotiation_id": commitment.negotiation_id, "strategy": commitment.strategy,
                "rounds": commitment.rounds, "initiator": commitment.initiator,
                "allocation": dict(commitment.assignments),
                "unassigned": [s.wire_id for s in specs
                               if s.task_id not in commitment.assignments]}

    def negotiate(self, tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Allocate ``tasks`` among the team (module docstring); this agent's answer."""
        specs = normalize_tasks(tasks)
        if not specs:
            return {"accepted_tasks": [], "rejected_tasks": [], "proposals": [],
                    "allocation": {}, "unassigned": [], "rounds": 0}
        nid = negotiation_id(self.comm.runtime.team, specs)
        with self._lock:
            known = self.commitments.get(nid)
        if known is None:
            settings = self.comm.settings
            bound = (settings.timeout * (settings.retry_attempts + 2) * 3 + 2.0) * self.max_rounds
            known = self.comm.runtime.call(self._negotiate(specs, nid), bound)
        return self.answer(specs, known)

    async def aclose(self) -> None:
        """Cancel bids still being sent (on the loop); bounded."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)

    def reset(self) -> None:
        with self._lock:
            self.commitments.clear()
            self._collecting.clear()
            self._arrived.clear()
        for key in self.counts:
            self.counts[key] = 0

    # -- initiating (on the loop) ----------------------------------------------------

    async def _negotiate(self, specs: Sequence[TaskSpec], nid: str) -> Commitment:
        self.counts["negotiations"] += 1
        open_specs = list(specs)
        assignments: dict[str, str] = {}
        reasons: dict[str, str] = {}
        scores: dict[str, float] = {}
        rounds = 0
        for round_ in range(1, self.max_rounds + 1):
            rounds = round_
            self.counts["rounds"] += 1
            offers = await self._collect_offers(nid, round_, open_specs)
            allocation = await self._allocate(open_specs, offers)
            assignments.update(allocation.assignments)
            scores.update(allocation.scores)
            reasons.update(allocation.reasons)
            open_specs = [s for s in open_specs if s.task_id not in allocation.assignments]
            if not open_specs:
                break
        commitment = Commitment(
            negotiation_id=nid, initiator=self.me, decided_at=time.time(),
            strategy=str(self.strategy), rounds=rounds, tasks=tuple(s.task_id for s in specs),
            assignments=assignments, reasons=reasons, scores=scores)
        self._commit(commitment)
        await self._award(commitment)
        with self._lock:
            return self.commitments[nid]

    async def _collect_offers(self, nid: str, round_: int,
                              specs: Sequence[TaskSpec]) -> dict[str, Offer]:
        key = (nid, round_)
        peers = self.comm.peers
        offers: dict[str, Offer] = {self.me: self.bidder(specs, round_)}
        self._collecting[key] = offers
        arrived = self._arrived[key] = asyncio.Event()
        try:
            announce = make_message(self.me, "broadcast", NEGOTIATION, {
                "action": "announce", "negotiation_id": nid, "round": round_,
                "strategy": str(self.strategy), "initiator": self.me,
                "tasks": [s.as_dict() for s in specs]})
            if peers:
                self.comm.record("sent", announce)
                await self.comm.broadcast_coro(announce, peers)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.comm.settings.timeout):
                        while not set(peers) <= set(offers):
                            arrived.clear()
                            await arrived.wait()
        finally:
            self._collecting.pop(key, None)
            self._arrived.pop(key, None)
        return offers

    async def _allocate(self, specs: Sequence[TaskSpec], offers: Mapping[str, Offer]) -> Any:
        profiles = [profile for profile, _ in offers.values()]
        task_bids: dict[str, dict[str, Bid]] = {s.task_id: {} for s in specs}
        for sim_id, (profile, bids) in offers.items():
            for bid in bids:
                task = str(bid.get("task_id"))
                if task in task_bids:
                    task_bids[task][sim_id] = bid_of(sim_id, profile, bid)
        if self.strategy is NegotiationStrategy.CONSENSUS:
            voters = [self.comm.member.agent_id, *(
                mate.agent_id for mate in self.comm.member.live_teammates
                if mate.sim_id in offers)]
            assert self.comm.member.bus is not None
            return await consensus_allocation(
                self.comm.member.bus, specs, profiles, voters,
                timeout=self.comm.settings.timeout, task_bids=task_bids)
        return allocate(specs, profiles, self.strategy, task_bids=task_bids)

    async def _award(self, commitment: Commitment) -> None:
        body = commitment.as_dict()
        sends = []
        for peer in self.comm.peers:
            mine = [t for t, owner in commitment.assignments.items() if owner == peer]
            award = make_message(self.me, peer, NEGOTIATION, {
                "action": "accept" if mine else "reject",
                "negotiation_id": commitment.negotiation_id, "tasks": mine, "allocation": body})
            self.comm.record("sent", award)
            sends.append(self.comm.member.send(peer, award))
        results = await asyncio.gather(*sends)
        if not all(results):
            log.warning("%s: %d teammate(s) missed the award of %s", self.me,
                        results.count(False), commitment.negotiation_id)

    # -- answering (on the loop) -----------------------------------------------------

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("message_type") != NEGOTIATION:
            return
        content = message["content"]
        action = content.get("action")
        sender = str(message.get("sender_id"))
        if action == "announce":
            self._spawn(self._bid(sender, content))
        elif action in ("bid", "counter_offer"):
            self._take_offer(sender, content)
        elif action in ("accept", "reject") and "allocation" in content:
            try:
                commitment = Commitment.from_dict(content["allocation"])
            except InvalidAllocation as exc:
                log.info("%s: ignored an award from %s: %s", self.me, sender, exc)
                return
            if commitment.initiator != sender:
                log.info("%s: ignored an award for %s relayed by %s", self.me,
                         commitment.initiator, sender)
                return
            self.counts["awards_received"] += 1
            self._commit(commitment)

    async def _bid(self, initiator: str, content: Mapping[str, Any]) -> None:
        try:
            specs = normalize_tasks(content.get("tasks") or [])
            round_ = int(content.get("round", 1))
            nid = str(content["negotiation_id"])
        except (AgoraError, KeyError, TypeError, ValueError) as exc:
            log.info("%s: unusable announce from %s: %s", self.me, initiator, exc)
            return
        profile, bids = self.bidder(specs, round_)
        self.counts["bids_sent"] += 1
        answer = make_message(self.me, initiator, NEGOTIATION, {
            "action": "bid", "negotiation_id": nid, "round": round_, "bids": bids,
            "profile": {"capabilities": list(profile.capabilities),
                        "capacity": profile.capacity, "in_flight": profile.in_flight,
                        "load": profile.load, "priority": profile.priority,
                        "success_rate": profile.success_rate}})
        self.comm.record("sent", answer)
        await self.comm.member.send(initiator, answer)

    def _take_offer(self, sender: str, content: Mapping[str, Any]) -> None:
        round_ = content.get("round")
        if isinstance(round_, bool) or not isinstance(round_, int):
            return
        key = (str(content.get("negotiation_id")), round_)
        offers = self._collecting.get(key)
        if offers is None:
            return  # late, or not ours
        raw, bids = content.get("profile"), content.get("bids")
        try:
            if not isinstance(raw, Mapping) or not isinstance(bids, list):
                raise InvalidBid("a bid needs a profile and a list of bids")
            profile = AgentProfile(
                agent_id=sender, capabilities=tuple(raw.get("capabilities", ())),
                capacity=int(raw.get("capacity", 1)), in_flight=int(raw.get("in_flight", 0)),
                load=float(raw.get("load", 0.0)), priority=int(raw.get("priority", 0)),
                success_rate=float(raw.get("success_rate", 1.0)))
            for bid in bids:
                if not isinstance(bid, Mapping):
                    raise InvalidBid("each bid must be an object")
                bid_of(sender, profile, bid)
        except (AgoraError, TypeError, ValueError) as exc:
            log.info("%s: unusable bid from %s: %s", self.me, sender, exc)
            return
        offers[sender] = (profile, [dict(b) for b in bids])
        self._arrived[key].set()

    def _commit(self, commitment: Commitment) -> None:
        with self._lock:
            known = self.commitments.get(commitment.negotiation_id)
            if known is not None and known.initiator != commitment.initiator:
                self.counts["conflicts"] += 1
                verdict = resolve_conflict({"task_id": commitment.negotiation_id, "claims": [
                    {"agent_id": c.initiator, "claimed_at": c.decided_at}
                    for c in (known, commitment)]})
                if verdict["winner"] == known.initiator:
                    return
            self.commitments[commitment.negotiation_id] = commitment

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

