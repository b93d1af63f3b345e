"""What an auction reports of itself when it ends: its rounds, every bid's score, the awards.

The auctioneer keeps one :class:`AuctionTrail` per run and hands
:meth:`AuctionTrail.as_dict` to the agent's metrics, which send it in the
``auction`` event of the agent's telemetry (docs/PROTOCOL.md §18): observers
such as the web console can then show how an auction run anywhere on the
mesh went, bid by bid. It is bounded (:data:`MAX_ROUNDS` rounds, the last
ones; :data:`MAX_BIDS` bids a round, the best; :data:`MAX_AWARDS` awards a
round) so a telemetry beat stays small however many agents bid.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.protocols.auction.policy import Progress
from agoramesh.protocols.auction.scoring import DEFAULT_WEIGHTS, Bid, Scorer, WeightedScorer

__all__ = ("MAX_AWARDS", "MAX_BIDS", "MAX_ROUNDS", "AuctionTrail", "weights_of")

MAX_ROUNDS = 4
MAX_BIDS = 16
MAX_AWARDS = 8

#: Progress events that end an award, as the outcome the report gives it.
_ENDINGS = {"declined": "declined", "lost": "lost", "accepted": "accepted"}


class AuctionTrail:
    """The rounds of one auction as they went: ranked bids with scores, then the awards."""

    def __init__(self) -> None:
        self.rounds: deque[dict[str, Any]] = deque(maxlen=MAX_ROUNDS)
        self.attempts = 0

    def scored(self, attempt: int, ranked: Sequence[tuple[Bid, float]]) -> None:
        """A round's bids, best first, with the score each got (a round ranked again,
        after a distrustful window, replaces what it said before)."""
        entry = {"attempt": attempt, "bids": ranked[:MAX_BIDS],
                 "more": max(0, len(ranked) - MAX_BIDS), "awards": []}
        if self.rounds and self.rounds[-1]["attempt"] == attempt:
            self.rounds[-1] = entry
        else:
            self.rounds.append(entry)
        self.attempts = max(self.attempts, attempt)

    def direct(self, attempt: int, agent_id: str) -> None:
        """A round without bids: the one agent known to offer the capability is awarded."""
        self.rounds.append({"attempt": attempt, "direct": agent_id, "bids": [], "more": 0,
                            "awards": []})
        self.attempts = max(self.attempts, attempt)

    def note(self, progress: Progress) -> None:
        """Follow the awards of the current round: each award, then how it ended."""
        if not self.rounds:
            return
        awards: list[dict[str, Any]] = self.rounds[-1]["awards"]
        agent = progress.detail.get("agent")
        if progress.event == "award" and isinstance(agent, str) and len(awards) < MAX_AWARDS:
            awards.append({"agent": agent, "outcome": "awarded"})
        elif awards and awards[-1]["agent"] == agent:
            if progress.event in _ENDINGS:
                awards[-1]["outcome"] = _ENDINGS[progress.event]
                reason = progress.detail.get("reason")
                if isinstance(reason, str) and reason:
                    awards[-1]["reason"] = reason[:200]
            elif progress.event == "result":
                awards[-1]["outcome"] = str(progress.detail.get("status", "")).lower()

    def as_dict(self, weights: Mapping[str, float] | None) -> dict[str, Any]:
        """The report's fields of a telemetry ``auction`` event."""
        rounds = [{**entry, "bids": [_bid(bid, score) for bid, score in entry["bids"]]}
                  for entry in self.rounds]
        report: dict[str, Any] = {"attempts": self.attempts, "rounds": rounds}
        if weights is not None:
            report["weights"] = dict(weights)
        return report


def weights_of(scorer: Scorer | None) -> Mapping[str, float] | None:
    """The weights of an auction policy's scorer, if it says (None, the default: M-3.1's)."""
    if scorer is None:
        return DEFAULT_WEIGHTS
    return scorer.weights if isinstance(scorer, WeightedScorer) else None


def _bid(bid: Bid, score: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"agent": bid.agent_id, "score": round(score, 4),
                             "load": round(bid.load, 4), "latency_ms": round(bid.latency_ms, 3),
                             "cost_usd": bid.cost_usd, "success_rate": round(bid.success_rate, 4)}
    if bid.counter:
        entry["counter"] = dict(bid.counter)
    if bid.holds:
        entry["holds"] = bid.holds
    return entry
