"""The award phase of an auction: one bid awarded, its winner's answers awaited.

An award goes to the winner with a reply inbox of the auction's; the winner
declines at once or accepts, sends leases while it works, and its result
(docs/PROTOCOL.md §16). Silence past the lease, or a goodbye, loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agoramesh.bus.bus import ERROR_TYPE, Bus
from agoramesh.bus.envelope import Envelope, new_id
from agoramesh.errors import AgoraError, TaskCancelled
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.task import TaskResult
from agoramesh.observability.tracing import Span, SpanKind, span
from agoramesh.observability.trajectory import Trajectory
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.protocols.auction.round import Auction, Declined, Lost, Offer, busy

__all__ = ("AwardPhase", "cancel_lost", "cancel_winner")

log = logging.getLogger("agoramesh.auction")

#: Seconds since go_ahead said yes beyond which an award asks it again before it is sent.
_PAUSED = 1.0


class AwardPhase:
    """Awards the bids of one auctioneer, with the policy in force when it is made."""

    def __init__(self, bus: Bus, directory: Directory | None, policy: AuctionPolicy,
                 trajectory: Trajectory | None,
                 last_look: Callable[[], Awaitable[None]]) -> None:
        """``last_look``: reads what the auctioneer's server already delivered."""
        self.bus = bus
        self.directory = directory
        self.policy = policy
        self.trajectory = trajectory
        self._last_look = last_look

    async def award(self, auction: Auction, offer: Offer, notify: Callable[[Progress], None],
                     stream: bool, durable: bool) -> tuple[TaskResult, bool]:
        """Award ``offer``; the result and whether the winner stored it, or Declined / Lost.

        Traced as an ``agoramesh.award`` span; the winner's answers are its events.
        """
        with span("agoramesh.award", SpanKind.CLIENT,
                  attributes={"agoramesh.task_id": auction.task.task_id,
                              "agoramesh.auction_id": auction.id,
                              "agoramesh.winner": offer.bid.agent_id,
                              "agoramesh.attempt": auction.attempt}) as awarding:
            return await self._award(auction, offer, notify, stream, durable, awarding)

    @staticmethod
    async def _go_ahead(auction: Auction) -> None:
        """TaskCancelled unless the auction's ``go_ahead`` says to award (a durable job with
        no stored result, still ours)."""
        assert auction.go_ahead is not None
        if not await auction.go_ahead():
            raise TaskCancelled(f"task {auction.task.task_id} was called off before its award")
        auction.went_ahead_at = asyncio.get_running_loop().time()

    async def _award(self, auction: Auction, offer: Offer, notify: Callable[[Progress], None],
                     stream: bool, durable: bool, awarding: Span) -> tuple[TaskResult, bool]:
        task, policy, bid = auction.task, self.policy, offer.bid
        if auction.go_ahead is not None and (auction.ask_go_ahead or auction.go_ahead_each):
            auction.ask_go_ahead = False
            await self._go_ahead(auction)
        winner, cid = bid.agent_id, new_id()
        auction.awarded(winner, cid)
        body: dict[str, Any] = {
            "auction_id": auction.id, "task": {**task.as_dict(), "stream": stream},
            "lease_interval": policy.lease_interval}
        direct = offer.envelope is None
        # A direct award asks no bid first: the agent judges the requested terms itself,
        # and its first answer is awaited no longer than a bid would have been.
        first_wait = min(policy.award_timeout, policy.bid_window) if direct \
            else policy.award_timeout
        if direct:
            awarding.set_attribute("agoramesh.direct", True)
            body["direct"] = True
            body["terms"] = auction.terms(policy)
        elif bid.counter:
            body["terms"] = dict(bid.counter)
        if durable:
            body["durable"] = True
        notify(Progress("award", task.task_id, {"agent": winner, "counter": dict(bid.counter),
                                                **({"direct": True} if direct else {})}))
        if self.trajectory is not None:
            self.trajectory.decided("award", auction_id=auction.id, task_id=task.task_id,
                                    capability=task.capability, winner=winner,
                                    attempt=auction.attempt, bids=len(auction.offers))
        subject, reply = self.bus.subjects.agent(winner), f"{auction.inbox}.w{auction.attempt}"
        try:
            wire = self.bus.seal(subject, "award", body, to=winner, cid=cid, reply=reply,
                                 ttl_ms=int(first_wait * 1000))
            if (auction.go_ahead is not None
                    and asyncio.get_running_loop().time() - auction.went_ahead_at > _PAUSED):
                # Paused since go_ahead said yes (a frozen process): a durable job may be
                # another node's by now. Sealed first, so an award held up after this look
                # expires (award_timeout) before it can be taken.
                await self._go_ahead(auction)
                # The same award with a fresh lifetime: counted and traced once, above.
                wire = self.bus.wire(subject, "award", body, to=winner, cid=cid, reply=reply,
                                     ttl_ms=int(first_wait * 1000))
            await self.bus.publish_raw(subject, wire, reply=reply)
        except AgoraError as exc:
            if isinstance(exc, TaskCancelled):
                raise
            log.info("award to %s not sent: %s", winner[:8], exc)
            raise Declined from None
        accepted = False
        hook = self._watch_departure(winner, auction.winner_messages)
        try:
            while True:
                wait = (policy.lease_interval * policy.missed_leases if accepted
                        else first_wait)
                envelope, left = await self._next(auction, wait)
                if envelope is None:  # silence, or it left: unless that is our own pause
                    await self._last_look()  # what reached us while we were not looking
                    envelope = self._ready(auction)
                    if envelope is None and left and self._still_here(winner):
                        continue  # its beats were waiting for us too: it never left
                if envelope is None:
                    if not accepted:
                        await cancel_lost(self.bus, winner, task.task_id)  # in case it starts late
                        notify(Progress("declined", task.task_id, {"agent": winner,
                                                                    "reason": "no answer"}))
                        raise Declined(busy=True)  # unreachable for now (a link failing over)
                    # Not cancelled: a silent winner may only be paused, and its result,
                    # should it come first, is taken; it is told to stop once one is in.
                    auction.lost.append(winner)
                    notify(Progress("lost", task.task_id, {"agent": winner}))
                    raise Lost
                kind = envelope.type
                awarding.add_event(kind)
                if kind == "decline" or kind == ERROR_TYPE:
                    reason = (envelope.body.get("reason") or envelope.body.get("message")
                              if isinstance(envelope.body, dict) else None)
                    notify(Progress("declined", task.task_id, {"agent": winner,
                                                                "reason": str(reason)}))
                    raise Declined(busy=kind == "decline" and busy(envelope.body))
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
    async def _next(auction: Auction, wait: float) -> tuple[Envelope | None, bool]:
        """The winner's next message; (None, False) after ``wait``, (None, True) once the
        directory says it has left."""
        try:
            async with asyncio.timeout(wait):
                envelope = await auction.winner_messages.get()
        except TimeoutError:
            return None, False
        return envelope, envelope is None

    @staticmethod
    def _ready(auction: Auction) -> Envelope | None:
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


    async def _reject_others(self, auction: Auction, winner: str) -> None:
        """One broadcast tells every other bidder to release what it reserved."""
        if len(auction.offers) < 2:
            return
        with contextlib.suppress(AgoraError):
            await self.bus.publish(self.bus.subjects.cfp(auction.task.capability), "reject",
                                   {"auction_id": auction.id, "winner": winner}, traced=False)



async def cancel_lost(bus: Bus, agent_id: str, task_id: str) -> None:
    """Best effort: a winner we gave up on may still be alive behind a partition."""
    with contextlib.suppress(AgoraError):
        await bus.publish(bus.subjects.agent(agent_id), "task_cancel",
                          {"task_id": task_id}, to=agent_id)


async def cancel_winner(bus: Bus, auction: Auction) -> None:
    """Ask the auction's current winner, if any, to stop."""
    if auction.winner is not None:
        await cancel_lost(bus, auction.winner, auction.task.task_id)
