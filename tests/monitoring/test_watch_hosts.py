"""``agoramesh watch`` and agents hosted in one process: their host's batches and its bye.

A host (nodes/host.py) beats for its agents in one ``heartbeat_batch`` and one
``telemetry_batch`` a beat; the view applies an entry only to an agent whose
own signed card body named the batch's signer as its ``host``. Fed sealed
envelopes first, then a real :class:`AgentHost` on a real nats-server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.admission import Guard
from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import Envelope, seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.subjects import Subjects
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.records import Presence
from agoramesh.monitoring.screen import render
from agoramesh.monitoring.watcher import MeshWatcher
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.presence import MAX_BATCH
from agoramesh.observability.stats import AgentMetrics
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import BusFactory

T0 = 1_700_000_000.0  # the view's clock: every call passes ``now``
SUBJECTS = Subjects()
GUARD = Guard(EnvelopePolicy())


def admitted(identity: Identity, type: str, subject: str, body: Any) -> Envelope:
    """What a watcher's bus hands over: sealed by ``identity``, admitted by a Guard."""
    return GUARD.admit(seal(identity, type=type, subject=subject, body=body), subject)


class Hosted:
    """One fake agent speaking the real wire, naming ``host`` (an id, or "") in its card."""

    def __init__(self, name: str, host: str = "") -> None:
        self.identity = Identity.generate()
        self.id = self.identity.agent_id
        self.name = name
        self.host = host
        self.card = AgentCard(id=self.id, name=name, type="offline", version="1",
                              endpoint=SUBJECTS.agent(self.id),
                              capabilities=(Capability(name="echo"),))
        self.status = AgentStatus(capacity=8)
        self.metrics = AgentMetrics()
        self.rejections: dict[str, int] = {}

    def body(self) -> dict[str, Any]:
        body = {"card": self.card.as_dict(), "status": self.status.as_dict(),
                "interval": 1.0, "digest": "d"}
        return body | ({"host": self.host} if self.host else {})

    def hello(self) -> Envelope:
        return admitted(self.identity, "hello", SUBJECTS.presence(self.id), self.body())

    def card_reply(self) -> Envelope:
        return admitted(self.identity, "card", "_INBOX.watch.card", self.body())

    def discovery(self) -> Envelope:
        return admitted(self.identity, "discovery", "_INBOX.watch", self.body())

    def bye(self) -> Envelope:
        return admitted(self.identity, "bye", SUBJECTS.presence(self.id), {})

    def beat(self, **status: Any) -> dict[str, Any]:
        """This agent's entry in a heartbeat batch."""
        if status:
            self.status = AgentStatus(**{**vars(self.status), **status})
        return {"id": self.id, "status": self.status.as_dict(), "digest": "d"}

    def telemetry(self) -> dict[str, Any]:
        """This agent's entry in a telemetry batch."""
        return {"id": self.id, "name": self.name, "type": "offline",
                "status": self.status.as_dict(), **self.metrics.totals(),
                "rejections": self.rejections, "denied": {},
                "recent": self.metrics.take_recent()}


class Host:
    """One fake host: its own identity, no card; batches and a bye on its own subjects."""

    def __init__(self, interval: float = 1.0) -> None:
        self.identity = Identity.generate()
        self.id = self.identity.agent_id
        self.interval = interval

    def agent(self, name: str) -> Hosted:
        return Hosted(name, host=self.id)

    def heartbeats(self, entries: list[Any], *, subject: str | None = None) -> Envelope:
        return admitted(self.identity, "heartbeat_batch", subject or SUBJECTS.presence(self.id),
                        {"interval": self.interval, "beats": entries})

    def telemetry(self, entries: list[Any], *, subject: str | None = None) -> Envelope:
        return admitted(self.identity, "telemetry_batch",
                        subject or f"agora.telemetry.{self.id}", {"agents": entries})

    def bye(self) -> Envelope:
        return admitted(self.identity, "bye", SUBJECTS.presence(self.id), {})


# -- the model -------------------------------------------------------------------------

def test_a_heartbeat_batch_beats_only_for_the_agents_whose_card_named_its_host() -> None:
    view = MeshView(started=T0, missed=3)
    host, other = Host(interval=0.5), Host()
    one, two = host.agent("one"), host.agent("two")
    stranger = other.agent("stranger")  # its card names another host
    alone = Hosted("alone")  # its card names none: it beats itself
    view.ingest(one.hello(), now=T0)
    view.ingest(two.card_reply(), now=T0)
    view.ingest(stranger.discovery(), now=T0)
    view.ingest(alone.hello(), now=T0)
    assert view.agents[one.id].host == host.id and view.agents[two.id].host == host.id
    assert view.agents[stranger.id].host == other.id and view.agents[alone.id].host == ""

    batch: list[Any] = [one.beat(in_flight=3, tasks_completed=7), two.beat(tasks_failed=2),
                        stranger.beat(in_flight=8, tasks_completed=999),
                        alone.beat(in_flight=8, tasks_completed=999),
                        None, "junk", 42, {"id": 5}, {"status": {}}, {"id": ""}]  # skipped, no harm
    assert view.ingest(host.heartbeats(batch), now=T0 + 2)
    first, second = view.agents[one.id], view.agents[two.id]
    assert (first.status.in_flight, first.status.tasks_completed) == (3, 7)
    assert second.status.tasks_failed == 2
    assert first.interval == second.interval == 0.5  # the batch's interval
    assert first.last_seen == second.last_seen == T0 + 2
    for untouched in (view.agents[stranger.id], view.agents[alone.id]):
        assert untouched.status.tasks_completed == 0 and untouched.last_seen == T0
    # The batch kept the hosted agents live; the others fell silent (3 x 1 s).
    assert view.agents[one.id].presence(T0 + 3, 3) is Presence.LIVE
    assert view.agents[stranger.id].presence(T0 + 3.5, 3) is Presence.LOST
    assert view.live_count(T0 + 3.4) == 2

    # The other host cannot speak for one and two either; on someone else's subject, no one.
    assert not view.ingest(other.heartbeats([one.beat(in_flight=0)]), now=T0 + 3)
    assert view.agents[one.id].status.in_flight == 3
    assert not view.ingest(host.heartbeats([one.beat(in_flight=1)],
                                           subject=SUBJECTS.presence(one.id)), now=T0 + 3)
    assert not view.ingest(host.telemetry([one.telemetry()],
                                          subject=f"agora.telemetry.{one.id}"), now=T0 + 3)
    assert view.agents[one.id].status.in_flight == 3 and not view.agents[one.id].has_telemetry
    # Unusable batches change nothing.
    for body in ({"interval": 1.0, "beats": "all"}, {"interval": 1.0},
                 {"interval": 1.0, "beats": [one.beat()] * (MAX_BATCH + 1)}):
        assert not view.ingest(admitted(host.identity, "heartbeat_batch",
                                        SUBJECTS.presence(host.id), body), now=T0 + 3)
    assert not view.ingest(admitted(host.identity, "heartbeat_batch",
                                    SUBJECTS.presence(host.id), ["not", "a", "map"]), now=T0 + 3)
    assert view.agents[one.id].last_seen == T0 + 2
    assert host.id not in view.agents and other.id not in view.agents  # a host is no agent


def test_a_malformed_host_in_a_card_names_no_host() -> None:
    view = MeshView(started=T0)
    host = Host()
    liar = Hosted("liar", host="not-an-agent-id")
    view.ingest(liar.hello(), now=T0)
    assert view.agents[liar.id].host == ""
    entry = liar.beat(in_flight=5)
    view.ingest(host.heartbeats([entry]), now=T0 + 1)
    assert view.agents[liar.id].status.in_flight == 0


def test_agents_a_batch_names_before_their_card_are_not_shown_but_listed_for_a_fetch() -> None:
    view = MeshView(started=T0, missed=3)
    host, other = Host(), Host()
    newcomer, impostor = host.agent("newcomer"), other.agent("impostor")
    # The host names two agents we have no card of; one card will name another host.
    assert view.ingest(host.heartbeats([newcomer.beat(in_flight=2), impostor.beat()]), now=T0)
    assert view.ingest(host.telemetry([newcomer.telemetry(), impostor.telemetry()]), now=T0)
    assert view.agents == {} and view.rows(T0) == [] and view.live_count(T0) == 0
    assert "newcomer" not in render(view, 120, 20, T0) and "0 agents" in render(view, 120, 20, T0)
    assert view.snapshot(T0)["agents"] == []
    assert set(view.missing_cards(T0)) == {newcomer.id, impostor.id}

    # The cards come back: one names the host, so its later batches apply; one does not.
    view.ingest(newcomer.card_reply(), now=T0 + 0.5)
    view.ingest(impostor.card_reply(), now=T0 + 0.5)
    assert view.missing_cards(T0 + 0.5) == []
    view.ingest(host.heartbeats([newcomer.beat(in_flight=4), impostor.beat(in_flight=4)]),
                now=T0 + 1)
    assert view.agents[newcomer.id].status.in_flight == 4
    assert view.agents[impostor.id].status.in_flight == 0
    assert [row.name for row in view.rows(T0 + 1)] == ["impostor", "newcomer"]
    assert view.missing_cards(T0 + 1) == []  # a live agent of another host: not asked again

    # Named, never answered, no longer named: after missed beats it is asked no more.
    ghost = host.agent("ghost")
    view.ingest(host.heartbeats([ghost.beat()]), now=T0 + 2)
    assert view.missing_cards(T0 + 4.9) == [ghost.id]
    assert view.missing_cards(T0 + 5.1) == []
    view.prune(T0 + 5.1)
    assert ghost.id not in view.agents
    # Ids that are no agent ids are never asked for (they would be subjects to request).
    view.ingest(host.heartbeats([{"id": "agora.>"}, {"id": "x"}]), now=T0 + 6)
    assert view.missing_cards(T0 + 6) == []


def test_unknown_agents_are_remembered_within_a_bound() -> None:
    view = MeshView(started=T0)
    host = Host()
    ids = [Identity.generate().agent_id for _ in range(4096 + 100)]
    for start in range(0, len(ids), MAX_BATCH):
        view.ingest(host.heartbeats([{"id": agent_id, "status": {}}
                                     for agent_id in ids[start:start + MAX_BATCH]]), now=T0)
    missing = view.missing_cards(T0)
    assert len(missing) == 4096 and missing == ids[100:]  # the oldest forgotten first
    assert view.agents == {}


def test_a_host_bye_takes_along_every_agent_that_named_it() -> None:
    view = MeshView(started=T0, linger=30.0)
    host, other = Host(), Host()
    hosted = [host.agent(name) for name in ("a", "b", "c")]
    elsewhere, alone = other.agent("elsewhere"), Hosted("alone")
    for agent in (*hosted, elsewhere, alone):
        view.ingest(agent.hello(), now=T0)
    view.ingest(hosted[2].bye(), now=T0 + 0.5)  # one left on its own before
    pending = host.agent("pending")
    view.ingest(host.heartbeats([pending.beat()]), now=T0 + 0.5)
    assert pending.id in view.missing_cards(T0 + 0.5)

    assert view.ingest(host.bye(), now=T0 + 1)
    left = [e.agent for e in view.events if e.kind == "agent" and e.outcome == "left"]
    assert sorted(left) == sorted(a.id for a in hosted)  # one "left" each, c's own included
    for agent in hosted:
        assert view.agents[agent.id].presence(T0 + 1, 3) is Presence.LEFT
    assert view.agents[hosted[0].id].left_at == T0 + 1
    for agent in (elsewhere, alone):
        assert view.agents[agent.id].presence(T0 + 1, 3) is Presence.LIVE
    assert view.missing_cards(T0 + 1) == []  # its unknown agents went with it
    assert not view.ingest(host.bye(), now=T0 + 2)  # said twice: nothing more
    assert len([e for e in view.events if e.outcome == "left"]) == 3
    assert "2 agents (+3 gone)" in render(view, 120, 20, T0 + 1)
    view.prune(T0 + 32)
    assert set(view.agents) == {elsewhere.id, alone.id}


def test_a_telemetry_batch_counts_and_reports_per_agent() -> None:
    view = MeshView(started=T0, window=5.0)
    host, other = Host(), Host()
    desk, worker = host.agent("desk"), host.agent("worker")
    stranger = other.agent("stranger")
    for agent in (desk, worker, stranger):
        view.ingest(agent.hello(), now=T0)
    desk.metrics.auction_finished("echo", "awarded", 0.01, task_id="t1", bids=2,
                                  winner=worker.id)
    desk.metrics.bids["echo", "bid"] += 1
    worker.metrics.bids["echo", "bid"] += 2
    worker.metrics.bids["echo", "refuse"] += 1
    worker.metrics.task_finished("echo", "completed", 0.004, task_id="t1")
    worker.rejections = {"replayed": 2}
    stranger.metrics.auction_finished("echo", "awarded", 0.01, task_id="x", bids=1,
                                      winner=stranger.id)
    stranger.rejections = {"expired": 9}
    worker.status = AgentStatus(capacity=8, tasks_completed=1)
    entries = [desk.telemetry(), worker.telemetry(), stranger.telemetry(),
               {"id": 7, "auctions": {"awarded": 1000}}, None]
    assert view.ingest(host.telemetry(entries), now=T0 + 1)

    def nonzero(counts: dict[str, int]) -> dict[str, int]:
        return {key: count for key, count in counts.items() if count}

    assert nonzero(view.agents[desk.id].auctions) == {"awarded": 1}
    assert view.agents[desk.id].has_telemetry
    assert nonzero(view.agents[worker.id].bids) == {"bid": 2, "refuse": 1}
    assert view.agents[worker.id].status.tasks_completed == 1
    assert not view.agents[stranger.id].has_telemetry and view.agents[stranger.id].auctions == {}
    assert nonzero(view.totals()["auctions"]) == {"awarded": 1}
    assert nonzero(view.totals()["bids"]) == {"bid": 3, "refuse": 1}
    assert view.rejections() == {"replayed": 2}
    events = {(e.kind, e.agent, e.task_id) for e in view.events if e.kind != "agent"}
    assert events == {("auction", desk.id, "t1"), ("task", worker.id, "t1")}
    auction = next(e for e in view.events if e.kind == "auction")
    assert auction.winner == worker.id and auction.bids == 2
    frame = render(view, 140, 24, T0 + 1)
    assert "worker  (run by desk, 2 bids)" in frame and "rejected   replayed 2" in frame

    # Counters grow beat by beat: rates, as from an agent's own telemetry.
    for second in range(2, 7):
        desk.metrics.auction_finished("echo", "awarded", 0.01, task_id=f"t{second}", bids=1,
                                      winner=worker.id)
        worker.metrics.bids["echo", "bid"] += 2
        view.ingest(host.telemetry([desk.telemetry(), worker.telemetry()]), now=T0 + second)
    rates = view.rates(T0 + 6)
    assert rates.auctions_per_s == pytest.approx(1.0)
    assert rates.bids_per_s == pytest.approx(2.0)


# -- against a real host ------------------------------------------------------------------

async def start_hosted(url: str, count: int, interval: float = 0.2
                       ) -> tuple[AgentHost, list[AgentNode]]:
    """An AgentHost on ``url`` and ``count`` echo agents it hosts, all started."""
    host = AgentHost(BusConfig(servers=(url,)), heartbeat_interval=interval)
    await host.start()
    agents: list[AgentNode] = []
    try:
        for index in range(count):
            name = f"hosted-{index}"
            node = AgentNode(Identity.generate(),
                             NodeConfig(name=name, capabilities=capabilities_for("offline",
                                                                                 ["echo"]),
                                        heartbeat_interval=interval),
                             OfflineBackend(), BusConfig(servers=(url,), name=name), host=host)
            await node.start()
            agents.append(node)
    except BaseException:
        await host.stop(grace=1.0)
        raise
    return host, agents


async def stop_all(host: AgentHost, agents: list[AgentNode], watcher: MeshWatcher) -> None:
    await watcher.stop()
    async with asyncio.timeout(15):
        await host.stop(grace=1.0)  # stops its agents first
        for node in agents:
            await node.stop(grace=0.5)  # no-op for the stopped


@pytest.mark.integration
async def test_watcher_follows_hosted_agents_by_their_host_batches_until_it_stops(
        nats_server: EmbeddedServer, bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    view = MeshView(server=url)
    bus: Bus = await bus_factory(url)
    watcher = MeshWatcher(bus, view)
    await watcher.start()  # before the agents: it hears their hellos
    host, agents = await start_hosted(url, 5)
    try:
        ids = {node.agent_id for node in agents}

        def all_live_with_telemetry() -> bool:
            now = time.time()
            return all(agent_id in view.agents and view.agents[agent_id].has_telemetry
                       and view.agents[agent_id].presence(now, view.missed) is Presence.LIVE
                       for agent_id in ids)

        await wait_until(all_live_with_telemetry, timeout=5)
        assert set(view.agents) == ids  # the host is no agent
        assert all(view.agents[i].host == host.agent_id and view.agents[i].has_card
                   for i in ids)
        assert all(view.agents[i].interval == pytest.approx(0.2) for i in ids)
        # They stay live on the batches alone: well past 3 of their (0.2 s) beats.
        await asyncio.sleep(1.0)
        assert all_live_with_telemetry()

        # Work reported by the host's telemetry batch, per agent.
        result = await agents[0].dispatcher.submit("echo", {"text": "hi"}, timeout=5)
        winner = result.agent_id
        assert winner in ids

        def reported() -> bool:
            kinds = {(e.kind, e.outcome) for e in view.events}
            return {("task", "completed"), ("auction", "awarded")} <= kinds

        await wait_until(reported, timeout=5)
        auction = next(e for e in view.events if e.kind == "auction")
        assert auction.agent == agents[0].agent_id and auction.winner == winner
        await wait_until(lambda: view.agents[winner].status.tasks_completed == 1,
                         timeout=3)
        assert view.agents[agents[0].agent_id].auctions.get("awarded") == 1

        await asyncio.wait_for(host.stop(grace=1.0), timeout=15)
        await wait_until(lambda: all(view.agents[i].presence(time.time(), view.missed)
                                     is Presence.LEFT for i in ids), timeout=3)
        left = [e.agent for e in view.events if e.kind == "agent" and e.outcome == "left"]
        assert sorted(left) == sorted(ids)  # one each: their byes, then the host's
        frame = render(view, 120, 30, time.time())
        assert "0 agents (+5 gone)" in frame
    finally:
        await stop_all(host, agents, watcher)


@pytest.mark.integration
async def test_a_watcher_started_after_hosted_agents_learns_them_from_the_batches(
        nats_server: EmbeddedServer, bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    host, agents = await start_hosted(url, 5)
    view = MeshView(server=url)
    watcher = MeshWatcher(await bus_factory(url), view)
    try:
        await watcher.start()  # no discovery: only the host's batches (every 0.2 s) tell of them
        ids = {node.agent_id for node in agents}

        def learned() -> bool:
            now = time.time()
            return all(agent_id in view.agents and view.agents[agent_id].has_card
                       and view.agents[agent_id].has_telemetry
                       and view.agents[agent_id].presence(now, view.missed) is Presence.LIVE
                       for agent_id in ids)

        await wait_until(learned, timeout=5)
        assert set(view.agents) == ids
        assert all(view.agents[i].host == host.agent_id for i in ids)
        assert {row.name for row in view.rows(time.time())} == {f"hosted-{i}" for i in range(5)}
        assert all(row.capabilities == ("echo",) for row in view.agents.values())
        assert view.missing_cards(time.time()) == []
        await wait_until(lambda: not watcher._fetches, timeout=3)  # every fetch done
    finally:
        await stop_all(host, agents, watcher)
    assert not watcher._fetches  # nothing left running
