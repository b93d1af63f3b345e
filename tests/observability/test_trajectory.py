"""Telemetry beats and per-agent trajectories, on a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agoramesh.bus import Identity
from agoramesh.bus.bus import Delivery
from agoramesh.bus.server import EmbeddedServer
from agoramesh.nodes.task import TaskStatus
from agoramesh.observability.trajectory import Trajectory, read_trajectory
from agoramesh.protocols.auction.policy import AuctionPolicy
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

pytestmark = pytest.mark.integration


async def test_agents_publish_telemetry_with_counters_and_recent_events(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    watcher = await bus_factory(nats_server.client_url)
    beats: list[Delivery] = []

    async def heard(delivery: Delivery) -> None:
        beats.append(delivery)

    await watcher.subscribe(watcher.subjects.telemetry_all, heard)
    url = nats_server.client_url
    boss = await agent_factory(url, "boss", ["math.evaluate"], heartbeat_interval=0.1)
    worker = await agent_factory(url, "worker", ["echo"], heartbeat_interval=0.1)
    await wait_until(lambda: worker.agent_id in boss.directory.capable("echo"), timeout=5)
    result = await boss.dispatcher.submit("echo", {"text": "hi"}, timeout=5)
    assert result.status is TaskStatus.COMPLETED

    def events(agent_id: str, kind: str) -> list[dict[str, object]]:
        return [event for beat in beats if beat.sender == agent_id
                for event in beat.body["recent"] if event["kind"] == kind]

    await wait_until(lambda: events(boss.agent_id, "auction")
                     and events(worker.agent_id, "task"), timeout=5)
    [auction] = events(boss.agent_id, "auction")
    assert auction["outcome"] == "awarded" and auction["winner"] == worker.agent_id
    # The one agent known to offer echo was awarded directly: no bid, a direct round.
    assert auction["bids"] == 0 and auction["capability"] == "echo"
    assert [r.get("direct") for r in auction["rounds"]] == [worker.agent_id]
    [task] = events(worker.agent_id, "task")
    assert task["outcome"] == "completed" and task["task_id"] == result.task_id
    latest = [beat.body for beat in beats if beat.sender == boss.agent_id][-1]
    assert latest["name"] == "boss" and latest["type"] == "offline"
    assert latest["auctions"]["awarded"] == 1 and latest["bids"] == {"bid": 0, "refuse": 0}
    assert latest["status"]["capacity"] == 8
    assert all(beat.subject == watcher.subjects.telemetry(beat.sender or "")
               and beat.type == "telemetry" for beat in beats)
    # Each event is sent once: recent events drain with every beat.
    assert len(events(worker.agent_id, "task")) == 1


async def test_a_trajectory_records_what_each_side_saw_decided_and_sent(
        tmp_path: Path, nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    boss_path, worker_path = tmp_path / "boss.jsonl", tmp_path / "worker.jsonl"
    boss = await agent_factory(url, "boss", ["math.evaluate"],
                               trajectory=Trajectory(boss_path, agent="boss"),
                               auction_policy=AuctionPolicy(direct_award=False))  # a cfp
    worker_id = Identity.generate()
    worker = await agent_factory(url, "worker", ["echo"], identity=worker_id,
                                 trajectory=Trajectory(worker_path, agent="worker",
                                                       agent_id=worker_id.agent_id,
                                                       max_body_bytes=900))
    await wait_until(lambda: worker.agent_id in boss.directory.capable("echo"), timeout=5)
    result = await boss.dispatcher.submit("echo", {"text": "trace me"}, timeout=5)
    assert result.status is TaskStatus.COMPLETED
    big = await boss.dispatcher.submit("echo", {"text": "x" * 1000}, strategy="direct",
                                       timeout=5)
    assert big.status is TaskStatus.COMPLETED
    await boss.stop(grace=1.0)
    await worker.stop(grace=1.0)

    worker_events = read_trajectory(worker_path)
    boss_events = read_trajectory(boss_path)
    assert all(event["agent"] == "worker" for event in worker_events)

    def find(events: list[dict[str, object]], event: str, **fields: object) -> dict[str, object]:
        return next(e for e in events if e["event"] == event
                    and all(e.get(k) == v for k, v in fields.items()))

    cfp = find(worker_events, "saw", type="cfp", **{"from": boss.agent_id})
    bid = find(worker_events, "decided", action="bid", capability="echo")
    assert bid["auction_id"] == cfp["body"]["auction_id"]  # type: ignore[index]
    sent_bid = find(worker_events, "sent", type="bid")
    find(worker_events, "saw", type="award")
    find(worker_events, "decided", action="accept", task_id=result.task_id)
    find(worker_events, "decided", action="finish", task_id=result.task_id,
         outcome="completed")
    find(worker_events, "sent", type="task_response")
    award = find(boss_events, "decided", action="award", task_id=result.task_id)
    assert award["winner"] == worker.agent_id and award["bids"] == 1
    find(boss_events, "sent", type="cfp")
    find(boss_events, "saw", type="task_response")
    order = [id(e) for e in worker_events]
    assert order.index(id(cfp)) < order.index(id(bid)) < order.index(id(sent_bid))
    oversized = find(worker_events, "saw", type="task_request")
    assert "body" not in oversized and int(oversized["body_bytes"]) > 900  # type: ignore[call-overload]
    # Every line is one JSON object; the recorder stops at close.
    lines = worker_path.read_text().splitlines()
    assert len(lines) == len(worker_events) and all(json.loads(line) for line in lines)
    assert worker.trajectory is not None
    worker.trajectory.record("saw", {"type": "late"})
    assert len(worker_path.read_text().splitlines()) == len(lines)
    assert worker_events[0] == {"ts": worker_events[0]["ts"], "agent": "worker",
                                "event": "start", "agent_id": worker.agent_id}
    assert boss_events[0]["event"] == "start" and "agent_id" not in boss_events[0]
