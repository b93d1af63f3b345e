"""An auction's report (PROTOCOL.md §18): its rounds, every bid's score, the awards — as the
auctioneer's telemetry sends it and as an observer reads it back."""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.monitoring.auctions import History, auction_from
from agoramesh.monitoring.records import MeshEvent
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.auction.bidder import BidStrategy
from agoramesh.protocols.auction.policy import Progress
from agoramesh.protocols.auction.report import MAX_BIDS, MAX_ROUNDS, AuctionTrail, weights_of
from agoramesh.protocols.auction.scoring import DEFAULT_WEIGHTS, SUITABILITY, Bid, rank, weighted
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory
from agoramesh.testing.workers import WORK, Worker

AGENT = "U" + "A" * 55


class Fixed(BidStrategy):
    """Bids a fixed latency; may decline the award."""

    def __init__(self, latency_ms: float, decline: bool = False) -> None:
        self.latency_ms, self.decline = latency_ms, decline

    def quote(self, node: AgentNode, task: Task, capability: Capability,
              terms: dict[str, Any], reserved: float, *,
              request_size: int | None = None) -> Bid | str:
        return Bid(agent_id=node.agent_id, latency_ms=self.latency_ms)

    def accept(self, node: AgentNode, task: Task, terms: dict[str, Any]) -> str | None:
        return "I am busy after all" if self.decline else None


@pytest.mark.integration
async def test_the_auctioneers_telemetry_reports_every_bid_its_score_and_the_awards(
        nats_server: Any, agent_factory: AgentFactory) -> None:
    strategies = {"best": Fixed(1, decline=True), "second": Fixed(50), "third": Fixed(500)}
    nodes = {name: await agent_factory(nats_server.client_url, name, [WORK],
                                       backend=Worker(name), bid_strategy=strategy)
             for name, strategy in strategies.items()}
    for node in nodes.values():
        await wait_until(lambda n=node: len(n.directory) >= 2, timeout=5.0)
    client = nodes["third"]
    result = await client.dispatcher.submit("work.do", {})
    assert result.status is TaskStatus.COMPLETED and result.result["by"] == "second"
    [event] = [e for e in client.presence.telemetry()["recent"] if e["kind"] == "auction"]
    assert event["attempts"] == 1 and event["weights"] == dict(DEFAULT_WEIGHTS)
    [round_] = event["rounds"]
    ids = {node.agent_id: name for name, node in nodes.items()}
    assert [ids[bid["agent"]] for bid in round_["bids"]] == ["best", "second", "third"]
    scores = [bid["score"] for bid in round_["bids"]]
    assert scores == sorted(scores, reverse=True) and round_["more"] == 0
    assert [(ids[a["agent"]], a["outcome"]) for a in round_["awards"]] == [
        ("best", "declined"), ("second", "completed")]
    assert round_["awards"][0]["reason"] == "I am busy after all"

    history = History(keep_auctions=10, keep_tasks=10)
    history.add(MeshEvent(ts=event["ts"], kind="auction", agent=client.agent_id), event)
    [record] = history.auctions
    read = record.as_dict({client.agent_id: "third"})
    assert read["winner"] == nodes["second"].agent_id and read["auctioneer_name"] == "third"
    assert [bid["score"] for bid in read["rounds"][0]["bids"]] == scores


def test_the_trail_is_bounded_and_a_round_ranked_again_replaces_itself() -> None:
    trail = AuctionTrail()
    bids = [Bid(agent_id=f"U{i:055d}", latency_ms=float(i)) for i in range(MAX_BIDS + 5)]
    ranked = [(bid, score) for score, bid in rank(bids)]
    for attempt in range(1, MAX_ROUNDS + 3):
        trail.scored(attempt, ranked)
        trail.scored(attempt, ranked)  # ranked again after a distrustful window
        trail.note(Progress("award", "t", {"agent": bids[0].agent_id}))
        trail.note(Progress("lost", "t", {"agent": bids[0].agent_id}))
    report = trail.as_dict(None)
    assert report["attempts"] == MAX_ROUNDS + 2 and "weights" not in report
    assert [r["attempt"] for r in report["rounds"]] == list(range(3, MAX_ROUNDS + 3))
    assert all(len(r["bids"]) == MAX_BIDS and r["more"] == 5 for r in report["rounds"])
    assert all(r["awards"] == [{"agent": bids[0].agent_id, "outcome": "lost"}]
               for r in report["rounds"])
    assert weights_of(weighted(1, 0, 0, 0)) == {"load": 1, "latency": 0, "cost": 0, "success": 0}
    assert weights_of(SUITABILITY) is None  # a scorer that does not say shows no weights


def test_an_observer_drops_what_does_not_read_and_clips_what_does() -> None:
    junk: dict[str, Any] = {
        "ts": 1.0, "task_id": "x" * 500, "capability": ["no"], "outcome": "awarded",
        "bids": True, "winner": 7, "attempts": -1, "weights": {"load": "heavy", "cost": 0.2},
        "rounds": ["no", {"attempt": "one", "more": 2**70, "bids": [
            {"agent": AGENT, "score": float("nan"), "load": 0.5, "counter": {"cost_usd": "x"}},
            {"score": 1.0}, "junk"], "awards": [{"agent": AGENT, "outcome": "<b>won</b>",
                                                 "reason": "r" * 1000}, 5]}]}
    record = auction_from(junk, AGENT, seq=1)
    assert record is not None
    assert (record.task_id, record.capability, record.bids, record.winner, record.attempts) == (
        "x" * 64, "", None, None, 0)
    assert record.weights == {"cost": 0.2}
    [round_] = record.rounds
    assert round_["attempt"] == 0 and round_["more"] == 2**70
    assert round_["bids"] == [{"agent": AGENT, "score": None, "load": 0.5, "latency_ms": None,
                               "cost_usd": None, "success_rate": None, "counter": {}}]
    assert round_["awards"] == [{"agent": AGENT, "outcome": "<b>won</b>", "reason": "r" * 200}]
    assert auction_from({"ts": "yesterday"}, AGENT, seq=2) is None
