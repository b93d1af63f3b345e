"""AgentNode on real servers: presence, discovery, services protocol, tasks, cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.bus.bus import Delivery
from agoramesh.bus.envelope import parse
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig
from agoramesh.errors import BackendUnavailable, NoResponders, SubjectError
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import cancel_task, stream_task, submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, TaskResult, TaskStatus, Usage
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import BusFactory
from agoramesh.testing.raw import flush

pytestmark = pytest.mark.integration

UPPER = Capability(name="text.upper", description="upper-case text",
                   input_schema={"type": "object", "properties": {"text": {"type": "string"}},
                                 "required": ["text"], "additionalProperties": False})
SLOW = Capability(name="slow", input_schema={"type": "object",
                                             "properties": {"seconds": {"type": "number"}}})
BROKEN = Capability(name="broken")


class ToyBackend(Backend):
    """Real but tiny work: upper-casing in chunks, sleeping, failing on purpose."""

    type = "toy"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        self.calls += 1
        if task.capability == "broken":
            raise BackendUnavailable("the toy backend is down")
        if task.capability == "slow":
            await asyncio.sleep(float(task.parameters.get("seconds", 10)))
            yield Completion(output={"slept": True})
            return
        text = task.parameters["text"]
        for word in text.split():
            yield Chunk(word.upper() + " ")
        yield Completion(output={"text": text.upper()},
                         usage=Usage(input_tokens=len(text.split()),
                                     output_tokens=len(text.split()), cost_usd=0.001))

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output=messages[-1]["content"].upper())


@pytest.fixture
async def nodes(nats_server: EmbeddedServer) -> AsyncIterator[list[AgentNode]]:
    started: list[AgentNode] = []

    async def make(name: str, *caps: Capability, interval: float = 0.2) -> AgentNode:
        node = AgentNode(Identity.generate(),
                         NodeConfig(name=name, type="toy",
                                    capabilities=caps or (UPPER, SLOW, BROKEN),
                                    heartbeat_interval=interval),
                         ToyBackend(), BusConfig(servers=(nats_server.client_url,)))
        await node.start()
        started.append(node)
        return node

    holder: list[Any] = [make]
    yield holder  # type: ignore[misc]
    for node in started:
        await node.stop(grace=1.0)


async def test_presence_directory_and_eviction(nodes: list[Any]) -> None:
    make = nodes[0]
    alice, bob = await make("alice"), await make("bob")
    left: dict[str, str] = {}
    alice.directory.on_leave.append(lambda agent_id, reason: left.setdefault(agent_id, reason))
    await wait_until(lambda: bob.agent_id in alice.directory and alice.agent_id in bob.directory,
                     timeout=2 * 0.2 + 1)
    entry = alice.directory.get(bob.agent_id)
    assert entry is not None and entry.card.name == "bob" and entry.card.type == "toy"
    assert {c.name for c in entry.card.capabilities} == {"text.upper", "slow", "broken"}
    await bob.kill()  # no bye: alice must notice the silence
    await wait_until(lambda: bob.agent_id not in alice.directory, timeout=3 * 0.2 + 1)
    assert left[bob.agent_id] == "silent"
    carol = await make("carol")
    await wait_until(lambda: carol.agent_id in alice.directory, timeout=2)
    await carol.stop()  # bye removes at once
    await wait_until(lambda: carol.agent_id not in alice.directory, timeout=0.5)
    assert left[carol.agent_id] == "bye"  # not a silent eviction that happened to be quick


async def test_find_agents_by_capability_with_wildcards(nodes: list[Any]) -> None:
    make = nodes[0]
    alice = await make("alice")
    await make("bob", UPPER)
    await make("carol", Capability(name="code.review.python"))
    cards = await alice.find_agents_by_capability("text.*", timeout=0.5)
    assert [card.name for card in cards] == ["alice", "bob"]
    assert [c.name for c in await alice.find_agents_by_capability("code.>", timeout=0.5)] == [
        "carol"]
    assert await alice.find_agents_by_capability("nothing.here", timeout=0.2) == []
    with pytest.raises(SubjectError, match="bad capability pattern 'a b'"):
        await alice.bus.request(alice.bus.subjects.discover, "discovery", {"capability": "a b"},
                                timeout=2.0)


async def test_a_peer_body_that_is_not_an_object_is_ignored(
        nodes: list[Any], bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    alice = await nodes[0]("alice", interval=1.0)  # card requests wait 2 intervals
    rogue = await bus_factory(nats_server.client_url)

    async def answer_junk(delivery: Delivery) -> None:
        await delivery.respond("discovery" if delivery.type == "discovery" else "card",
                               ["not", "a", "card"])

    await rogue.subscribe(rogue.subjects.discover, answer_junk)
    await rogue.subscribe(rogue.subjects.agent(rogue.identity.agent_id), answer_junk)
    assert alice.presence.learn(["not", "a", "card"], rogue.identity.agent_id) is None
    # Nobody known offers it, so discovery waits out its window and hears the rogue.
    assert await alice.find_agents_by_capability("nothing.here", timeout=0.3) == []
    # A card reply that is a list: no error.
    await alice.presence.fetch_card(rogue.identity.agent_id)
    assert rogue.identity.agent_id not in alice.directory


async def test_plain_json_task_and_services_protocol(nodes: list[Any],
                                                     nats_server: EmbeddedServer) -> None:
    make = nodes[0]
    alice, bob = await make("alice"), await make("bob")
    raw = NatsClient()
    await raw.connect(nats_server.client_url, allow_reconnect=False)
    try:
        reply = json.loads((await raw.request("agora.cap.text.upper", b'{"text": "hi there"}',
                                              timeout=2)).data)
        assert reply["status"] == "COMPLETED" and reply["result"] == {"text": "HI THERE"}
        assert reply["tokens_used"] == 4 and reply["agent_id"] in (alice.agent_id, bob.agent_id)

        bad = json.loads((await raw.request("agora.cap.text.upper", b'{"text": ', timeout=2)).data)
        assert bad["error"]["type"] == "MalformedEnvelope"

        invalid = json.loads((await raw.request("agora.cap.text.upper", b'{"text": 3}',
                                                timeout=2)).data)
        assert invalid["status"] == "FAILED" and invalid["error"]["type"] == "InvalidInput"
        assert "parameters.text" in invalid["error"]["message"]

        inbox = raw.new_inbox()
        pongs: list[dict[str, Any]] = []

        async def collect(msg: Any) -> None:
            pongs.append(json.loads(msg.data))

        sub = await raw.subscribe(inbox, cb=collect)
        await raw.publish("$SRV.PING", b"", reply=inbox)
        await wait_until(lambda: len(pongs) >= 2, timeout=2)
        await sub.unsubscribe()
        assert {p["id"] for p in pongs} == {alice.agent_id, bob.agent_id}
        assert all(p["type"] == "io.nats.micro.v1.ping_response" for p in pongs)

        info = json.loads((await raw.request(f"$SRV.INFO.alice.{alice.agent_id}", b"",
                                             timeout=2)).data)
        assert {e["subject"] for e in info["endpoints"]} == {
            "agora.cap.text.upper", "agora.cap.slow", "agora.cap.broken"}
        stats = json.loads((await raw.request(f"$SRV.STATS.alice.{alice.agent_id}", b"",
                                              timeout=2)).data)
        assert stats["type"] == "io.nats.micro.v1.stats_response"
    finally:
        await raw.close()


async def test_typed_outcomes_and_the_node_keeps_serving(nodes: list[Any],
                                                         bus_factory: BusFactory,
                                                         nats_server: EmbeddedServer) -> None:
    make = nodes[0]
    alice = await make("alice")
    client = await bus_factory(nats_server.client_url)
    bad = await submit_task(client, Task(capability="text.upper", parameters={"txt": "x"}))
    assert bad.status is TaskStatus.FAILED and bad.error and bad.error["type"] == "InvalidInput"
    broken = await submit_task(client, Task(capability="broken"))
    assert broken.error and broken.error["type"] == "BackendUnavailable"
    with pytest.raises(NoResponders, match=r"agora\.cap\.unknown"):
        await submit_task(client, Task(capability="unknown"), timeout=1)
    direct = await submit_task(client, Task(capability="unknown"), agent_id=alice.agent_id)
    assert direct.error and direct.error["type"] == "UnknownCapability"
    good = await submit_task(client, Task(capability="text.upper", parameters={"text": "ok"}))
    assert good.status is TaskStatus.COMPLETED and good.result == {"text": "OK"}
    status = alice.status
    assert status.tasks_completed == 1 and status.tasks_failed == 3
    assert status.tokens_used == 2 and status.total_cost_usd == pytest.approx(0.001)


async def test_streamed_chunks_then_result(nodes: list[Any], bus_factory: BusFactory,
                                           nats_server: EmbeddedServer) -> None:
    await nodes[0]("alice")
    client = await bus_factory(nats_server.client_url)
    items = [item async for item in stream_task(
        client, Task(capability="text.upper", parameters={"text": "one two three"}))]
    assert [i.text for i in items if isinstance(i, Chunk)] == ["ONE ", "TWO ", "THREE "]
    assert isinstance(items[-1], TaskResult) and items[-1].result == {"text": "ONE TWO THREE"}


async def test_cancel_a_running_task(nodes: list[Any], bus_factory: BusFactory,
                                     nats_server: EmbeddedServer) -> None:
    alice = await nodes[0]("alice")
    client = await bus_factory(nats_server.client_url)
    task = Task(capability="slow", parameters={"seconds": 30})
    pending = asyncio.create_task(submit_task(client, task, timeout=5))
    await wait_until(lambda: task.task_id in alice.running_tasks, timeout=2)
    assert await cancel_task(client, alice.agent_id, task.task_id)
    result = await pending
    assert result.status is TaskStatus.FAILED and result.error
    assert result.error["type"] == "TaskCancelled"
    follow = await submit_task(client, Task(capability="text.upper", parameters={"text": "a"}))
    assert follow.status is TaskStatus.COMPLETED


async def test_queue_group_shares_load(nodes: list[Any], bus_factory: BusFactory,
                                       nats_server: EmbeddedServer) -> None:
    make = nodes[0]
    alice, bob = await make("alice", UPPER), await make("bob", UPPER)
    client = await bus_factory(nats_server.client_url)
    results = await asyncio.gather(*(
        submit_task(client, Task(capability="text.upper", parameters={"text": f"n{i}"}))
        for i in range(100)))
    assert all(r.status is TaskStatus.COMPLETED for r in results)
    served = {r.agent_id for r in results}
    assert served == {alice.agent_id, bob.agent_id}
    assert alice.backend.calls > 0 and bob.backend.calls > 0  # type: ignore[attr-defined]
    assert alice.backend.calls + bob.backend.calls == 100  # type: ignore[attr-defined]


async def test_stop_fails_running_tasks_cleanly(nodes: list[Any], bus_factory: BusFactory,
                                                nats_server: EmbeddedServer) -> None:
    alice = await nodes[0]("alice")
    client = await bus_factory(nats_server.client_url)
    pending = asyncio.create_task(
        submit_task(client, Task(capability="slow", parameters={"seconds": 30}), timeout=5))
    await wait_until(lambda: bool(alice.running_tasks), timeout=2)
    async with asyncio.timeout(5):
        await alice.stop(grace=0.2)
    result = await pending  # answered at once, not left to time out
    assert result.status is TaskStatus.FAILED and result.error
    assert result.error["type"] == "TaskCancelled" and "stopped" in result.error["message"]
    assert not alice._background


async def test_hosted_agents_share_one_directory(nats_server: EmbeddedServer) -> None:
    url = nats_server.client_url

    def hosted(name: str, directory: Any = None) -> AgentNode:
        return AgentNode(Identity.generate(),
                         NodeConfig(name=name, type="toy", capabilities=(UPPER,),
                                    heartbeat_interval=0.2),
                         ToyBackend(), BusConfig(servers=(url,)), directory=directory)

    host = hosted("host")
    guests = [hosted(f"guest{i}", host.directory) for i in range(3)]
    outsider = hosted("outsider")
    everyone = [host, *guests, outsider]
    for node in everyone:
        await node.start()
    try:
        assert all(guest.directory is host.directory for guest in guests)
        # Only the owner listens to presence: one subscription for the whole host.
        presence = host.bus.subjects.presence_all
        assert [s.subject for s in host.bus._subscriptions].count(presence) == 1
        assert all(presence not in [s.subject for s in g.bus._subscriptions] for g in guests)
        others = {node.agent_id for node in everyone} - {host.agent_id}
        await wait_until(lambda: {e.id for e in host.directory} >= others, timeout=2)
        assert outsider.agent_id in guests[0].directory
        found = await guests[1].find_agents_by_capability("text.upper", timeout=1)
        assert {card.id for card in found} == {node.agent_id for node in everyone}
    finally:
        for node in everyone:
            await node.stop(grace=0.5)


async def test_no_heartbeat_follows_a_bye_and_the_agent_stays_gone(
        nodes: list[Any], bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    """An agent finishing its tasks after its bye sends no heartbeat meanwhile: one would
    have its peers fetch its card and list it again until it fell silent."""
    alice = await nodes[0]("alice", SLOW, interval=0.05)
    bob = await nodes[0]("bob", UPPER)
    await wait_until(lambda: alice.agent_id in bob.directory, timeout=2)
    watcher = await nats.connect(nats_server.client_url)
    kinds: list[str] = []

    async def heard(msg: Msg) -> None:  # what goes on the wire, as a sniffer sees it
        kinds.append(parse(msg.data).type)

    await watcher.subscribe(alice.bus.subjects.presence(alice.agent_id), cb=heard)
    await flush(watcher)
    client = await bus_factory(nats_server.client_url)
    pending = asyncio.create_task(submit_task(
        client, Task(capability="slow", parameters={"seconds": 30}), timeout=5))
    await wait_until(lambda: bool(alice.running_tasks), timeout=2)
    await wait_until(lambda: "heartbeat" in kinds, timeout=2)
    await alice.stop(grace=0.6)  # twelve of its intervals spent finishing the task
    assert (await pending).status is TaskStatus.FAILED  # cancelled at the end of the grace
    assert kinds[-1] == "bye" and kinds.count("bye") == 1, kinds
    await asyncio.sleep(0.3)
    await watcher.close()
    assert alice.agent_id not in bob.directory
