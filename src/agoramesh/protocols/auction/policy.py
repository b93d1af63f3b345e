"""What an auction is run by and gives back: its policy, its progress, its outcome.

The initiator's side of an auction is :mod:`~agoramesh.protocols.auction.auctioneer`;
these are the values its callers build and read (docs/PROTOCOL.md §16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agoramesh.errors import ConfigError
from agoramesh.nodes.task import TaskResult
from agoramesh.protocols.auction.scoring import Bid, Scorer

__all__ = ("AuctionOutcome", "AuctionPolicy", "Progress")


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
    scorer: Scorer | None = None  # None: weighted(), M-3.1's weights
    #: How long to keep calling for proposals while every capable agent is busy (or
    #: unreachable) before failing with Overloaded; bounded by the run's timeout.
    max_wait: float = 30.0
    #: When exactly one agent is known to offer the capability (not excluded), award it
    #: without calling for proposals first; it declines if it would not have bid, and
    #: the auction then calls for proposals as usual (PROTOCOL.md §16, direct awards).
    direct_award: bool = True

    def __post_init__(self) -> None:
        if min(self.bid_window, self.award_timeout, self.lease_interval) <= 0:
            raise ConfigError("bid_window, award_timeout and lease_interval must be > 0")
        if self.max_wait < 0:
            raise ConfigError("max_wait must be >= 0")
        if self.missed_leases < 1 or self.max_attempts < 1:
            raise ConfigError("missed_leases and max_attempts must be >= 1")


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

