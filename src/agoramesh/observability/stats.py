"""What one agent counts as it works, read when someone scrapes or watches.

Recording is a dict increment: no locks, no label lookups, no formatting. The
Prometheus families are built from these at scrape time
(:mod:`agoramesh.monitoring.metrics`), and the telemetry an agent publishes
once a heartbeat for ``agoramesh watch`` is a summary of them (PROTOCOL.md §18).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agoramesh.nodes.task import Usage

__all__ = ("AUCTION_OUTCOMES", "BUCKETS", "JOB_EVENTS", "TASK_OUTCOMES", "AgentMetrics",
           "Histogram")

#: Histogram upper bounds, seconds: a 1 ms echo to a minute-long LLM call.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TASK_OUTCOMES = ("completed", "failed", "cancelled", "rejected")
#: What happens to the durable jobs a node takes (protocols/jobs/worker.py); "abandoned":
#: a job left to another node (or to JetStream) after this one was paused about ack_wait.
JOB_EVENTS = ("taken", "redelivered", "completed", "failed", "deduplicated", "requeued",
              "cancelled", "abandoned")
AUCTION_OUTCOMES = ("awarded", "no_bidders", "overloaded", "failed", "timeout")
RECENT = 32  # events kept between two telemetry beats
_REPORT = "_report"  # an auction event's report maker, until the event is taken
_LE = (*map(repr, BUCKETS), "+Inf")  # the buckets' "le" labels


class Histogram:
    """Counts per bucket of :data:`BUCKETS` (non-cumulative), plus sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1  # first bound >= value: "le"
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` pairs, ``+Inf`` last, as Prometheus wants."""
        pairs, running = [], 0
        for bound, count in zip(_LE, self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class AgentMetrics:
    """One agent's counters: tasks, auctions it ran, bids it sent, awards, usage.

    Envelope counts live on the Bus (``sent``, ``received``, ``rejections``)
    where they happen; these are the rest.
    """

    def __init__(self) -> None:
        self.tasks: Counter[tuple[str, str]] = Counter()  # (capability, outcome)
        self.task_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.auctions: Counter[tuple[str, str]] = Counter()  # (capability, outcome)
        self.auction_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.auction_bids: Counter[str] = Counter()  # bids received, by capability
        self.auctions_open = 0
        self.bids: Counter[tuple[str, str]] = Counter()  # (capability, bid | refuse)
        self.awards: Counter[tuple[str, str]] = Counter()  # (capability, accept | decline)
        self.access_denied: Counter[tuple[str, str]] = Counter()  # (capability, action)
        self.tokens: Counter[tuple[str, str, str]] = Counter()  # (backend, model, kind)
        self.total_cost_usd: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.jobs: Counter[str] = Counter()  # JOB_EVENTS
        self.answered_from_memory = 0  # tasks asked again, answered without running again
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def task_finished(self, capability: str, outcome: str, seconds: float,
                      task_id: str) -> None:
        self.tasks[capability, outcome] += 1
        self.task_seconds[capability].observe(seconds)
        self.recent.append({"kind": "task", "ts": time.time(), "task_id": task_id,
                            "capability": capability, "outcome": outcome,
                            "ms": round(seconds * 1000, 3)})

    def auction_finished(self, capability: str, outcome: str, seconds: float, *,
                         task_id: str, bids: int, winner: str | None,
                         report: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """``report`` makes the auction's rounds, bids and awards
        (protocols/auction/report.py), sent along in its telemetry event: made when the
        event is taken, so an event dropped from a full ``recent`` costs nothing."""
        self.auctions[capability, outcome] += 1
        self.auction_seconds[capability].observe(seconds)
        self.auction_bids[capability] += bids
        event: dict[str, Any] = {"kind": "auction", "ts": time.time(), "task_id": task_id,
                                 "capability": capability, "outcome": outcome, "bids": bids,
                                 "winner": winner, "ms": round(seconds * 1000, 3)}
        if report is not None:
            event[_REPORT] = report
        self.recent.append(event)

    def denied(self, capability: str, action: str) -> None:
        """A request refused by the agent's access policy (security/acl.py)."""
        self.access_denied[capability, action] += 1

    def denials(self) -> dict[str, int]:
        """Denied requests by action, summed over capabilities (telemetry)."""
        by_action: Counter[str] = Counter()
        for (_, action), count in self.access_denied.items():
            by_action[action] += count
        return dict(by_action)

    def spent(self, backend: str, model: str, usage: Usage) -> None:
        if usage.input_tokens:
            self.tokens[backend, model, "input"] += usage.input_tokens
        if usage.output_tokens:
            self.tokens[backend, model, "output"] += usage.output_tokens
        if usage.cost_usd:
            self.total_cost_usd[backend, model] += usage.cost_usd

    def take_recent(self) -> list[dict[str, Any]]:
        """The events since the last call, oldest first (at most :data:`RECENT`)."""
        events = list(self.recent)
        self.recent.clear()
        for event in events:
            report = event.pop(_REPORT, None)
            if report is not None:
                event.update(report())
        return events

    def totals(self) -> dict[str, dict[str, int]]:
        """Auctions by outcome and bids by decision, summed over capabilities."""
        auctions = dict.fromkeys(AUCTION_OUTCOMES, 0)
        for (_, outcome), count in self.auctions.items():
            auctions[outcome] = auctions.get(outcome, 0) + count
        bids = {"bid": 0, "refuse": 0}
        for (_, decision), count in self.bids.items():
            bids[decision] = bids.get(decision, 0) + count
        return {"auctions": auctions, "bids": bids}
