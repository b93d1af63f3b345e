"""The model and frame behind ``agoramesh watch``: fed real envelopes, then real agents."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agoramesh.bus.admission import Guard
from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import Envelope, seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import names_for
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.subjects import Subjects
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import JetStreamUnavailable
from agoramesh.monitoring.job_queue import JobQueue, read_job_queue
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.records import Presence
from agoramesh.monitoring.screen import natural_height, render
from agoramesh.monitoring.watcher import MeshWatcher
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus
from agoramesh.observability.stats import AgentMetrics
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

T0 = 1_700_000_000.0  # the view's clock: every call passes ``now``
SUBJECTS = Subjects()


class Agent:
    """One fake agent that speaks the real wire: sealed, then admitted by a Guard."""

    guard = Guard(EnvelopePolicy())

    def __init__(self, name: str, capabilities: tuple[str, ...] = ("echo",), *,
                 interval: float = 1.0, capacity: int = 8) -> None:
        self.identity = Identity.generate()
        self.id = self.identity.agent_id
        self.name = name
        self.interval = interval
        self.card = AgentCard(id=self.id, name=name, type="offline", version="1",
                              endpoint=SUBJECTS.agent(self.id),
                              capabilities=tuple(Capability(name=c) for c in capabilities))
        self.status = AgentStatus(capacity=capacity)
        self.metrics = AgentMetrics()
        self.rejections: dict[str, int] = {}

    def envelope(self, type: str, subject: str, body: Any) -> Envelope:
        wire = seal(self.identity, type=type, subject=subject, body=body)
        return self.guard.admit(wire, subject)

    def hello(self) -> Envelope:
        return self.envelope("hello", SUBJECTS.presence(self.id), {
            "card": self.card.as_dict(), "status": self.status.as_dict(),
            "interval": self.interval, "digest": "d"})

    def discovery(self) -> Envelope:
        return self.envelope("discovery", "_INBOX.watch", {
            "card": self.card.as_dict(), "status": self.status.as_dict(),
            "interval": self.interval, "digest": "d"})

    def heartbeat(self, **status: Any) -> Envelope:
        if status:
            self.status = AgentStatus(**{**vars(self.status), **status})
        return self.envelope("heartbeat", SUBJECTS.presence(self.id), {
            "status": self.status.as_dict(), "interval": self.interval, "digest": "d"})

    def telemetry(self) -> Envelope:
        return self.envelope("telemetry", f"agora.telemetry.{self.id}", {
            "name": self.name, "type": "offline", "status": self.status.as_dict(),
            **self.metrics.totals(), "rejections": self.rejections,
            "recent": self.metrics.take_recent()})

    def bye(self) -> Envelope:
        return self.envelope("bye", SUBJECTS.presence(self.id), {})

    def cfp(self, auction_id: str) -> Envelope:
        return self.envelope("cfp", SUBJECTS.cfp("echo"), {
            "auction_id": auction_id, "task": {"task_id": auction_id, "task_type": "echo"}})


def lines_of(frame: str) -> list[str]:
    return frame.split("\n")


# -- the model -------------------------------------------------------------------------

def test_presence_builds_the_table_and_the_frame_shows_it() -> None:
    view = MeshView(server="nats://127.0.0.1:4222", started=T0)
    coder, runner = Agent("coder", ("code.generate.python", "code.review.python")), Agent("runner")
    assert view.ingest(coder.hello(), now=T0)
    assert view.ingest(runner.discovery(), now=T0)
    assert view.ingest(coder.heartbeat(in_flight=2, tasks_completed=9, tasks_failed=1,
                                       avg_latency_ms=12.5, success_rate=0.9), now=T0 + 1)
    assert [row.name for row in view.rows(T0 + 1)] == ["coder", "runner"]
    frame = render(view, 120, 20, T0 + 1)
    lines = lines_of(frame)
    assert len(lines) == 20 and all(len(line) <= 120 for line in lines)
    assert "nats://127.0.0.1:4222 · 2 agents" in lines[0]
    row = next(line for line in lines if line.startswith("coder"))
    assert "2/8 ██░░░░░░" in row and "ready" in row
    assert row.split()[5:9] == ["9", "1", "90", "12.5"]  # done, failed, ok%, latency
    assert "code.generate.python, code.review.python" in row
    runner_row = next(line for line in lines if line.startswith("runner"))
    assert "0/8 ░░░░░░░░" in runner_row and " - " in runner_row  # nothing done: no ok%
    assert "\x1b" not in frame


def test_rates_are_counter_deltas_over_the_window() -> None:
    view = MeshView(started=T0, window=5.0)
    agent = Agent("analyst")
    view.ingest(agent.discovery(), now=T0)  # arrives having done 100 tasks already
    view.ingest(agent.heartbeat(tasks_completed=100), now=T0)
    # Its first telemetry reports 40 auctions run before we listened: not a rate.
    for _ in range(40):
        agent.metrics.auction_finished("echo", "awarded", 0.01, task_id="old", bids=1,
                                       winner=agent.id)
    view.ingest(agent.telemetry(), now=T0 + 1)
    assert view.rates(T0 + 1).auctions_per_s == 0
    for second in range(2, 7):  # then 2 tasks and 1 auction a second for 5 seconds
        agent.metrics.auction_finished("echo", "awarded", 0.01, task_id=f"t{second}",
                                       bids=2, winner=agent.id)
        agent.metrics.bids["echo", "bid"] += 3
        view.ingest(agent.heartbeat(tasks_completed=100 + 2 * (second - 1)), now=T0 + second)
        view.ingest(agent.telemetry(), now=T0 + second)
    rates = view.rates(T0 + 6)
    assert rates.tasks_per_s == pytest.approx(2.0)  # 10 tasks in 5 s
    assert rates.auctions_per_s == pytest.approx(1.0)
    assert rates.bids_per_s == pytest.approx(3.0)
    # Quiet for a window: the rates fall to zero.
    view.ingest(agent.heartbeat(), now=T0 + 12)
    assert view.rates(T0 + 12).tasks_per_s == 0


def test_auctions_heard_as_calls_for_proposals_count_once_each() -> None:
    """A client (agoramesh submit) runs auctions without telemetry; its CFPs show them."""
    view = MeshView(started=T0, window=5.0)
    client = Agent("client")
    for index, auction in enumerate(["a1", "a2", "a2", "a3"]):  # a2 re-auctioned
        view.ingest(client.cfp(auction), now=T0 + index)
    assert view.rates(T0 + 4).auctions_per_s == pytest.approx(3 / 4)
    assert view.rates(T0 + 9.5).auctions_per_s == 0
    assert not view.agents  # a call for proposals says nothing about who is on the mesh


def test_recent_events_come_from_telemetry_newest_first_with_names() -> None:
    view = MeshView(started=T0)
    desk, worker = Agent("desk"), Agent("worker")
    for agent in (desk, worker):
        view.ingest(agent.hello(), now=T0)
    worker.metrics.task_finished("echo", "completed", 0.004, task_id="t1")
    desk.metrics.auction_finished("echo", "awarded", 0.012, task_id="t1", bids=2,
                                  winner=worker.id)
    desk.metrics.auction_finished("echo", "no_bidders", 0.5, task_id="t2", bids=0,
                                  winner=None)
    desk.metrics.auction_finished("echo", "awarded", 0.002, task_id="t3", bids=0,
                                  winner=worker.id)  # a direct award: no bid asked
    view.ingest(worker.telemetry(), now=T0 + 1)
    view.ingest(desk.telemetry(), now=T0 + 1)
    snapshot = view.snapshot(T0 + 1)
    kinds = [(e["kind"], e["outcome"]) for e in snapshot["recent"] if e["kind"] != "agent"]
    assert kinds == [("task", "completed"), ("auction", "awarded"), ("auction", "no_bidders"),
                     ("auction", "awarded")]
    awarded = next(e for e in snapshot["recent"] if e["outcome"] == "awarded")
    assert awarded["agent_name"] == "desk" and awarded["winner_name"] == "worker"
    assert snapshot["totals"]["auctions"] == {"awarded": 2, "no_bidders": 1, "overloaded": 0,
                                              "failed": 0, "timeout": 0}
    lines = lines_of(render(view, 120, 30, T0 + 1))
    recent = lines[next(i for i, line in enumerate(lines) if line.startswith("RECENT")) + 1:]
    assert "awarded" in recent[0] and "worker  (run by desk, direct)" in recent[0]
    assert "no_bidders" in recent[1] and "500.0" in recent[1]
    assert "awarded" in recent[2] and "worker  (run by desk, 2 bids)" in recent[2]
    assert recent[3].split()[1:5] == ["task", "echo", "completed", "4.0"]
    assert recent[3].rstrip().endswith("worker")
    assert "joined" in recent[4]  # desk's hello
    json.dumps(snapshot)  # JSON-ready as it is


def test_bye_and_silence_mark_agents_gone_then_they_are_dropped() -> None:
    view = MeshView(started=T0, missed=3, linger=30.0)
    leaver, silent, steady = Agent("leaver"), Agent("silent", interval=0.5), Agent("steady")
    for agent in (leaver, silent, steady):
        view.ingest(agent.hello(), now=T0)
    view.ingest(leaver.bye(), now=T0 + 1)
    for second in range(1, 40):
        view.ingest(steady.heartbeat(), now=T0 + second)
    assert view.agents[leaver.id].presence(T0 + 1, 3) is Presence.LEFT
    assert view.agents[silent.id].presence(T0 + 1.4, 3) is Presence.LIVE
    assert view.agents[silent.id].presence(T0 + 1.6, 3) is Presence.LOST  # 3 x 0.5 s
    view.prune(T0 + 2)
    assert view.live_count(T0 + 2) == 1
    frame = render(view, 120, 20, T0 + 2)
    assert "1 agent (+2 gone)" in frame
    assert [line.split()[0] for line in lines_of(frame)[3:6]] == ["steady", "leaver", "silent"]
    assert [line.split()[2] for line in lines_of(frame)[3:6]] == ["ready", "left", "lost"]
    outcomes = [(e.outcome, view.names()[e.agent]) for e in view.events]
    assert ("left", "leaver") in outcomes and ("lost", "silent") in outcomes
    view.prune(T0 + 32)  # gone for longer than linger
    assert set(view.agents) == {steady.id}
    # A lost agent that speaks again is back.
    view.ingest(silent.hello(), now=T0 + 33)
    assert view.live_count(T0 + 33) == 2


def test_spoofed_and_malformed_messages_are_ignored_without_harm() -> None:
    view = MeshView(started=T0)
    honest, liar = Agent("honest"), Agent("liar")
    view.ingest(honest.hello(), now=T0)
    # Presence for someone else, on their subject: not admitted into the view.
    assert not view.ingest(liar.envelope("bye", SUBJECTS.presence(honest.id), {}), now=T0)
    assert view.live_count(T0) == 1
    # A card naming another agent.
    forged = {"card": {**honest.card.as_dict(), "name": "evil"}, "status": {}}
    assert not view.ingest(liar.envelope("discovery", "_INBOX.x", forged), now=T0)
    assert view.agents[honest.id].name == "honest"
    # Garbage fields: kept out, never raised.
    junk = {"name": 7, "status": {"capacity": "many", "in_flight": None, "state": 3},
            "auctions": {"awarded": -1, "timeout": "x", "no_bidders": 2}, "bids": [1],
            "rejections": {"replayed": True, "expired": 4},
            "recent": [None, {"kind": "task"}, {"kind": "auction", "ts": "now"},
                       {"kind": "task", "ts": T0, "ms": "slow", "bids": True}]}
    assert view.ingest(liar.envelope("telemetry", f"agora.telemetry.{liar.id}", junk), now=T0)
    record = view.agents[liar.id]
    assert record.status.capacity == 1 and record.status.state == "3"
    assert record.auctions == {"no_bidders": 2} and record.rejections == {"expired": 4}
    assert [e.ms for e in view.events if e.kind == "task"] == [None]
    assert view.ingest(liar.envelope("heartbeat", SUBJECTS.presence(liar.id), "not a map"),
                       now=T0) is False
    render(view, 80, 24, T0)
    json.dumps(view.snapshot(T0))


def test_agents_heard_without_a_card_are_named_by_telemetry_and_listed_for_a_fetch() -> None:
    view = MeshView(started=T0)
    late = Agent("late")
    view.ingest(late.heartbeat(), now=T0)
    assert view.missing_cards(T0) == [late.id]
    assert "(card pending)" in render(view, 120, 12, T0)
    view.ingest(late.telemetry(), now=T0)
    assert view.agents[late.id].name == "late"
    view.ingest(late.envelope("card", "_INBOX.card", {"card": late.card.as_dict(),
                                                       "status": {}, "interval": 1.0}), now=T0)
    assert view.missing_cards(T0) == []


def test_rejections_are_summed_across_agents_most_frequent_first() -> None:
    view = MeshView(started=T0)
    first, second = Agent("first"), Agent("second")
    first.rejections = {"expired": 1, "replayed": 2}
    second.rejections = {"replayed": 3, "bad_signature": 1}
    view.ingest(first.telemetry(), now=T0)
    view.ingest(second.telemetry(), now=T0)
    assert view.rejections() == {"replayed": 5, "bad_signature": 1, "expired": 1}
    assert "rejected   replayed 5 · bad_signature 1 · expired 1" in render(view, 120, 20, T0)
    assert "rejected   none" in render(MeshView(started=T0), 120, 20, T0)


QUEUE = JobQueue(queued=12, running=3, redelivered=1, results=1204, results_bytes=65536)


def test_the_jobs_line_shows_the_job_store_while_it_answers() -> None:
    view = MeshView(started=T0)
    agent = Agent("worker")
    view.ingest(agent.hello(), now=T0)
    without = natural_height(view)
    assert not any(line.startswith("jobs ") for line in lines_of(render(view, 120, 20, T0)))
    assert view.snapshot(T0)["jobs"] is None

    view.set_jobs(QUEUE)
    lines = lines_of(render(view, 120, 20, T0))
    rejected = next(i for i, line in enumerate(lines) if line.startswith("rejected"))
    assert lines[rejected + 1] == ("jobs       12 queued · 3 running · 1,204 results"
                                   " · 1 redelivered")
    assert lines[rejected + 2] == "" and lines[rejected + 3].startswith("RECENT")
    assert lines[3].startswith("worker")  # the table keeps its place
    assert natural_height(view) == without + 1
    assert json.loads(json.dumps(view.snapshot(T0)))["jobs"] == {
        "queued": 12, "running": 3, "redelivered": 1, "results": 1204, "results_bytes": 65536}

    view.set_jobs(JobQueue(queued=0, running=0, redelivered=0, results=1, results_bytes=9))
    assert "jobs       0 queued · 0 running · 1 result\n" in render(view, 120, 20, T0)
    view.set_jobs(None)  # JetStream stopped answering: the line goes
    assert "jobs " not in render(view, 120, 20, T0)


def test_job_queue_counts_come_from_consumer_and_result_stream_info() -> None:
    consumer = {"num_pending": 12, "num_ack_pending": 3, "num_redelivered": 1,
                "num_waiting": 4, "delivered": {"stream_seq": 40}}
    results = {"config": {"name": "KV_AGORA_RESULTS"},
               "state": {"messages": 1204, "bytes": 65536, "first_seq": 1}}
    assert JobQueue.from_info(consumer, results) == QUEUE
    # Whatever a server sends, the counts are counts.
    assert JobQueue.from_info({"num_pending": "12", "num_ack_pending": -1,
                               "num_redelivered": True}, {"state": None}) == JobQueue(
        queued=0, running=0, redelivered=0, results=0, results_bytes=0)


class FakeStore:
    """What read_job_queue asks of a JetStream; ``mode``: answer, refuse or hang."""

    names = names_for("agora")

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def consumer_info(self) -> dict[str, Any]:
        if self.mode == "refuse":
            raise JetStreamUnavailable("no JetStream answers")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return {"num_pending": 12, "num_ack_pending": 3, "num_redelivered": 1}

    async def stream_info(self, stream: str | None = None) -> dict[str, Any]:
        assert stream == "KV_AGORA_RESULTS"
        return {"state": {"messages": 1204, "bytes": 65536}}


async def test_reading_the_job_queue_is_bounded_and_never_raises() -> None:
    assert await read_job_queue(FakeStore("answer"), 1.0) == QUEUE  # type: ignore[arg-type]
    assert await read_job_queue(FakeStore("refuse"), 1.0) is None  # type: ignore[arg-type]
    hung = read_job_queue(FakeStore("hang"), 0.1)  # type: ignore[arg-type]
    assert await asyncio.wait_for(hung, 10) is None


# -- the frame -------------------------------------------------------------------------

def crowded_view() -> MeshView:
    view = MeshView(server="nats://127.0.0.1:4222", started=T0)
    for index in range(30):
        agent = Agent(f"agent-{index:02}-with-a-rather-long-name",
                      tuple(f"skill.number{n}.python" for n in range(6)))
        view.ingest(agent.hello(), now=T0)
        for task in range(4):
            agent.metrics.task_finished(f"skill.number{task}.python", "completed", 0.1234,
                                        task_id=f"{index}-{task}")
        view.ingest(agent.telemetry(), now=T0 + 1)
    return view


@pytest.mark.parametrize("width", [10, 30, 57, 80, 120, 200])
@pytest.mark.parametrize("height", [1, 2, 5, 9, 12, 24, 50, 200])
def test_every_frame_has_exactly_the_size_asked_for(width: int, height: int) -> None:
    with_jobs = crowded_view()
    with_jobs.set_jobs(QUEUE)
    for view in (crowded_view(), MeshView(started=T0), with_jobs):
        lines = lines_of(render(view, width, height, T0 + 1))
        assert len(lines) == height
        assert all(len(line) <= width for line in lines)
        assert all("\n" not in line and "\x1b" not in line for line in lines)


def test_a_short_screen_keeps_agents_over_old_events_and_sums_up_the_rest() -> None:
    view = crowded_view()
    lines = lines_of(render(view, 120, 24, T0 + 1))
    hidden = next(line for line in lines if line.startswith("… and "))
    # 24 lines - 8 fixed - 3 events = 13 for agents: 12 rows, then this one.
    assert hidden == "… and 18 more agents"
    start = next(i for i, line in enumerate(lines) if line.startswith("RECENT"))
    assert len([line for line in lines[start + 1:] if line]) == 3
    tall = render(view, 120, natural_height(view), T0 + 1)
    assert "… and" not in tall
    assert all(f"agent-{index:02}-with" in tall for index in range(30))


def test_an_empty_mesh_says_what_it_is_waiting_for() -> None:
    frame = render(MeshView(server="nats://h:1", started=T0), 100, 14, T0)
    assert "(no agents yet: listening for presence on nats://h:1)" in frame
    assert "(no tasks or auctions yet)" in frame
    assert "0 agents · auctions/s 0.0 · tasks/s 0.0 · bids/s 0.0" in frame


# -- against real agents ---------------------------------------------------------------

@pytest.mark.integration
async def test_watcher_follows_real_agents_tasks_auctions_and_a_bye(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    desk = await agent_factory(url, "desk", ["math.evaluate"])
    worker = await agent_factory(url, "worker", ["echo"])
    view = MeshView(server=url)
    bus: Bus = await bus_factory(url)
    watcher = MeshWatcher(bus, view)
    await watcher.start()
    try:
        await watcher.discover(0.3)  # already on the mesh: they answer discovery
        assert {row.name for row in view.rows(view.started)} == {"desk", "worker"}
        assert all(row.has_card for row in view.agents.values())

        result = await desk.dispatcher.submit("echo", {"text": "hi"}, timeout=5)
        assert result.agent_id == worker.agent_id

        def reported() -> bool:
            kinds = {(e.kind, e.outcome) for e in view.events}
            return {("task", "completed"), ("auction", "awarded")} <= kinds

        await wait_until(reported, timeout=3)  # telemetry comes a heartbeat (0.2 s) later
        auction = next(e for e in view.events if e.kind == "auction")
        assert auction.agent == desk.agent_id and auction.winner == worker.agent_id
        assert view.agents[worker.agent_id].status.tasks_completed == 1
        assert view.agents[desk.agent_id].auctions["awarded"] == 1

        late = await agent_factory(url, "late", ["echo"])
        await wait_until(lambda: late.agent_id in view.agents, timeout=2)  # its hello
        await late.stop(grace=0.5)
        await wait_until(lambda: view.agents[late.agent_id].presence(time.time(), 3)
                         is Presence.LEFT, timeout=2)
        frame = render(view, 120, 30, time.time())
        assert "late" in frame and "left" in frame and "worker" in frame
    finally:
        await watcher.stop()


@pytest.mark.integration
async def test_a_watcher_that_missed_the_hellos_fetches_the_cards(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    agents = [await agent_factory(url, name, ["echo"]) for name in ("one", "two")]
    view = MeshView(server=url)
    watcher = MeshWatcher(await bus_factory(url), view)
    await watcher.start()  # no discovery: only heartbeats (every 0.2 s) tell of them
    try:
        await wait_until(lambda: all(a.agent_id in view.agents and view.agents[a.agent_id]
                                     .has_card for a in agents), timeout=3)
        assert {row.name for row in view.rows(time.time())} == {"one", "two"}
        assert all(row.capabilities == ("echo",) for row in view.agents.values())
    finally:
        await watcher.stop()
    assert not watcher._fetches  # nothing left running
