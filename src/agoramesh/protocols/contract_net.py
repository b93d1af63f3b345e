"""Contract net (M-3.1, M-3.3): the auctioneer's side of an auction.

One auction, as the initiator runs it (docs/PROTOCOL.md §16 has the bodies)::

    initiator                                   capable agents
    cfp ──────── agora.cfp.<capability> ──────▶ every agent with the capability
        ◀─────── bid | refuse (to inbox.b) ──── each, within the bid window
    award ────── agora.agent.<winner> ────────▶ the best bid (its signature checked now)
        ◀─────── decline (next bidder) | accept, lease…, task_chunk…, task_response
    reject ───── agora.cfp.<capability> ──────▶ the others (one broadcast)

- The bid window closes early once every agent the directory knows for the
  capability has bid or refused (strangers' answers do not count). Answers are
  parsed but not verified; the best bid is verified when the window closes, and
  only bids about to be awarded after it (docs/ARCHITECTURE.md: verify only what you act
  on). If that check fails (or nobody bid) after an early close, forgeries in
  the known agents' names may have closed it: the window reopens until its
  deadline and from then on counts only answers whose signature verifies.
- Ranking: the pluggable scorer (protocols/scoring.py), bids on the requested
  terms first, then counter-offers the policy accepts.
- The winner answers on the award's reply inbox with the award's ``cid``:
  ``decline`` at once, or the result; if the result is not ready within a few
  milliseconds it sends ``accept`` and then a ``lease`` every ``lease_interval``. Silence for
  ``missed_leases`` intervals, or the winner leaving the directory, loses the
  task: it is re-auctioned without that agent (``max_attempts`` in all), and
  the lost winner is asked to cancel.
- Exactly one result comes back: a ``task_response`` from an earlier winner of
  the auction (one thought lost) is counted in the outcome's ``duplicates`` and
  dropped. Anything else on the inbox that does not answer an award is ignored:
  an ``error`` any agent sends there when junk names the inbox as its reply
  subject (PROTOCOL.md §9) is not the winner declining.
- Every wait has a deadline: the bid window, the award timeout, the lease,
  and ``timeout`` over the whole run (BusTimeout).
- Busy is not absent: a round without bids in which capable agents refused
  because they were at capacity (or declined the award for it), or known
  capable agents did not answer (a link reconnecting), is called again after a
  growing pause (50 ms to 1 s) for up to ``max_wait``; then the run fails with
  ``Overloaded`` (or ``NoBidders`` when nobody answered). ``NoBidders`` at once
  means nobody known offers the capability and nobody answered.
- Nothing that already arrived is ignored: before a wait for the winner ends in
  "declined" or "lost", the initiator reads what its server already delivered
  (a flush round trip), so an initiator that was paused (SIGSTOP, a long GC)
  finds the accept, leases and result sitting in its buffer instead of
  re-awarding. A COMPLETED result from a winner given up on earlier is taken
  as the result when it comes first (the current winner is then cancelled).
- A bid that ``holds`` the task (the agent runs it, or has just finished it:
  a job re-auctioned after its initiator was lost) ranks first, so the work is
  not done twice. A ``durable`` award asks the winner to store its result in
  the result store itself; the outcome says whether it did (``stored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from agoramesh.bus.bus import ERROR_TYPE, Bus
from agoramesh.bus.envelope import Envelope, new_id
from agoramesh.errors import (
    AgoraError,
    AuctionFailed,
    BusTimeout,
    EnvelopeError,
    InvalidInput,
    NoBidders,
    Overloaded,
    TaskCancelled,
)
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.observability.stats import AgentMetrics
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.scoring import HOLDS, Bid, Scorer, rank

__all__ = ("AuctionOutcome", "AuctionPolicy", "Auctioneer", "Progress")

log = logging.getLogger("agoramesh.auction")

#: Failures that say "not here", not "not possible": the task goes to the next auction.
_RETRYABLE = frozenset({Overloaded.__name__, TaskCancelled.__name__})
#: Refusal and decline reasons of a busy agent that did not say ``retry`` (older agents).
_BUSY_REASONS = ("at capacity", "agent is busy")
#: The pause before calling again for proposals when every capable agent was busy:
#: it doubles from the first to the last, each with jitter so waiting auctions spread.
_RETRY_FIRST, _RETRY_LAST = 0.05, 1.0
#: Bids kept per auction round, and answers of known bidders: a flood of (unverified)
#: answers cannot grow memory unbounded.
_MAX_OFFERS = 1024


@dataclass(frozen=True, kw_only=True)
class AuctionPolicy:
    """How an initiator runs auctions. Times are seconds."""

    bid_window: float = 0.5  # the longest wait for bids; closes early when all known answered
    award_timeout: float = 2.0  # for the winner's accept / decline
    lease_interval: float = 1.0  # asked of the winner
    missed_leases: int = 3  # silent intervals before the winner counts as lost
    max_attempts: int = 3  # auctions per task, re-auctions included
    accept_counter_offers: bool = True
    max_cost_usd: float | None = None  # asked of bidders; dearer bids come as counter-offers
    scorer: Scorer | None = None  # None: the seed's weights
    #: How long to keep calling for proposals while every capable agent is busy (or
    #: unreachable) before failing with Overloaded; bounded by the run's timeout.
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        if min(self.bid_window, self.award_timeout, self.lease_interval) <= 0:
            raise InvalidInput("bid_window, award_timeout and lease_interval must be > 0")
        if self.max_wait < 0:
            raise InvalidInput("max_wait must be >= 0")
        if self.missed_leases < 1 or self.max_attempts < 1:
            raise InvalidInput("missed_leases and max_attempts must be >= 1")


@dataclass(frozen=True, slots=True)
class Progress:
    """Something that happened in an auction: ``event`` and its details."""

    event: str  # cfp | bids | waiting | stale | award | declined | accepted | lost | reauction
    #             | chunk | late | result
    task_id: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "task_id": self.task_id, **self.detail}


@dataclass(frozen=True, kw_only=True, slots=True)
class AuctionOutcome:
    result: TaskResult
    winner: str
    bids: tuple[Bid, ...]  # of the auction that was won
    attempts: int  # calls for proposals made
    duplicates: int = 0  # results dropped because one had already arrived
    stored: bool = False  # the winner stored the result itself (a durable award)


@dataclass(slots=True, kw_only=True)
class _Answer:
    """A bid or refusal; its signature is checked once, and only when it matters."""

    envelope: Envelope
    verified: bool | None = None  # None: not checked; False: forged or replayed, dropped


@dataclass(slots=True, kw_only=True)
class _Offer(_Answer):
    """A usable bid."""

    bid: Bid


class _Lost(Exception):
    """The winner went silent or left; re-auction without it."""


class _Declined(Exception):
    """The winner declined (or was never reachable); ``busy``: it was at capacity."""

    def __init__(self, busy: bool = False) -> None:
        super().__init__()
        self.busy = busy


def _busy(body: Any) -> bool:
    """True for a refusal or decline that says the agent is only busy (retry later)."""
    if not isinstance(body, dict):
        return False
    return body.get("retry") is True or str(body.get("reason", "")) in _BUSY_REASONS


@dataclass(frozen=True, slots=True)
class _Late:
    """A COMPLETED result from a winner given up on earlier, which came first."""

    result: TaskResult
    winner: str
    stored: bool


class _Auction:
    """The state of one task's auctions; messages arrive on ``<inbox>.<key>.<kind>``."""

    def __init__(self, bus: Bus, task: Task, inbox: str) -> None:
        self.bus = bus
        self.task = task
        self.id = uuid.uuid4().hex
        self.inbox = f"{inbox}.{self.id[:16]}"
        # This round's bids (from anyone), and answers of the known bidders (bids and
        # refusals, in arrival order): what a distrustful window counts again.
        self.offers: list[_Offer] = []
        self.answers: list[_Answer] = []
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
        self.late: _Late | None = None
        self.cancelled = False
        #: Asked before the first award, and again after a winner was lost: False calls
        #: the auction off (a durable job found stored meanwhile).
        self.go_ahead: Callable[[], Awaitable[bool]] | None = None
        self.ask_go_ahead = True
        self.lost: list[str] = []  # winners given up on (silent), told to stop at the end
        self.called_at = 0.0  # loop time of this round's call for proposals
        #: Stops the run at once (a late result came first, or a cancel): set by run().
        self.interrupt: Callable[[], object] = lambda: None

    def open_round(self, attempt: int, known: Iterable[str]) -> None:
        self.attempt, self.known = attempt, frozenset(known)
        self.offers, self.answers, self.answered = [], [], set()
        self.closed_bidding = self.distrustful = False
        self.busy_refusals = 0
        self.enough.clear()

    @property
    def silent(self) -> frozenset[str]:
        """Known capable agents that have not answered this round."""
        return self.known - self.answered

    def on_message(self, kind: str, msg: Msg) -> None:
        try:
            # Verified later, and only what the auction acts on (docs/ARCHITECTURE.md).
            envelope = self.bus.guard.admit(msg.data, msg.subject, msg.reply, verify=False)
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
        answer: _Answer | None = None
        if envelope.type == "bid" and len(self.offers) < _MAX_OFFERS:
            self.bids_received += 1
            try:
                offer = _Offer(envelope=envelope, bid=Bid.from_dict(body, agent_id=sender))
            except InvalidInput as exc:
                log.info("unusable bid from %s: %s", sender[:8], exc)
            else:
                self.offers.append(offer)
                answer = offer
        if sender in self.known and envelope.type in ("bid", "refuse") and \
                len(self.answers) < _MAX_OFFERS:
            answer = answer or _Answer(envelope=envelope)
            self.answers.append(answer)
            if envelope.type == "refuse" and _busy(body):
                self.busy_refusals += 1
            self._count(answer)

    def _count(self, answer: _Answer) -> None:
        """Count a known bidder's answer towards the early close (verified if distrustful)."""
        sender = answer.envelope.sender
        if sender in self.answered or (self.distrustful and not self.verify(answer)):
            return
        self.answered.add(sender)
        if len(self.answered) >= len(self.known):
            self.enough.set()

    def verify(self, answer: _Answer) -> bool:
        """Finish the answer's admission, once: False if forged or replayed (counted)."""
        if answer.verified is None:
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
        self.late = _Late(result=result, winner=envelope.sender,
                          stored=body.get("stored") is True)
        self.interrupt()


class Auctioneer:
    """Runs contract-net auctions for the tasks of one node or client."""

    def __init__(self, bus: Bus, directory: Directory | None = None, *,
                 policy: AuctionPolicy | None = None,
                 own_card: Callable[[], AgentCard | None] | None = None,
                 metrics: AgentMetrics | None = None,
                 trajectory: Trajectory | None = None) -> None:
        """``metrics``/``trajectory``: where auctions are counted and decisions recorded."""
        self.bus = bus
        self.metrics = metrics or AgentMetrics()
        self.trajectory = trajectory
        self.directory = directory
        self.policy = policy or AuctionPolicy()
        self._own_card = own_card or (lambda: None)
        # One wildcard subscription for every auction of this auctioneer, not one per auction.
        self._inbox = ""
        self._open: dict[str, _Auction] = {}
        self._subscribing = asyncio.Lock()
        self._subscription: NatsSubscription | None = None

    @property
    def _stale_after(self) -> float:
        """Seconds after which a round's bids are too old to award: call again."""
        return max(4.0, 2 * self.policy.award_timeout + self.policy.bid_window)

    def known_bidders(self, capability: str, exclude: Iterable[str] = ()) -> set[str]:
        """Ids of agents known to offer ``capability``: the early-close count."""
        known = set() if self.directory is None else set(self.directory.capable(capability))
        own = self._own_card()
        if own is not None and own.offers(capability):
            known.add(own.id)
        return known.difference(exclude)

    async def start(self, *, confirm: bool = True) -> None:
        """Subscribe the reply inbox now, so its interest has crossed the mesh by the
        first auction (a bid from a far leaf cannot arrive before the interest does).

        ``confirm=False``: the caller's next ``bus.confirm()`` covers it (one flush)."""
        await self._inbox_prefix()
        if confirm:
            await self.bus.flush()

    async def _inbox_prefix(self) -> str:
        if self._inbox and self._subscription_alive():
            return self._inbox
        async with self._subscribing:
            if not (self._inbox and self._subscription_alive()):
                inbox = self.bus.new_inbox()
                self._subscription = await self.bus.subscribe_raw(f"{inbox}.*.*", self._route)
                self._inbox = inbox
        return self._inbox

    def _subscription_alive(self) -> bool:
        # A closed connection takes its subscriptions along; a new one needs a new inbox.
        return self._subscription is not None and not self.bus.nats.is_closed

    async def _route(self, msg: Msg) -> None:
        key, _, kind = msg.subject[len(self._inbox) + 1:].partition(".")
        auction = self._open.get(key)
        if auction is not None:
            auction.on_message(kind, msg)

    async def run(self, task: Task, *, timeout: float = 30.0, exclude: Iterable[str] = (),
                  progress: Callable[[Progress], None] | None = None,
                  stream: bool = False, durable: bool = False,
                  max_wait: float | None = None,
                  go_ahead: Callable[[], Awaitable[bool]] | None = None) -> AuctionOutcome:
        """Auction ``task`` until one agent returns its result.

        Raises NoBidders if nobody bids, Overloaded if every capable agent stayed
        busy for ``max_wait`` (default: the policy's; never past ``timeout``),
        AuctionFailed if every bidder declines or the attempts run out,
        TaskCancelled after :meth:`cancel`, BusTimeout after ``timeout``.
        ``durable``: the winner stores the result in the result store itself.
        ``go_ahead``: called and awaited before the first award, if there is one
        (start its work early: it overlaps the bids), and again before the first
        award after a winner was lost; False stops the run with TaskCancelled
        and nothing more is awarded.
        """
        notify = progress or (lambda _: None)
        started = time.perf_counter()
        auction = _Auction(self.bus, task, await self._inbox_prefix())
        excluded = set(exclude)
        key = auction.id[:16]
        self._open[key] = auction
        self.metrics.auctions_open += 1
        outcome, winner = "failed", None
        patience = self.policy.max_wait if max_wait is None else max_wait
        auction.go_ahead = go_ahead
        runner = asyncio.ensure_future(self._run(auction, excluded, notify, stream, durable,
                                                 min(patience, timeout)))
        auction.interrupt = runner.cancel
        try:
            try:
                async with asyncio.timeout(timeout):
                    won = await runner
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are cancelled ourselves, not interrupted
                won = await self._interrupted(auction, notify)
            outcome, winner = "awarded", won.winner
            return won
        except TimeoutError:
            outcome = "timeout"
            await self._cancel_winner(auction)
            raise BusTimeout(f"no result for task {task.task_id} within {timeout:g}s") from None
        except NoBidders:
            outcome = "no_bidders"
            raise
        except Overloaded:
            outcome = "overloaded"
            raise
        finally:
            if not runner.done():
                runner.cancel()
            # Winners given up on may still be at it: nothing more is wanted of them.
            for lost in auction.lost:
                if lost != winner:
                    await asyncio.shield(self._cancel_lost(lost, task.task_id))
            del self._open[key]
            self.metrics.auctions_open -= 1
            self.metrics.auction_finished(task.task_type, outcome, time.perf_counter() - started,
                                          task_id=task.task_id, bids=auction.bids_received,
                                          winner=winner)

    def cancel(self, task_id: str) -> bool:
        """Stop the auction of ``task_id`` running here (its winner is told to cancel);
        its run raises TaskCancelled. False if no such auction runs here."""
        for auction in self._open.values():
            if auction.task.task_id == task_id and not auction.cancelled:
                auction.cancelled = True
                auction.interrupt()
                return True
        return False

    async def _interrupted(self, auction: _Auction, notify: Callable[[Progress], None]
                           ) -> AuctionOutcome:
        """The run stopped early: a cancel (raise) or a former winner's late result (take it)."""
        task = auction.task
        if auction.cancelled:
            await self._cancel_winner(auction)
            raise TaskCancelled(f"task {task.task_id} was cancelled")
        late = auction.late
        assert late is not None
        if auction.winner != late.winner:
            await self._cancel_winner(auction)  # the current one runs it a second time
        notify(Progress("late", task.task_id, {"agent": late.winner}))
        notify(Progress("result", task.task_id, {"agent": late.winner,
                                                  "status": late.result.status.value}))
        if self.trajectory is not None:
            self.trajectory.decided("late_result", auction_id=auction.id, task_id=task.task_id,
                                    winner=late.winner)
        return AuctionOutcome(result=late.result, winner=late.winner,
                              bids=tuple(o.bid for o in auction.offers), attempts=auction.attempt,
                              duplicates=auction.duplicates, stored=late.stored)

    async def _cancel_winner(self, auction: _Auction) -> None:
        if auction.winner is not None:
            await self._cancel_lost(auction.winner, auction.task.task_id)

    async def _run(self, auction: _Auction, excluded: set[str],
                   notify: Callable[[Progress], None], stream: bool, durable: bool,
                   patience: float) -> AuctionOutcome:
        task, policy = auction.task, self.policy
        loop = asyncio.get_running_loop()
        give_up = loop.time() + patience
        pause = _RETRY_FIRST
        lost: list[str] = []
        auctions = 1  # auctions of this task: a lost winner or a retryable failure adds one
        while True:
            offers = await self._call_for_proposals(auction, auction.attempt + 1, excluded,
                                                    notify)
            busy = bool(auction.busy_refusals or auction.silent)
            if not offers:
                if auction.refused_counters:
                    raise AuctionFailed(
                        f"task {task.task_id}: only counter-offers "
                        f"({auction.refused_counters}), and the policy accepts none")
                if busy and loop.time() + pause < give_up:
                    pause = await self._pause(auction, pause, notify)
                    continue
                if lost:
                    raise AuctionFailed(f"task {task.task_id}: winners {', '.join(lost)} were "
                                        f"lost and no other agent bid")
                raise self._nobody(auction, patience)
            declined = busy_declines = 0
            tried: set[str] = set()
            for offer in offers:
                if loop.time() - auction.called_at > self._stale_after:
                    # Bids this old (we were paused, or winners kept us waiting) may not
                    # stand; and someone else may have done the task meanwhile: ask again.
                    auction.ask_go_ahead = True
                    notify(Progress("stale", task.task_id, {"attempt": auction.attempt}))
                    break
                if offer.bid.agent_id in tried or not auction.verify(offer):
                    continue  # a forged or replayed bid is never awarded; the guard counted it
                tried.add(offer.bid.agent_id)
                try:
                    result, stored = await self._award(auction, offer, notify, stream, durable)
                except _Declined as decline:
                    declined += 1
                    busy_declines += decline.busy
                    continue
                except _Lost:
                    winner = offer.bid.agent_id
                    lost.append(winner[:8])
                    excluded.add(winner)
                    auction.ask_go_ahead = True  # the lost one may have finished it after all
                    if self.trajectory is not None:
                        self.trajectory.decided("reauction", auction_id=auction.id,
                                                task_id=task.task_id, lost=winner)
                    if auctions >= policy.max_attempts:
                        raise AuctionFailed(f"task {task.task_id} was lost "
                                            f"{policy.max_attempts} times") from None
                    auctions += 1
                    notify(Progress("reauction", task.task_id, {
                        "lost": winner, "attempt": auction.attempt + 1}))
                    break
                if result.status is TaskStatus.FAILED and (result.error or {}).get(
                        "type") in _RETRYABLE and auctions < policy.max_attempts:
                    auctions += 1
                    excluded.add(offer.bid.agent_id)
                    notify(Progress("reauction", task.task_id, {
                        "failed": offer.bid.agent_id, "attempt": auction.attempt + 1}))
                    break
                return AuctionOutcome(result=result, winner=offer.bid.agent_id,
                                      bids=tuple(o.bid for o in offers),
                                      attempts=auction.attempt, duplicates=auction.duplicates,
                                      stored=stored)
            else:
                if busy_declines and loop.time() + pause < give_up:
                    pause = await self._pause(auction, pause, notify)
                    continue
                if busy_declines:
                    raise Overloaded(f"task {task.task_id}: every bidder was at capacity for "
                                     f"{patience:g}s")
                raise AuctionFailed(f"task {task.task_id}: all {len(offers)} bidders declined"
                                    if declined else f"task {task.task_id}: no valid bid")
            pause = _RETRY_FIRST  # a re-auction after a loss starts patient again

    def _nobody(self, auction: _Auction, patience: float) -> Exception:
        """The error of a round that found no bid and may not be called again."""
        task = auction.task
        if auction.busy_refusals:
            return Overloaded(f"every agent offering {task.task_type} was at capacity for "
                              f"{patience:g}s; try again later")
        if auction.known:
            return NoBidders(f"no agent bid for {task.task_type} within "
                             f"{self.policy.bid_window:g}s ({len(auction.known)} known to "
                             f"offer it did not answer)")
        return NoBidders(f"no agent offers {task.task_type}: none is known here and none "
                         f"answered within {self.policy.bid_window:g}s")

    async def _pause(self, auction: _Auction, pause: float,
                     notify: Callable[[Progress], None]) -> float:
        """Wait before calling again for proposals; the next, longer pause."""
        notify(Progress("waiting", auction.task.task_id, {
            "attempt": auction.attempt, "busy": auction.busy_refusals,
            "silent": len(auction.silent), "seconds": round(pause, 3)}))
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))
        return min(pause * 2, _RETRY_LAST)

    def _cfp_body(self, auction: _Auction, excluded: set[str]) -> dict[str, Any]:
        terms: dict[str, Any] = {}
        if auction.task.deadline is not None:
            terms["deadline"] = auction.task.deadline
        if self.policy.max_cost_usd is not None:
            terms["max_cost_usd"] = self.policy.max_cost_usd
        return {"auction_id": auction.id, "task": auction.task.as_dict(), "terms": terms,
                "exclude": sorted(excluded), "bidders": len(auction.known)}

    async def _call_for_proposals(self, auction: _Auction, attempt: int, excluded: set[str],
                                  notify: Callable[[Progress], None]) -> list[_Offer]:
        """Collect this attempt's bids; ranked, best first, counter-offers after.

        The best bid is verified here when the window closed early: the one check an
        honest round needs (the award does not repeat it).
        """
        task = auction.task
        known = self.known_bidders(task.task_type, excluded)
        auction.open_round(attempt, known)  # nobody known: wait for strangers' bids
        window = self.policy.bid_window
        auction.called_at = asyncio.get_running_loop().time()
        deadline = auction.called_at + window
        await self.bus.publish(self.bus.subjects.cfp(task.task_type), "cfp",
                               self._cfp_body(auction, excluded),
                               reply=f"{auction.inbox}.b{attempt}",
                               ttl_ms=max(1000, int(window * 2000)))
        notify(Progress("cfp", task.task_id, {"attempt": attempt, "known": len(known)}))
        early = await self._collect(auction, deadline)
        if not early and not auction.offers:
            await self._last_look()  # bids may be read but not yet handled (we were paused)
        ranked = self._ranked(auction, excluded, notify)
        if early and not (ranked and auction.verify(ranked[0])):
            # Answers nobody verified closed the window and no bid (or no best bid) holds:
            # forgeries in the known bidders' names may have closed it before their bids came.
            auction.distrust()
            await self._collect(auction, deadline)
            ranked = self._ranked(auction, excluded, notify)
        return ranked

    @staticmethod
    async def _collect(auction: _Auction, deadline: float) -> bool:
        """Take answers until every known bidder answered or ``deadline``; True: the former."""
        try:
            async with asyncio.timeout_at(deadline):
                await auction.enough.wait()
        except TimeoutError:
            return False
        finally:
            auction.closed_bidding = True
        return True

    def _ranked(self, auction: _Auction, excluded: set[str],
                notify: Callable[[Progress], None]) -> list[_Offer]:
        task = auction.task
        offers = [offer for offer in auction.offers
                  if offer.bid.agent_id not in excluded and offer.verified is not False]
        plain = [offer for offer in offers if not offer.bid.is_counter_offer]
        counters = [offer for offer in offers if offer.bid.is_counter_offer]
        auction.refused_counters = 0 if self.policy.accept_counter_offers else len(counters)
        if not self.policy.accept_counter_offers:
            counters = []
        by_bid = {id(offer.bid): offer for offer in offers}
        ranked = [by_bid[id(bid)] for group in (plain, counters)
                  for _, bid in rank([offer.bid for offer in group], self.policy.scorer,
                                    salt=auction.id)]
        # An agent that already holds the task (running, or done) is awarded first: no
        # second execution. Stable, so the scorer's order stands among the rest.
        ranked.sort(key=lambda offer: HOLDS.index(offer.bid.holds) if offer.bid.holds
                    else len(HOLDS))
        notify(Progress("bids", task.task_id, {
            "attempt": auction.attempt, "bids": len(offers), "answered": len(auction.answered),
            "ranking": [offer.bid.agent_id for offer in ranked]}))
        return ranked

    async def _award(self, auction: _Auction, offer: _Offer, notify: Callable[[Progress], None],
                     stream: bool, durable: bool) -> tuple[TaskResult, bool]:
        """Award ``offer``; the result and whether the winner stored it, or _Declined / _Lost."""
        task, policy, bid = auction.task, self.policy, offer.bid
        if auction.go_ahead is not None and auction.ask_go_ahead:
            auction.ask_go_ahead = False
            if not await auction.go_ahead():
                raise TaskCancelled(f"task {task.task_id} was called off before its award")
        winner, cid = bid.agent_id, new_id()
        auction.awarded(winner, cid)
        body: dict[str, Any] = {
            "auction_id": auction.id, "task": {**task.as_dict(), "stream": stream},
            "lease_interval": policy.lease_interval}
        if bid.counter:
            body["terms"] = dict(bid.counter)
        if durable:
            body["durable"] = True
        notify(Progress("award", task.task_id, {"agent": winner, "counter": dict(bid.counter)}))
        if self.trajectory is not None:
            self.trajectory.decided("award", auction_id=auction.id, task_id=task.task_id,
                                    capability=task.task_type, winner=winner,
                                    attempt=auction.attempt, bids=len(auction.offers))
        try:
            await self.bus.publish(self.bus.subjects.agent(winner), "award", body, to=winner,
                                   cid=cid, reply=f"{auction.inbox}.w{auction.attempt}",
                                   ttl_ms=int(policy.award_timeout * 1000))
        except AgoraError as exc:
            log.info("award to %s not sent: %s", winner[:8], exc)
            raise _Declined from None
        accepted = False
        hook = self._watch_departure(winner, auction.winner_messages)
        try:
            while True:
                wait = (policy.lease_interval * policy.missed_leases if accepted
                        else policy.award_timeout)
                envelope, left = await self._next(auction, wait)
                if envelope is None:  # silence, or it left: unless that is our own pause
                    await self._last_look()  # what reached us while we were not looking
                    envelope = self._ready(auction)
                    if envelope is None and left and self._still_here(winner):
                        continue  # its beats were waiting for us too: it never left
                if envelope is None:
                    if not accepted:
                        await self._cancel_lost(winner, task.task_id)  # in case it starts late
                        notify(Progress("declined", task.task_id, {"agent": winner,
                                                                    "reason": "no answer"}))
                        raise _Declined(busy=True)  # unreachable for now (a link failing over)
                    # Not cancelled: a silent winner may only be paused, and its result,
                    # should it come first, is taken; it is told to stop once one is in.
                    auction.lost.append(winner)
                    notify(Progress("lost", task.task_id, {"agent": winner}))
                    raise _Lost
                kind = envelope.type
                if kind == "decline" or kind == ERROR_TYPE:
                    reason = (envelope.body.get("reason") or envelope.body.get("message")
                              if isinstance(envelope.body, dict) else None)
                    notify(Progress("declined", task.task_id, {"agent": winner,
                                                                "reason": str(reason)}))
                    raise _Declined(busy=kind == "decline" and _busy(envelope.body))
                if not accepted:
                    accepted = True
                    notify(Progress("accepted", task.task_id, {"agent": winner}))
                    await self._reject_others(auction, winner)
                if kind == "task_chunk" and isinstance(envelope.body, dict):
                    notify(Progress("chunk", task.task_id, {
                        "agent": winner, "text": str(envelope.body.get("text", ""))}))
                elif kind == "task_response":
                    result = TaskResult.from_dict(envelope.body)
                    if result.task_id != task.task_id:
                        continue
                    notify(Progress("result", task.task_id, {"agent": winner,
                                                              "status": result.status.value}))
                    return result, envelope.body.get("stored") is True
        finally:
            if hook is not None and self.directory is not None:
                self.directory.on_leave.remove(hook)

    def _watch_departure(self, winner: str, messages: asyncio.Queue[Envelope | None]
                         ) -> Callable[[str, str], None] | None:
        """A directory hook that wakes the award's wait when the winner says bye or is evicted."""
        if self.directory is None:
            return None

        def on_leave(agent_id: str, reason: str) -> None:
            # A goodbye ends the wait at once; silence is judged by the leases, which are
            # meant for it (a peer evicted for missed heartbeats may only be paused).
            if agent_id == winner and reason == "bye":
                messages.put_nowait(None)

        self.directory.on_leave.append(on_leave)
        return on_leave

    @staticmethod
    async def _next(auction: _Auction, wait: float) -> tuple[Envelope | None, bool]:
        """The winner's next message; (None, False) after ``wait``, (None, True) once the
        directory says it has left."""
        try:
            async with asyncio.timeout(wait):
                envelope = await auction.winner_messages.get()
        except TimeoutError:
            return None, False
        return envelope, envelope is None

    @staticmethod
    def _ready(auction: _Auction) -> Envelope | None:
        """A message of the winner's that is already here, if any (departures skipped)."""
        queue = auction.winner_messages
        while not queue.empty():
            envelope = queue.get_nowait()
            if envelope is not None:
                return envelope
        return None

    def _still_here(self, winner: str) -> bool:
        """True if a winner that seemed to have left is in the directory (again)."""
        return self.directory is not None and winner in self.directory

    async def _last_look(self) -> None:
        """Read what our server already delivered before concluding nobody answered.

        A paused initiator wakes up with its timers expired and its socket full;
        the timers fire first. One flush round trip means every message sent to us
        before it has been read, and yielding until our subscription's queue is
        empty means each has been handled (routed to its auction). Bounded.
        """
        with contextlib.suppress(AgoraError, nats.errors.Error):
            await self.bus.flush(timeout=1.0)
        subscription = self._subscription
        for _ in range(1000):
            await asyncio.sleep(0)
            if subscription is None or subscription.pending_msgs == 0:
                break
        await asyncio.sleep(0)  # the last one taken from the queue is being handled

    async def _reject_others(self, auction: _Auction, winner: str) -> None:
        """One broadcast tells every other bidder to release what it reserved."""
        if len(auction.offers) < 2:
            return
        with contextlib.suppress(AgoraError):
            await self.bus.publish(self.bus.subjects.cfp(auction.task.task_type), "reject",
                                   {"auction_id": auction.id, "winner": winner})

    async def _cancel_lost(self, agent_id: str, task_id: str) -> None:
        """Best effort: a winner we gave up on may still be alive behind a partition."""
        with contextlib.suppress(AgoraError, nats.errors.Error):
            await self.bus.publish(self.bus.subjects.agent(agent_id), "task_cancel",
                                   {"task_id": task_id}, to=agent_id)
