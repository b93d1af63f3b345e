"""Bids and how they are ranked (M-3.1).

A :class:`Bid` is what an agent offers for one task: its load, the latency
and cost it expects, and its success rate so far. The default
:func:`weighted` scorer is M-3.1's: ``0.30 load + 0.25 latency + 0.20 cost
+ 0.25 success rate``, each term normalised to [0, 1] where 1 is best:

- load: ``1 - load`` (load is in-flight work over capacity, clipped to 1);
- latency and cost: min-max over the bids of one auction, the cheapest or
  fastest bid scoring 1 and the dearest or slowest 0 (all equal: all 1);
- success rate: as reported, clipped to [0, 1].

:func:`suitability_scorer` scores each bid on its own, with absolute terms
(so one bid has nobody to be normalised against): one second of latency or
one cent of cost halves its term, and the sum is divided by the weights' sum,
so a score lies in [0, 1]. Task allocation (protocols/allocation/strategies.py) and
allocation ballots (protocols/allocation/voting.py) use it with M-3.1's weights
(:data:`SUITABILITY`).

Scorers are pluggable: any ``Callable[[Sequence[Bid]], list[float]]``.
Ranking is deterministic: higher score first, then the lower agent id (or,
in an auction, a hash salted with the auction id; see :func:`rank`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agoramesh.errors import ConfigError, InvalidBid

__all__ = ("DEFAULT_WEIGHTS", "HOLDS", "SUITABILITY", "Bid", "Scorer", "WeightedScorer",
           "rank", "suitability_scorer", "weighted")

#: What a bid may say it holds of the task already, best first.
HOLDS = ("done", "running")

#: M-3.1's weights.
DEFAULT_WEIGHTS: Mapping[str, float] = {"load": 0.30, "latency": 0.25, "cost": 0.20,
                                        "success": 0.25}


def _unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidBid(f"bid field {name} must be a finite number, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Bid:
    """One agent's offer for one task.

    ``counter`` holds terms the agent proposes instead of the requested ones
    (``{"deadline": unix_s}`` and/or ``{"cost_usd": x}``); an empty mapping is
    a plain bid on the requested terms. ``holds`` says the agent already has
    this task id ``"running"`` or ``"done"`` (a re-auction after its initiator
    was lost): awarding it costs no second execution.
    """

    agent_id: str
    load: float = 0.0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    success_rate: float = 1.0
    capacity: int = 1
    in_flight: int = 0
    counter: Mapping[str, float] = field(default_factory=dict)
    agent_type: str = ""
    priority: int = 0
    holds: str = ""

    def __post_init__(self) -> None:
        for name in ("load", "latency_ms", "cost_usd", "success_rate"):
            if _unit(getattr(self, name), name) < 0:
                raise InvalidBid(f"bid field {name} must not be negative")

    @property
    def is_counter_offer(self) -> bool:
        return bool(self.counter)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "load": round(self.load, 4), "latency_ms": round(self.latency_ms, 3),
            "cost_usd": self.cost_usd, "success_rate": round(self.success_rate, 4),
            "capacity": self.capacity, "in_flight": self.in_flight,
            "agent_type": self.agent_type, "priority": self.priority}
        if self.counter:
            body["counter"] = dict(self.counter)
        if self.holds:
            body["holds"] = self.holds
        return body

    @classmethod
    def from_dict(cls, data: Any, *, agent_id: str) -> Bid:
        """A bid from its wire body; ``agent_id`` is the envelope's signer, never the body's."""
        if not isinstance(data, dict):
            raise InvalidBid("a bid must be an object")
        counter = data.get("counter") or {}
        if not isinstance(counter, dict) or not all(
                key in ("deadline", "cost_usd") for key in counter):
            raise InvalidBid("bid counter must be an object of deadline and/or cost_usd")
        try:
            return cls(agent_id=agent_id, load=data.get("load", 0.0),
                       latency_ms=data.get("latency_ms", 0.0),
                       cost_usd=data.get("cost_usd", 0.0),
                       success_rate=data.get("success_rate", 1.0),
                       capacity=int(data.get("capacity", 1)),
                       in_flight=int(data.get("in_flight", 0)),
                       counter={str(k): _unit(v, f"counter.{k}") for k, v in counter.items()},
                       agent_type=str(data.get("agent_type", ""))[:64],
                       priority=int(data.get("priority", 0)),
                       holds=data["holds"] if data.get("holds") in HOLDS else "")
        except (TypeError, ValueError, OverflowError) as exc:  # int(inf): OverflowError
            if isinstance(exc, InvalidBid):
                raise
            raise InvalidBid(f"unusable bid: {exc}") from None


Scorer = Callable[[Sequence[Bid]], list[float]]


def _spread(values: Sequence[float]) -> list[float]:
    """Min-max to [0, 1] with the smallest value best (1); all equal gives all 1."""
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [1.0] * len(values)
    return [1.0 - (value - low) / (high - low) for value in values]


class WeightedScorer:
    """The weighted scorer (module docstring); ``weights`` says its weights, so an auction's
    report can show what its scores were made of."""

    __slots__ = ("weights",)

    def __init__(self, load: float, latency: float, cost: float, success: float) -> None:
        values = (load, latency, cost, success)
        if any(w < 0 or not math.isfinite(w) for w in values) or sum(values) <= 0:
            raise ConfigError("scoring weights must be non-negative with a positive sum")
        self.weights: Mapping[str, float] = dict(zip(("load", "latency", "cost", "success"),
                                                     values, strict=True))

    def __call__(self, bids: Sequence[Bid]) -> list[float]:
        if not bids:
            return []
        load, latency, cost, success = self.weights.values()
        latency_terms = _spread([bid.latency_ms for bid in bids])
        cost_terms = _spread([bid.cost_usd for bid in bids])
        return [load * (1.0 - min(bid.load, 1.0)) + latency * lat + cost * money
                + success * min(max(bid.success_rate, 0.0), 1.0)
                for bid, lat, money in zip(bids, latency_terms, cost_terms, strict=True)]


def weighted(load: float = DEFAULT_WEIGHTS["load"], latency: float = DEFAULT_WEIGHTS["latency"],
             cost: float = DEFAULT_WEIGHTS["cost"],
             success: float = DEFAULT_WEIGHTS["success"]) -> WeightedScorer:
    """A scorer with these weights (the defaults are :data:`DEFAULT_WEIGHTS`)."""
    return WeightedScorer(load, latency, cost, success)


def suitability_scorer(weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> Scorer:
    """The absolute-term scorer (module docstring), scaled by the sum of ``weights``::

        (load (1 - load) + latency / (1 + latency_ms/1000) + cost / (1 + 100 cost_usd)
         + success success_rate) / (load + latency + cost + success)
    """
    load, latency, cost, success = (_weight(weights.get(key, 0.0), key)
                                    for key in ("load", "latency", "cost", "success"))
    total = load + latency + cost + success
    if total <= 0:
        raise ConfigError("scoring weights must have a positive sum")

    def score(bids: Sequence[Bid]) -> list[float]:
        return [(load * (1.0 - min(bid.load, 1.0)) + latency / (1.0 + bid.latency_ms / 1000)
                 + cost / (1.0 + 100 * bid.cost_usd)
                 + success * min(max(bid.success_rate, 0.0), 1.0)) / total for bid in bids]

    return score


def _weight(value: Any, key: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise ConfigError(f"weight {key} must be a non-negative finite number, "
                          f"got {value!r:.40}")
    return float(value)


#: :func:`suitability_scorer` with M-3.1's weights.
SUITABILITY: Scorer = suitability_scorer()


def rank(bids: Sequence[Bid], scorer: Scorer | None = None, *,
         salt: str = "") -> list[tuple[float, Bid]]:
    """``(score, bid)`` best first: higher score, then the tie-break.

    Ties go to the lower agent id, or with a ``salt`` (an auction id) to the
    lower hash of salt and agent id: still deterministic for one auction,
    but concurrent auctions among equal agents spread over all of them
    instead of all going to the same one.
    """
    scores = (scorer or weighted())(bids)

    def tie(bid: Bid) -> str:
        if not salt:
            return bid.agent_id
        return hashlib.blake2b(f"{salt}:{bid.agent_id}".encode(), digest_size=8).hexdigest()

    return sorted(zip(scores, bids, strict=True), key=lambda pair: (-round(pair[0], 9),
                                                                     tie(pair[1])))
