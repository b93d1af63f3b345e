"""AgentHost: many agents in one process share a connection, a directory and one beat.

Real nats-servers; every wait bounded. The multi-process case (hosts in child
processes, an observer here) is in test_host_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError, ConfigError, RejectReason, SubjectError
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.presence import MAX_BATCH
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.testing.waiting import wait_until

pytestmark = pytest.mark.integration

BEAT = 0.2



@pytest.fixture
def mesh_url(nats_server: EmbeddedServer) -> str:
    return nats_server.client_url


def hosted(host: AgentHost, url: str, name: str, capability: str = "echo") -> AgentNode:
    return AgentNode(Identity.generate(),
                     NodeConfig(name=name, capabilities=capabilities_for("offline", [capability]),
                                heartbeat_interval=BEAT),
                     OfflineBackend(), BusConfig(servers=(url,), name=name), host=host)


@contextlib.asynccontextmanager
async def running_host(url: str, agents: int, *, name: str = "host"
                       ) -> AsyncIterator[tuple[AgentHost, list[AgentNode]]]:
    host = AgentHost(BusConfig(servers=(url,), name=name), name=name, heartbeat_interval=BEAT)
    await host.start()
    nodes = [hosted(host, url, f"{name}-{i:03d}") for i in range(agents)]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        yield host, nodes
    finally:
        await host.stop(grace=1.0)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    await wait_until(predicate, timeout=timeout, interval=0.01)


async def test_hosted_agents_share_one_connection_and_beat_in_batches(
        mesh_url: str, agent_factory: Callable[..., Awaitable[AgentNode]]) -> None:
    observer = await agent_factory(mesh_url, "observer", ["vote"])
    beats: list[str] = []  # senders of every (single) heartbeat the observer admits
    observer.bus.trace = lambda kind, fields: (
        beats.append(fields["from"]) if kind == "saw" and fields["type"] == "heartbeat" else None)
    async with running_host(mesh_url, 30) as (host, nodes):
        clients = {id(node.bus.connection.client) for node in nodes}
        assert clients == {id(host.bus.connection.client)}  # one socket for host and agents
        assert host.bus.connection.users == 31
        await wait_for(lambda: all(node.agent_id in observer.directory for node in nodes))
        before = observer.bus.received["heartbeat_batch"]
        await asyncio.sleep(6 * BEAT)  # twice the eviction horizon: batches keep them
        assert all(node.agent_id in observer.directory for node in nodes)
        assert observer.bus.received["heartbeat_batch"] - before >= 3
        assert set(beats) == {observer.agent_id}  # no hosted agent beats on its own
        entry = observer.directory.get(nodes[0].agent_id)
        assert entry is not None and entry.host == host.agent_id
        assert not observer.bus.rejections


async def test_hosted_agents_serve_tasks_discovery_and_the_services_protocol(
        mesh_url: str, bus_factory: Callable[..., Awaitable[Bus]]) -> None:
    async with running_host(mesh_url, 5) as (host, nodes):
        client = await bus_factory(mesh_url)
        result = await submit_task(client, Task(capability="echo", parameters={"text": "hi"}),
                                   agent_id=nodes[3].agent_id, timeout=5.0)
        assert result.status is TaskStatus.COMPLETED and result.agent_id == nodes[3].agent_id
        queued = await submit_task(client, Task(capability="echo", parameters={"text": "q"}),
                                   timeout=5.0)
        assert queued.agent_id in {node.agent_id for node in nodes}
        answers = await client.gather(client.subjects.discover, "discovery",
                                      {"capability": "echo"}, timeout=2.0, expected=5)
        assert {a.sender for a in answers} == {node.agent_id for node in nodes}
        assert all(a.body["host"] == host.agent_id for a in answers)  # signed by each agent
        with pytest.raises(SubjectError, match="bad capability pattern 'a b'"):
            await client.request(client.subjects.discover, "discovery", {"capability": "a b"},
                                 timeout=2.0)
        pings = await _collect(client, "$SRV.PING", expected=5)
        assert {p["id"] for p in pings} == {node.agent_id for node in nodes}
        service = nodes[2].service
        one = await _collect(client, f"$SRV.INFO.{service.name}.{service.id}", expected=1)
        assert [p["id"] for p in one] == [nodes[2].agent_id]
        assert one[0]["endpoints"][0]["subject"] == client.subjects.cap("echo")


async def _collect(bus: Bus, subject: str, *, expected: int) -> list[dict[str, object]]:
    import json

    inbox = bus.new_inbox()
    answers: list[dict[str, object]] = []
    done = asyncio.Event()

    async def heard(msg: object) -> None:
        answers.append(json.loads(msg.data))  # type: ignore[attr-defined]
        if len(answers) >= expected:
            done.set()

    subscription = await bus.nats.subscribe(inbox, cb=heard)
    try:
        await bus.nats.publish(subject, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await done.wait()
        await asyncio.sleep(0.1)  # and nobody answers twice
    finally:
        await subscription.unsubscribe()
    return answers


async def test_a_host_bye_drops_its_agents_and_a_killed_host_is_evicted(
        mesh_url: str, agent_factory: Callable[..., Awaitable[AgentNode]]) -> None:
    observer = await agent_factory(mesh_url, "observer", ["vote"])
    gone: dict[str, str] = {}
    observer.directory.on_leave.append(lambda agent_id, reason: gone.setdefault(agent_id,
                                                                                 reason))
    async with running_host(mesh_url, 10, name="polite") as (polite, polite_nodes), \
            running_host(mesh_url, 10, name="crashing") as (crashing, crashing_nodes):
        everyone = [*polite_nodes, *crashing_nodes]
        await wait_for(lambda: all(node.agent_id in observer.directory for node in everyone))
        await polite.stop(grace=1.0)
        await wait_for(lambda: all(node.agent_id in gone for node in polite_nodes), 3.0)
        assert {gone[node.agent_id] for node in polite_nodes} == {"bye"}
        assert all(node.agent_id in observer.directory for node in crashing_nodes)
        await crashing.kill()  # no bye: silence
        await wait_for(lambda: all(node.agent_id in gone for node in crashing_nodes), 5.0)
        assert {gone[node.agent_id] for node in crashing_nodes} == {"silent"}


async def test_one_agent_leaving_its_host_says_bye_and_the_rest_stay(
        mesh_url: str, agent_factory: Callable[..., Awaitable[AgentNode]]) -> None:
    observer = await agent_factory(mesh_url, "observer", ["vote"])
    async with running_host(mesh_url, 3) as (host, nodes):
        await wait_for(lambda: all(node.agent_id in observer.directory for node in nodes))
        await nodes[0].stop(grace=1.0)
        await wait_for(lambda: nodes[0].agent_id not in observer.directory, 3.0)
        assert list(host.agents) == [nodes[1].agent_id, nodes[2].agent_id]
        await asyncio.sleep(5 * BEAT)
        assert all(node.agent_id in observer.directory for node in nodes[1:])


async def test_an_observer_that_missed_the_hellos_learns_hosted_agents_from_batches(
        mesh_url: str, agent_factory: Callable[..., Awaitable[AgentNode]]) -> None:
    async with running_host(mesh_url, 12) as (host, nodes):
        late = await agent_factory(mesh_url, "late-observer", ["vote"])
        await wait_for(lambda: all(node.agent_id in late.directory for node in nodes))
        assert late.bus.sent["card_request"] >= 12
        assert {late.directory.get(node.agent_id).host for node in nodes  # type: ignore[union-attr]
                } == {host.agent_id}


async def test_a_batch_speaks_only_for_agents_that_named_its_host(
        mesh_url: str, agent_factory: Callable[..., Awaitable[AgentNode]],
        bus_factory: Callable[..., Awaitable[Bus]]) -> None:
    observer = await agent_factory(mesh_url, "observer", ["vote"])
    loner = await agent_factory(mesh_url, "loner", ["echo"], heartbeat_interval=BEAT)
    async with running_host(mesh_url, 2) as (host, nodes):
        await wait_for(lambda: all(n.agent_id in observer.directory for n in [loner, *nodes]))
        rogue = await bus_factory(mesh_url)
        subject = rogue.subjects.presence(rogue.agent_id)
        loner_entry = observer.directory.get(loner.agent_id)
        assert loner_entry is not None
        before = observer.bus.rejections.copy()
        victims = [loner.agent_id, nodes[0].agent_id]  # one beats itself, one has a host
        status = {"state": "busy", "capacity": 1, "in_flight": 1}
        await rogue.publish(subject, "heartbeat_batch", {
            "interval": 60.0, "beats": [{"id": v, "status": status, "digest": "x" * 24}
                                        for v in victims]})
        # Unusable batches: every one counted, none changes anything.
        for body in ([1, 2], {"interval": 1.0, "beats": "no"},
                     {"interval": -1, "beats": []},
                     {"interval": 1.0, "beats": [{"id": "U" + "A" * 55}] * (MAX_BATCH + 1)},
                     {"interval": 1.0, "beats": [{"id": 7}, "x", {"id": "not-an-id"}]}):
            await rogue.publish(subject, "heartbeat_batch", body)
        # A batch on another's subject is refused before it is read.
        await rogue.publish(rogue.subjects.presence(host.agent_id), "heartbeat_batch",
                            {"interval": 1.0, "beats": []})
        await rogue.flush()

        def counted(reason: RejectReason) -> int:
            return observer.bus.rejections[reason] - before[reason]

        await wait_for(lambda: counted(RejectReason.SCHEMA) >= 5
                       and counted(RejectReason.WRONG_SUBJECT) >= 2)
        assert counted(RejectReason.WRONG_SUBJECT) == 2
        assert counted(RejectReason.SCHEMA) == 5
        for victim in victims:
            entry = observer.directory.get(victim)
            assert entry is not None and entry.status.state != "busy" and entry.interval == BEAT
        # A rogue "bye" removes only what named the rogue: nothing.
        await rogue.publish(subject, "bye", {})
        await rogue.flush()
        await asyncio.sleep(3 * BEAT)
        assert all(n.agent_id in observer.directory for n in [loner, *nodes])


async def test_a_host_must_run_before_its_agents_and_credentials_keep_their_connection(
        mesh_url: str) -> None:
    host = AgentHost(BusConfig(servers=(mesh_url,)), heartbeat_interval=BEAT)
    node = hosted(host, mesh_url, "early")
    with pytest.raises(AgoraError, match="not running"):
        await node.start()
    assert node.bus.connection.client is None  # nothing left open
    assert host.connection_for(BusConfig(servers=(mesh_url,), user_jwt="x.y.z")) is None
    assert host.connection_for(BusConfig(servers=(mesh_url,))) is host.bus.connection
    assert host.connection_for(BusConfig(servers=("nats://127.0.0.1:1",))) not in (
        None, host.bus.connection)
    with pytest.raises(ConfigError, match="host= and directory="):
        AgentNode(Identity.generate(), NodeConfig(
            name="both", capabilities=capabilities_for("offline", ["echo"])),
            OfflineBackend(), BusConfig(servers=(mesh_url,)), host=host,
            directory=host.directory)
    with pytest.raises(ConfigError):
        AgentHost(BusConfig(servers=(mesh_url,)), heartbeat_interval=0)


async def test_a_shared_connection_closes_with_its_last_user(mesh_url: str) -> None:
    async with running_host(mesh_url, 3) as (host, nodes):
        connection = host.bus.connection
        await nodes[0].stop(grace=0.5)
        assert connection.users == 3 and connection.client is not None
        # The stopped agent's interest is gone from the shared connection.
        client = connection.client
        assert not any(sub._subject.endswith(nodes[0].agent_id)  # type: ignore[attr-defined]
                       for sub in client._subs.values())  # type: ignore[attr-defined]
    assert connection.users == 0 and connection.client is None
