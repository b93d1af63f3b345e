"""Auctions as observers see them: a telemetry ``auction`` event with its report, read.

An auctioneer's telemetry (docs/PROTOCOL.md §18) may carry, in each
``auction`` event, the auction's report: its rounds, each round's bids
ranked with their scores, the awards and how each ended, and the scorer's
weights (protocols/auction/report.py writes it). :func:`auction_from` reads
one such event defensively — it comes from any agent on the mesh: a field
of the wrong shape is dropped, every string is clipped, every list bounded
— into an :class:`AuctionRecord`, which the web console shows bid by bid.
A :class:`History` keeps the last of them, and the last task events,
numbered as they arrive so a reader can ask for what came since.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from agoramesh.monitoring.records import MeshEvent

__all__ = ("AuctionRecord", "History", "auction_from")

#: The most rounds, bids a round and awards a round read from one event (the sender's
#: bounds, protocols/auction/report.py; a sender that sends more is cut here).
_ROUNDS, _BIDS, _AWARDS = 4, 16, 8
_NUMBERS = ("score", "load", "latency_ms", "cost_usd", "success_rate")


@dataclass(frozen=True, slots=True)
class AuctionRecord:
    """One auction an agent ran, as its telemetry reported it; ``seq`` orders arrivals."""

    seq: int
    ts: float
    auctioneer: str
    task_id: str
    capability: str
    outcome: str
    ms: float | None
    bids: int | None
    winner: str | None
    attempts: int
    rounds: tuple[Mapping[str, Any], ...]
    weights: Mapping[str, float] | None

    def as_dict(self, names: Mapping[str, str]) -> dict[str, Any]:
        rounds = [{**r, "bids": [{**bid, "agent_name": names.get(bid["agent"], "")}
                                 for bid in r["bids"]],
                   "awards": [{**award, "agent_name": names.get(award["agent"], "")}
                              for award in r["awards"]]} for r in self.rounds]
        return {"seq": self.seq, "ts": round(self.ts, 3), "auctioneer": self.auctioneer,
                "auctioneer_name": names.get(self.auctioneer, ""), "task_id": self.task_id,
                "capability": self.capability, "outcome": self.outcome, "ms": self.ms,
                "bids": self.bids, "winner": self.winner,
                "winner_name": names.get(self.winner or "", ""), "attempts": self.attempts,
                "rounds": rounds, "weights": None if self.weights is None else dict(self.weights)}


class History:
    """The last ``keep_auctions`` auctions and ``keep_tasks`` task events, numbered by
    arrival (``seq``, one count for both)."""

    def __init__(self, *, keep_auctions: int, keep_tasks: int) -> None:
        self.seq = 0
        self.auctions: deque[AuctionRecord] = deque(maxlen=keep_auctions)
        self.tasks: deque[tuple[int, MeshEvent]] = deque(maxlen=keep_tasks)

    def add(self, event: MeshEvent, item: Mapping[str, Any]) -> None:
        """A task or auction event an agent reported (``item``: as it came)."""
        self.seq += 1
        if event.kind == "task" and self.tasks.maxlen:
            self.tasks.append((self.seq, event))
        elif event.kind == "auction" and self.auctions.maxlen:
            auction = auction_from(item, event.agent, self.seq)
            if auction is not None:
                self.auctions.append(auction)


def auction_from(item: Mapping[str, Any], sender: str, seq: int) -> AuctionRecord | None:
    """The record of one ``auction`` event ``sender`` reported, or None if it is unusable."""
    ts = _finite(item.get("ts"))
    if ts is None:
        return None
    winner = item.get("winner")
    bids = item.get("bids")
    attempts = item.get("attempts")
    rounds = item.get("rounds")
    return AuctionRecord(
        seq=seq, ts=ts, auctioneer=sender, task_id=_text(item.get("task_id"), 64),
        capability=_text(item.get("capability"), 128), outcome=_text(item.get("outcome"), 32),
        ms=_finite(item.get("ms")), bids=bids if _count(bids) else None,
        winner=winner[:64] if isinstance(winner, str) else None,
        attempts=attempts if _count(attempts) else 0,
        rounds=tuple(filter(None, (_round(r) for r in rounds[-_ROUNDS:])))
        if isinstance(rounds, list) else (),
        weights=_weights(item.get("weights")))


def _round(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    bids, awards = value.get("bids"), value.get("awards")
    more, direct = value.get("more"), value.get("direct")
    return {"attempt": value.get("attempt") if _count(value.get("attempt")) else 0,
            **({"direct": direct[:64]} if isinstance(direct, str) and direct else {}),
            "bids": [bid for bid in map(_bid, bids[:_BIDS] if isinstance(bids, list) else ())
                     if bid is not None],
            "more": more if _count(more) else 0,
            "awards": [award for award in map(_award, awards[:_AWARDS]
                                              if isinstance(awards, list) else ())
                       if award is not None]}


def _bid(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("agent"), str):
        return None
    bid: dict[str, Any] = {"agent": value["agent"][:64]}
    for key in _NUMBERS:
        bid[key] = _finite(value.get(key))
    counter = value.get("counter")
    if isinstance(counter, Mapping):
        bid["counter"] = {_text(k, 16): number for k, v in list(counter.items())[:4]
                          if (number := _finite(v)) is not None}
    if isinstance(value.get("holds"), str):
        bid["holds"] = value["holds"][:16]
    return bid


def _award(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("agent"), str):
        return None
    award = {"agent": value["agent"][:64], "outcome": _text(value.get("outcome"), 32)}
    if isinstance(value.get("reason"), str):
        award["reason"] = value["reason"][:200]
    return award


def _weights(value: Any) -> dict[str, float] | None:
    if not isinstance(value, Mapping):
        return None
    weights = {_text(key, 16): number for key, raw in list(value.items())[:8]
               if (number := _finite(raw)) is not None}
    return weights or None


def _text(value: Any, limit: int) -> str:
    return str(value)[:limit] if isinstance(value, str | int | float) else ""


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
