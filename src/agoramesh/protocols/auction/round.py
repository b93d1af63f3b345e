"""One task's auction as the initiator holds it: the rounds' answers and the winner's messages.

:class:`Auction` is the state the :class:`~agoramesh.protocols.auction.auctioneer.Auctioneer`
routes its inbox to; its answer types are what a round collects. Answers are parsed
here but verified only when acted on (docs/ARCHITECTURE.md), and what comes on the
award's inbox is passed on only if it answers an award (docs/PROTOCOL.md §16).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import Envelope
from agoramesh.errors import EnvelopeError, InvalidBid, NoBidders, Overloaded
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.protocols.auction.report import AuctionTrail
from agoramesh.protocols.auction.scoring import HOLDS, Bid, rank

__all__ = ("Answer", "Auction", "Declined", "Late", "Lost", "Offer", "busy")

log = logging.getLogger("agoramesh.auction")

#: Refusal and decline reasons of a busy agent that did not say ``retry`` (older agents).
_BUSY_REASONS = ("at capacity", "agent is busy")
#: Bids kept per auction round, and answers of known bidders: a flood of (unverified)
#: answers cannot grow memory unbounded.
_MAX_OFFERS = 1024

@dataclass(slots=True, kw_only=True)
class Answer:
    """A bid or refusal; its signature is checked once, and only when it matters."""

    #: None only for the initiator's own pick of a direct award: nothing was received.
    envelope: Envelope | None
    verified: bool | None = None  # None: not checked; False: forged or replayed, dropped


@dataclass(slots=True, kw_only=True)
class Offer(Answer):
    """A usable bid."""

    bid: Bid

    @classmethod
    def direct(cls, agent_id: str) -> Offer:
        """The one agent known to offer a capability, awarded without a call for
        proposals (PROTOCOL.md §16, direct awards): no bid was sent, none to verify."""
        return cls(envelope=None, verified=True, bid=Bid(agent_id=agent_id))


class Lost(Exception):
    """The winner went silent or left; re-auction without it."""


class Declined(Exception):
    """The winner declined (or was never reachable); ``busy``: it was at capacity."""

    def __init__(self, busy: bool = False) -> None:
        super().__init__()
        self.busy = busy


def busy(body: Any) -> bool:
    """True for a refusal or decline that says the agent is only busy (retry later)."""
    if not isinstance(body, dict):
        return False
    return body.get("retry") is True or str(body.get("reason", "")) in _BUSY_REASONS


@dataclass(frozen=True, slots=True)
class Late:
    """A COMPLETED result from a winner given up on earlier, which came first."""

    result: TaskResult
    winner: str
    stored: bool


class Auction:
    """The state of one task's auctions; messages arrive on ``<inbox>.<key>.<kind>``."""

    def __init__(self, bus: Bus, task: Task, inbox: str) -> None:
        self.bus = bus
        self.task = task
        self.id = uuid.uuid4().hex
        self.inbox = f"{inbox}.{self.id[:16]}"
        # This round's bids (from anyone), and answers of the known bidders (bids and
        # refusals, in arrival order): what a distrustful window counts again.
        self.offers: list[Offer] = []
        self.answers: list[Answer] = []
        self.known: frozenset[str] = frozenset()  # the bidders whose answers close the window
        self.answered: set[str] = set()
        self.distrustful = False  # count only verified answers: a forgery closed the window
        self.enough = asyncio.Event()
        self.attempt = 0
        self.winner: str | None = None
        self.award_cid = ""
        self.awards: dict[str, tuple[str, str]] = {}  # award cid -> (inbox kind, winner)
        # The current winner's messages, a new queue per award; None: it left the directory.
        self.winner_messages: asyncio.Queue[Envelope | None]
        self.duplicates = 0
        self.closed_bidding = False
        self.refused_counters = 0
        self.bids_received = 0
        self.busy_refusals = 0  # this round's refusals by known agents that were at capacity
        self.late: Late | None = None
        self.cancelled = False
        #: Asked before the first award, and again after a winner was lost: False calls
        #: the auction off (a durable job found stored meanwhile).
        self.go_ahead: Callable[[], Awaitable[bool]] | None = None
        self.ask_go_ahead = True
        self.go_ahead_each = False  # asked before every award, not only the first
        self.went_ahead_at = 0.0  # loop time go_ahead last said yes
        self.lost: list[str] = []  # winners given up on (silent), told to stop at the end
        self.called_at = 0.0  # loop time of this round's call for proposals
        #: Stops the run at once (a late result came first, or a cancel): set by run().
        self.interrupt: Callable[[], object] = lambda: None
        self.trail = AuctionTrail()  # what it reports when it ends

    def open_round(self, attempt: int, known: Iterable[str]) -> None:
        self.attempt, self.known = attempt, frozenset(known)
        self.offers, self.answers, self.answered = [], [], set()
        self.closed_bidding = self.distrustful = False
        self.busy_refusals = 0
        self.enough.clear()

    def open_direct(self, attempt: int, agent_id: str) -> list[Offer]:
        """A round without a call for proposals: ``agent_id`` is awarded directly."""
        self.open_round(attempt, (agent_id,))
        self.closed_bidding = True  # bids are not asked for: any that come are not ours
        self.called_at = asyncio.get_running_loop().time()
        self.trail.direct(attempt, agent_id)
        return [Offer.direct(agent_id)]

    @property
    def silent(self) -> frozenset[str]:
        """Known capable agents that have not answered this round."""
        return self.known - self.answered

    def on_message(self, kind: str, data: bytes, subject: str, reply: str) -> None:
        """A message on ``<inbox>.<key>.<kind>``: a round's answer or the winner's."""
        try:
            # Verified later, and only what the auction acts on (docs/ARCHITECTURE.md).
            envelope = self.bus.guard.admit(data, subject, reply, verify=False)
        except EnvelopeError:
            return  # counted by the guard
        self.bus.saw(envelope)
        if kind == f"b{self.attempt}":
            self._on_bid(envelope)
        elif kind.startswith("w"):
            self._on_winner_message(kind, envelope)

    def _on_bid(self, envelope: Envelope) -> None:
        sender = envelope.sender
        body = envelope.body if isinstance(envelope.body, dict) else {}
        if self.closed_bidding or body.get("auction_id") != self.id:
            return
        # Not deduplicated by sender: unverified, a bid claiming an agent's id may be a
        # forgery sent to crowd out that agent's real bid; verify() sorts them out.
        answer: Answer | None = None
        if envelope.type == "bid" and len(self.offers) < _MAX_OFFERS:
            self.bids_received += 1
            try:
                offer = Offer(envelope=envelope, bid=Bid.from_dict(body, agent_id=sender))
            except InvalidBid as exc:
                log.info("unusable bid from %s: %s", sender[:8], exc)
            else:
                self.offers.append(offer)
                answer = offer
        if sender in self.known and envelope.type in ("bid", "refuse") and \
                len(self.answers) < _MAX_OFFERS:
            answer = answer or Answer(envelope=envelope)
            self.answers.append(answer)
            if envelope.type == "refuse" and busy(body):
                self.busy_refusals += 1
            self._count(answer)

    def _count(self, answer: Answer) -> None:
        """Count a known bidder's answer towards the early close (verified if distrustful)."""
        assert answer.envelope is not None  # answers are received
        sender = answer.envelope.sender
        if sender in self.answered or (self.distrustful and not self.verify(answer)):
            return
        self.answered.add(sender)
        if len(self.answered) >= len(self.known):
            self.enough.set()

    def verify(self, answer: Answer) -> bool:
        """Finish the answer's admission, once: False if forged or replayed (counted)."""
        if answer.verified is None:
            assert answer.envelope is not None  # only an offer picked directly has none
            try:
                self.bus.guard.confirm(answer.envelope)
            except EnvelopeError:
                answer.verified = False
            else:
                answer.verified = True
        return answer.verified

    def distrust(self) -> None:
        """Reopen the window; from now on only answers that verify count towards closing it.

        The answers already in count again if they verify: one verification per known
        bidder, more only for forgeries.
        """
        self.distrustful, self.closed_bidding = True, False
        self.answered = set()
        self.enough.clear()
        for answer in self.answers:
            if answer.verified is not False:
                self._count(answer)
        self.answers = [answer for answer in self.answers if answer.verified is not False]
        self.offers = [offer for offer in self.offers if offer.verified is not False]

    def awarded(self, winner: str, cid: str) -> None:
        """An award goes out: from now on the messages that answer it are ``winner``'s."""
        self.winner, self.award_cid = winner, cid
        self.awards[cid] = (f"w{self.attempt}", winner)
        self.winner_messages = asyncio.Queue()

    def _on_winner_message(self, kind: str, envelope: Envelope) -> None:
        """Pass the current winner's answer on; count a former winner's late result.

        An answer to an award carries the award's cid and comes from its winner on the
        award's inbox. Anything else is dropped unverified: above all an ``error`` that
        the winner (or anyone) sends to the inbox because junk named it as a reply subject
        (PROTOCOL.md §9: such an error has its own cid), which is no decline.
        """
        current = (envelope.cid == self.award_cid and envelope.sender == self.winner
                   and kind == f"w{self.attempt}")
        if not current and self.awards.get(envelope.cid) != (kind, envelope.sender):
            log.debug("ignored %s from %s on %s: it answers no award", envelope.type,
                      envelope.sender[:8], envelope.subject)
            return
        try:
            self.bus.guard.confirm(envelope)
        except EnvelopeError:
            return  # counted by the guard
        if current:
            self.winner_messages.put_nowait(envelope)
        elif envelope.type == "task_response":
            self._former_winner_result(envelope)

    def _former_winner_result(self, envelope: Envelope) -> None:
        """A winner given up on finished after all: its COMPLETED result wins if it is first."""
        body = envelope.body if isinstance(envelope.body, dict) else {}
        try:
            result = TaskResult.from_dict(body)
        except (KeyError, TypeError, ValueError):
            result = None
        if (result is None or result.status is not TaskStatus.COMPLETED
                or result.task_id != self.task.task_id or self.late is not None):
            self.duplicates += 1  # dropped: a failure, another task, or one came already
            return
        self.late = Late(result=result, winner=envelope.sender,
                         stored=body.get("stored") is True)
        self.interrupt()


    def terms(self, policy: AuctionPolicy) -> dict[str, Any]:
        """The terms asked of bidders (and of a direct award's agent)."""
        terms: dict[str, Any] = {}
        if self.task.deadline is not None:
            terms["deadline"] = self.task.deadline
        if policy.max_cost_usd is not None:
            terms["max_cost_usd"] = policy.max_cost_usd
        return terms

    def cfp_body(self, policy: AuctionPolicy, excluded: set[str]) -> dict[str, Any]:
        return {"auction_id": self.id, "task": self.task.as_dict(), "terms": self.terms(policy),
                "exclude": sorted(excluded), "bidders": len(self.known)}

    async def collect(self, deadline: float) -> bool:
        """Take answers until every known bidder answered or ``deadline``; True: the former."""
        try:
            async with asyncio.timeout_at(deadline):
                await self.enough.wait()
        except TimeoutError:
            return False
        finally:
            self.closed_bidding = True
        return True

    def ranked(self, policy: AuctionPolicy, excluded: set[str],
               notify: Callable[[Progress], None]) -> list[Offer]:
        """This round's usable bids, best first, counter-offers after."""
        offers = [offer for offer in self.offers
                  if offer.bid.agent_id not in excluded and offer.verified is not False]
        plain = [offer for offer in offers if not offer.bid.is_counter_offer]
        counters = [offer for offer in offers if offer.bid.is_counter_offer]
        self.refused_counters = 0 if policy.accept_counter_offers else len(counters)
        if not policy.accept_counter_offers:
            counters = []
        by_bid = {id(offer.bid): offer for offer in offers}
        scores: dict[int, float] = {}
        ranked = []
        for group in (plain, counters):
            for score, bid in rank([offer.bid for offer in group], policy.scorer, salt=self.id):
                scores[id(bid)] = score
                ranked.append(by_bid[id(bid)])
        # An agent that already holds the task (running, or done) is awarded first: no
        # second execution. Stable, so the scorer's order stands among the rest.
        ranked.sort(key=lambda offer: HOLDS.index(offer.bid.holds) if offer.bid.holds
                    else len(HOLDS))
        self.trail.scored(self.attempt, [(offer.bid, scores[id(offer.bid)]) for offer in ranked])
        notify(Progress("bids", self.task.task_id, {
            "attempt": self.attempt, "bids": len(offers), "answered": len(self.answered),
            "ranking": [offer.bid.agent_id for offer in ranked]}))
        return ranked

    def nobody(self, bid_window: float, patience: float) -> Exception:
        """The error of a round that found no bid and may not be called again."""
        task = self.task
        if self.busy_refusals:
            return Overloaded(f"every agent offering {task.capability} was at capacity for "
                              f"{patience:g}s; try again later")
        if self.known:
            return NoBidders(f"no agent bid for {task.capability} within "
                             f"{bid_window:g}s ({len(self.known)} known to "
                             f"offer it did not answer)")
        return NoBidders(f"no agent offers {task.capability}: none is known here and none "
                         f"answered within {bid_window:g}s")
