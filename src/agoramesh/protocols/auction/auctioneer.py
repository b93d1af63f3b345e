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
- Ranking: the pluggable scorer (protocols/auction/scoring.py), bids on the requested
  terms first, then counter-offers the policy accepts.
- The winner answers on the award's reply inbox with the award's ``cid``:
  ``decline`` at once, or the result; if the result is not ready within a few
  milliseconds it sends ``accept`` and then a ``lease`` every ``lease_interval``. Silence for
  ``missed_leases`` intervals, or the winner leaving the directory, loses the
  task: it is re-auctioned without that agent (``max_attempts`` in all), and
  the lost winner is asked to cancel once there is a result. With nobody else
  bidding, a run that is not a durable job's keeps calling until ``max_wait`` for
  it: a winner that was only paused returns its late result, which is taken. One
  gone from the mesh (its ping draws "no responders": protocols/auction/liveness.py)
  is not waited for.
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
  means nobody known offers the capability and nobody answered; agents evicted
  for silence within ``max_wait`` (maybe only paused) count as known ones then.
- Nothing that already arrived is ignored: before a wait for the winner ends in
  "declined" or "lost", the initiator reads what its server already delivered
  (a flush round trip), so an initiator that was paused (SIGSTOP, a long GC)
  finds the accept, leases and result sitting in its buffer instead of
  re-awarding. A COMPLETED result from a winner given up on earlier is taken
  as the result when it comes first (the current winner is then cancelled).
- Traced (while tracing is on): each call for proposals is an ``agoramesh.cfp`` span,
  the parent of the bidders' ``agoramesh.bid`` spans; each award an ``agoramesh.award``
  span (protocols/auction/award.py), the parent of the winner's.
- A direct award: when exactly one agent is known to offer the capability, it is
  awarded without a call for proposals (one round trip instead of two). It judges
  the award as it would a cfp and declines what it would not have bid on (busy,
  terms it cannot meet); a decline, or no answer within the bid window, and the
  auction calls for proposals as usual. ``AuctionPolicy.direct_award=False`` always
  calls for proposals (strangers the directory does not know yet may then bid).
- A bid that ``holds`` the task (the agent runs it, or has just finished it:
  a job re-auctioned after its initiator was lost) ranks first, so the work is
  not done twice. A ``durable`` award asks the winner to store its result in
  the result store itself; the outcome says whether it did (``stored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Iterable

from agoramesh.bus.bus import Bus
from agoramesh.bus.message import Message
from agoramesh.bus.subscription import Listener
from agoramesh.errors import (
    AgoraError,
    AuctionFailed,
    BusTimeout,
    NoBidders,
    Overloaded,
    TaskCancelled,
)
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.observability.stats import AgentMetrics
from agoramesh.observability.tracing import SpanKind, span
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.auction.award import AwardPhase, cancel_lost, cancel_winner
from agoramesh.protocols.auction.liveness import gone
from agoramesh.protocols.auction.policy import AuctionOutcome, AuctionPolicy, Progress
from agoramesh.protocols.auction.report import weights_of
from agoramesh.protocols.auction.round import Auction, Declined, Lost, Offer

__all__ = ("Auctioneer",)

#: Failures that say "not here", not "not possible": the task goes to the next auction.
_RETRYABLE = frozenset({Overloaded.__name__, TaskCancelled.__name__})
#: The pause before calling again for proposals when every capable agent was busy:
#: it doubles from the first to the last, each with jitter so waiting auctions spread.
_RETRY_FIRST, _RETRY_LAST = 0.05, 1.0


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
        self._open: dict[str, Auction] = {}
        self._subscribing = asyncio.Lock()
        self._subscription: Listener | None = None

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

    def _lone(self, capability: str, excluded: Iterable[str]) -> str | None:
        """The one agent known to offer ``capability``, if exactly one is known."""
        known = self.known_bidders(capability, excluded)
        return next(iter(known)) if len(known) == 1 else None

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
                self._subscription = await self.bus.listen(f"{inbox}.*.*", self._route)
                self._inbox = inbox
        return self._inbox

    def _subscription_alive(self) -> bool:
        # A closed connection takes its subscriptions along; a new one needs a new inbox.
        return self._subscription is not None and self._subscription.alive

    async def _route(self, msg: Message) -> None:
        key, _, kind = msg.subject[len(self._inbox) + 1:].partition(".")
        auction = self._open.get(key)
        if auction is not None:
            auction.on_message(kind, msg.data, msg.subject, msg.reply)

    async def run(self, task: Task, *, timeout: float = 30.0, exclude: Iterable[str] = (),
                  progress: Callable[[Progress], None] | None = None,
                  stream: bool = False, durable: bool = False, max_wait: float | None = None,
                  go_ahead: Callable[[], Awaitable[bool]] | None = None,
                  go_ahead_each: bool = False) -> AuctionOutcome:
        """Auction ``task`` until one agent returns its result.

        Raises NoBidders if nobody bids, Overloaded if every capable agent stayed
        busy for ``max_wait`` (default: the policy's; never past ``timeout``),
        AuctionFailed if every bidder declines or the attempts run out,
        TaskCancelled after :meth:`cancel`, BusTimeout after ``timeout``.
        ``durable``: the winner stores the result in the result store itself.
        ``go_ahead``: called and awaited before the first award, if there is one
        (start its work early: it overlaps the bids), and again before the first
        award after a winner was lost (``go_ahead_each``: before every award);
        False stops the run with TaskCancelled and nothing more is awarded.
        """
        started = time.perf_counter()
        auction = Auction(self.bus, task, await self._inbox_prefix())

        def notify(event: Progress) -> None:
            auction.trail.note(event)
            (progress or _ignore)(event)
        excluded = set(exclude)
        key = auction.id[:16]
        self._open[key] = auction
        self.metrics.auctions_open += 1
        outcome, winner = "failed", None
        patience = self.policy.max_wait if max_wait is None else max_wait
        auction.go_ahead, auction.go_ahead_each = go_ahead, go_ahead_each
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
                won = await _interrupted(self.bus, self.trajectory, auction, notify)
            outcome, winner = "awarded", won.winner
            return won
        except TimeoutError:
            outcome = "timeout"
            await cancel_winner(self.bus, auction)
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
                    await asyncio.shield(cancel_lost(self.bus, lost, task.task_id))
            del self._open[key]
            self.metrics.auctions_open -= 1
            report = functools.partial(auction.trail.as_dict, weights_of(self.policy.scorer))
            self.metrics.auction_finished(task.capability, outcome, time.perf_counter() - started,
                                          task_id=task.task_id, bids=auction.bids_received,
                                          winner=winner, report=report)

    def cancel(self, task_id: str) -> bool:
        """Stop the auction of ``task_id`` running here (its winner is told to cancel);
        its run raises TaskCancelled. False if no such auction runs here."""
        for auction in self._open.values():
            if auction.task.task_id == task_id and not auction.cancelled:
                auction.cancelled = True
                auction.interrupt()
                return True
        return False

    async def _run(self, auction: Auction, excluded: set[str],
                   notify: Callable[[Progress], None], stream: bool, durable: bool,
                   patience: float) -> AuctionOutcome:
        task, policy = auction.task, self.policy
        loop = asyncio.get_running_loop()
        give_up = loop.time() + patience
        pause = _RETRY_FIRST
        lost: list[str] = []  # winners lost to silence, their full ids
        auctions = 1  # auctions of this task: a lost winner or a retryable failure adds one
        direct = policy.direct_award  # a lone known agent may be awarded once without a cfp
        while True:
            lone = self._lone(task.capability, excluded) if direct else None
            if lone is not None:
                direct = False
                offers = auction.open_direct(auction.attempt + 1, lone)
            else:
                offers = await self._call_for_proposals(auction, auction.attempt + 1,
                                                        excluded, notify)
            busy = bool(auction.busy_refusals or auction.silent)
            if not offers:
                if auction.refused_counters:
                    raise AuctionFailed(
                        f"task {task.task_id}: only counter-offers "
                        f"({auction.refused_counters}), and the policy accepts none")
                # A lost winner may be paused: its late result is awaited (never re-awarded),
                # unless all are gone from the mesh; a durable job goes back to its stream
                # instead, for the next auction.
                dead = bool(lost) and not durable and not busy and set(lost) <= await gone(
                    self.bus, self.directory, lost, _probe_timeout(policy))
                if (busy or (lost and not durable and not dead)) and loop.time() + pause < give_up:
                    pause = await _pause(auction, pause, notify)
                    continue
                if lost:
                    raise AuctionFailed(f"task {task.task_id}: winners "
                                        f"{', '.join(w[:8] for w in lost)} were lost"
                                        f"{', gone from the mesh,' if dead else ''} and no "
                                        f"other agent bid")
                raise auction.nobody(self.policy.bid_window, patience)
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
                    result, stored = await self._award_phase().award(auction, offer, notify,
                                                                     stream, durable)
                except Declined as decline:
                    if lone is not None:
                        break  # it would not have bid (or is not there): call for proposals
                    declined += 1
                    busy_declines += decline.busy
                    continue
                except Lost:
                    winner = offer.bid.agent_id
                    lost.append(winner)
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
                                      bids=tuple(o.bid for o in offers if o.envelope),
                                      attempts=auction.attempt, duplicates=auction.duplicates,
                                      stored=stored)
            else:
                if busy_declines and loop.time() + pause < give_up:
                    pause = await _pause(auction, pause, notify)
                    continue
                if busy_declines:
                    raise Overloaded(f"task {task.task_id}: every bidder was at capacity for "
                                     f"{patience:g}s")
                raise AuctionFailed(f"task {task.task_id}: all {len(offers)} bidders declined"
                                    if declined else f"task {task.task_id}: no valid bid")
            pause = _RETRY_FIRST  # a re-auction after a loss starts patient again

    async def _call_for_proposals(self, auction: Auction, attempt: int, excluded: set[str],
                                  notify: Callable[[Progress], None]) -> list[Offer]:
        """Collect this attempt's bids; ranked, best first, counter-offers after.

        The best bid is verified here when the window closed early: the one check an
        honest round needs (the award does not repeat it).
        """
        task = auction.task
        known = self.known_bidders(task.capability, excluded) or await _lapsed(
            self.bus, self.directory, task.capability, self.policy, excluded)
        auction.open_round(attempt, known)  # nobody known: wait for strangers' bids
        window = self.policy.bid_window
        auction.called_at = asyncio.get_running_loop().time()
        deadline = auction.called_at + window
        with span("agoramesh.cfp", SpanKind.PRODUCER,
                  attributes={"agoramesh.task_id": task.task_id, "agoramesh.attempt": attempt,
                              "agoramesh.auction_id": auction.id,
                              "agoramesh.known_bidders": len(known)}) as cfp:
            await self.bus.publish(self.bus.subjects.cfp(task.capability), "cfp",
                                   auction.cfp_body(self.policy, excluded),
                                   reply=f"{auction.inbox}.b{attempt}",
                                   ttl_ms=max(1000, int(window * 2000)))
            notify(Progress("cfp", task.task_id, {"attempt": attempt, "known": len(known)}))
            early = await auction.collect(deadline)
            if not early and not auction.offers:
                await self._last_look()  # bids may be read but not yet handled (we were paused)
            ranked = auction.ranked(self.policy, excluded, notify)
            if early and not (ranked and auction.verify(ranked[0])):
                # Answers nobody verified closed the window and no bid (or no best bid)
                # holds: forgeries in the known bidders' names may have closed it first.
                auction.distrust()
                await auction.collect(deadline)
                ranked = auction.ranked(self.policy, excluded, notify)
            if cfp.is_recording():
                cfp.set_attributes({"agoramesh.bids": len(auction.offers),
                                    "agoramesh.answers": len(auction.answered)})
        return ranked

    def _award_phase(self) -> AwardPhase:
        return AwardPhase(self.bus, self.directory, self.policy, self.trajectory,
                          self._last_look)

    async def _last_look(self) -> None:
        """Read what our server already delivered before concluding nobody answered.

        A paused initiator wakes up with its timers expired and its socket full;
        the timers fire first. One flush round trip means every message sent to us
        before it has been read, and yielding until our subscription's queue is
        empty means each has been handled (routed to its auction). Bounded.
        """
        with contextlib.suppress(AgoraError):
            await self.bus.flush(timeout=1.0)
        subscription = self._subscription
        for _ in range(1000):
            await asyncio.sleep(0)
            if subscription is None or subscription.pending == 0:
                break
        await asyncio.sleep(0)  # the last one taken from the queue is being handled


async def _interrupted(bus: Bus, trajectory: Trajectory | None, auction: Auction,
                       notify: Callable[[Progress], None]) -> AuctionOutcome:
    """The run stopped early: a cancel (raise) or a former winner's late result (take it)."""
    task = auction.task
    if auction.cancelled:
        await cancel_winner(bus, auction)
        raise TaskCancelled(f"task {task.task_id} was cancelled")
    late = auction.late
    assert late is not None
    if auction.winner != late.winner:
        await cancel_winner(bus, auction)  # the current one runs it a second time
    notify(Progress("late", task.task_id, {"agent": late.winner}))
    notify(Progress("result", task.task_id, {"agent": late.winner,
                                              "status": late.result.status.value}))
    if trajectory is not None:
        trajectory.decided("late_result", auction_id=auction.id, task_id=task.task_id,
                           winner=late.winner)
    return AuctionOutcome(result=late.result, winner=late.winner,
                          bids=tuple(o.bid for o in auction.offers), attempts=auction.attempt,
                          duplicates=auction.duplicates, stored=late.stored)


async def _lapsed(bus: Bus, directory: Directory | None, capability: str,
                  policy: AuctionPolicy, excluded: set[str]) -> set[str]:
    """Nobody is known, but agents evicted for silence in the last ``max_wait`` seconds
    may only be paused (SIGSTOP): they count as known ones that did not answer (busy).
    Those gone from the mesh (their process died) are not, and are forgotten."""
    if directory is None:
        return set()
    lapsed = set(directory.lapsed(capability, policy.max_wait)).difference(excluded)
    for agent_id in await gone(bus, directory, lapsed, _probe_timeout(policy)):
        directory.forget_lapsed(agent_id)
        lapsed.discard(agent_id)
    return lapsed


def _probe_timeout(policy: AuctionPolicy) -> float:
    """How long a silent agent's ping is given: "no responders" comes at once, and an
    agent that answers at all does within a bid window."""
    return min(policy.bid_window, 1.0)


def _ignore(_: Progress) -> None:
    pass


async def _pause(auction: Auction, pause: float, notify: Callable[[Progress], None]) -> float:
    """Wait before calling again for proposals; the next, longer pause."""
    notify(Progress("waiting", auction.task.task_id, {
        "attempt": auction.attempt, "busy": auction.busy_refusals,
        "silent": len(auction.silent), "seconds": round(pause, 3)}))
    await asyncio.sleep(pause * random.uniform(0.5, 1.0))
    return min(pause * 2, _RETRY_LAST)
