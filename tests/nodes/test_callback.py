"""A task's ``callback``: the agent that runs it publishes the final result there too."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.envelope import AUTH_SIG, BROADCAST, parse
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.replies import ERROR_HEADER
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, EnvelopePolicy, ServerConfig
from agoramesh.errors import InvalidTask
from agoramesh.nodes.client import stream_task, submit_task
from agoramesh.nodes.task import MAX_CALLBACK_LENGTH, Chunk, Task, TaskResult, TaskStatus
from agoramesh.security.trust import TrustStore
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory
from agoramesh.testing.processes import assert_stopped
from agoramesh.testing.raw import flush
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

BAD_CALLBACKS: list[Any] = [
    "results.*", "results.>", "results two", "", "results..x", ".results", "x" * 257,
    "_INBOX.someone.1", "$JS.API.STREAM.DELETE.jobs", "$SYS.REQ.SERVER.PING", 42,
]


class Listener:
    """A plain NATS client, as the ``nats`` CLI is: ``nats sub <subject>`` keeps every
    message on a subject, ``nats req`` sends JSON and reads the JSON answer."""

    def __init__(self) -> None:
        self.client = NatsClient()
        self.messages: list[Msg] = []

    async def start(self, url: str, subject: str | None) -> Listener:
        await self.client.connect(url, allow_reconnect=False)

        async def keep(msg: Msg) -> None:
            self.messages.append(msg)

        if subject is not None:
            await self.client.subscribe(subject, cb=keep)
            await flush(self.client)  # at the server: nats-py's flush() can return first
        return self

    async def request(self, subject: str, body: Any) -> Any:
        reply = await self.client.request(subject, json.dumps(body).encode(), timeout=5)
        return json.loads(reply.data)


@pytest_asyncio.fixture
async def listen(nats_server: EmbeddedServer) -> AsyncIterator[Any]:
    started: list[Listener] = []

    async def make(subject: str | None = None) -> Listener:
        listener = await Listener().start(nats_server.client_url, subject)
        started.append(listener)
        return listener

    yield make
    for listener in started:
        await listener.client.close()


async def collect(bus: Bus, subject: str) -> list[Delivery]:
    """Admitted (verified) envelopes on ``subject``, as an agoramesh subscriber sees them."""
    arrived: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        arrived.append(delivery)

    await bus.subscribe(subject, keep)
    return arrived


async def test_an_envelope_request_gets_a_signed_task_response_on_its_callback(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    agent = await agent_factory(nats_server.client_url, "echoer", ["echo"])
    client = await bus_factory(nats_server.client_url)
    reader = await bus_factory(nats_server.client_url)
    arrived = await collect(reader, "results.echo")
    task = Task(capability="echo", parameters={"text": "hi"}, callback="results.echo")
    reply = await client.request(client.subjects.cap("echo"), "task_request", task.as_dict(),
                                 cid="conversation-1")
    assert reply.body["status"] == "COMPLETED"
    await wait_until(lambda: len(arrived) == 1, timeout=3.0)
    published = arrived[0].envelope
    assert published is not None
    assert (published.type, published.sender, published.to, published.auth) == (
        "task_response", agent.agent_id, BROADCAST, AUTH_SIG)
    assert published.cid == "conversation-1" and published.subject == "results.echo"
    assert published.body == reply.body and reply.body["result"] == {"echo": {"text": "hi"}}
    assert agent.callbacks == {"published": 1}


async def test_a_plain_json_request_gets_plain_json_on_its_callback(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, listen: Any) -> None:
    agent = await agent_factory(nats_server.client_url, "echoer", ["echo"])
    results = await listen("results.>")
    client = await listen()
    body = {"parameters": {"text": "hi"}, "task_id": "t-1", "callback": "results.json"}
    reply = await client.request("agora.cap.echo", body)
    assert reply["status"] == "COMPLETED" and reply["task_id"] == "t-1"
    await wait_until(lambda: len(results.messages) == 1, timeout=3.0)
    assert results.messages[0].subject == "results.json"
    assert json.loads(results.messages[0].data) == reply
    # `nats pub`: no reply subject, and the callback is how the result comes back.
    await client.client.publish("agora.cap.echo", json.dumps(
        {"parameters": {"text": "fire"}, "task_id": "t-2", "callback": "results.fired"}
    ).encode())
    await wait_until(lambda: len(results.messages) == 2, timeout=3.0)
    fired = json.loads(results.messages[1].data)
    assert results.messages[1].subject == "results.fired"
    assert (fired["task_id"], fired["status"], fired["result"]) == (
        "t-2", "COMPLETED", {"echo": {"text": "fire"}})
    assert agent.callbacks == {"published": 2}


async def test_a_failed_task_is_published_with_the_error_headers(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, bus_factory: BusFactory,
        listen: Any) -> None:
    await agent_factory(nats_server.client_url, "calculator", ["math.evaluate"])
    results = await listen("results.>")
    client = await bus_factory(nats_server.client_url)
    task = Task(capability="math.evaluate", parameters={"expression": "1/0"},
                callback="results.signed")
    result = await submit_task(client, task, timeout=5)
    assert result.status is TaskStatus.FAILED and result.error is not None
    plain = await results.request("agora.cap.math.evaluate", {
        "parameters": {"expression": "1/0"}, "callback": "results.plain"})
    assert plain["status"] == "FAILED"
    await wait_until(lambda: len(results.messages) == 2, timeout=3.0)
    by_subject = {msg.subject: msg for msg in results.messages}
    signed = parse(by_subject["results.signed"].data)
    assert TaskResult.from_dict(signed.body) == result
    assert json.loads(by_subject["results.plain"].data) == plain
    for msg in by_subject.values():
        assert msg.headers is not None
        assert msg.headers[ERROR_HEADER].startswith(result.error["type"])


async def test_a_task_answered_from_memory_is_not_published_again(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    agent = await agent_factory(nats_server.client_url, "echoer", ["echo"])
    client = await bus_factory(nats_server.client_url)
    arrived = await collect(await bus_factory(nats_server.client_url), "results.>")
    task = Task(capability="echo", parameters={"text": "once"}, callback="results.once")
    first = await submit_task(client, task)
    again = await submit_task(client, task)
    assert again == first and agent.metrics.answered_from_memory == 1
    # Another task after the repeat: its result is the next (and last) one published.
    await submit_task(client, Task(capability="echo", parameters={"text": "marker"},
                                   callback="results.marker"))
    await wait_until(lambda: any(d.subject == "results.marker" for d in arrived), timeout=3.0)
    assert [d.subject for d in arrived] == ["results.once", "results.marker"]
    assert agent.callbacks == {"published": 2}


def test_a_bad_callback_is_an_invalid_task() -> None:
    for callback in BAD_CALLBACKS:
        with pytest.raises(InvalidTask, match="callback"):
            Task(capability="echo", callback=callback)
    assert Task(capability="echo", callback="a" * MAX_CALLBACK_LENGTH).callback
    assert Task(capability="echo", callback="results.$x._INBOX").callback == "results.$x._INBOX"


async def test_a_bad_callback_fails_the_task_at_once_with_one_clear_line(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, bus_factory: BusFactory,
        listen: Any) -> None:
    agent = await agent_factory(nats_server.client_url, "echoer", ["echo"])
    client = await bus_factory(nats_server.client_url)
    plain = await listen()
    for callback in [*BAD_CALLBACKS, "agora.cap.echo", "agora"]:
        body = {"parameters": {"text": "hi"}, "callback": callback}
        for answer in ((await client.request("agora.cap.echo", "task_request", body)).body,
                       await plain.request("agora.cap.echo", body)):
            assert answer["status"] == "FAILED", callback
            error = answer["error"]
            assert error["type"] == "InvalidTask" and "callback" in error["message"]
            assert "\n" not in error["message"]
    assert agent.status.tasks_completed == 0 and not agent.callbacks
    mesh_own = (await client.request("agora.cap.echo", "task_request", {
        "parameters": {}, "callback": "agora.cap.echo"})).body["error"]["message"]
    assert mesh_own == ("callback 'agora.cap.echo' is one of the mesh's own subjects "
                        "(agora.>): name a subject outside them")
    # agora.task.*: the node taking the task refuses it; the mesh's own, the winner.
    with pytest.raises(InvalidTask, match=r"^callback 'results\.\*' is not a subject"):
        await client.request("agora.task.echo", "task_request",
                             {"parameters": {}, "callback": "results.*"})
    desk = await client.request("agora.task.echo", "task_request",
                                {"parameters": {}, "callback": "agora.cap.echo"})
    assert desk.body["status"] == "FAILED" and desk.body["error"]["message"] == mesh_own


async def workers_and_results(url: str, agent_factory: AgentFactory, bus_factory: BusFactory
                              ) -> tuple[list[AgentNode], list[Delivery]]:
    """Two workers that know each other, and what a subscriber hears on ``results.>``."""
    workers = [await agent_factory(url, name, [WORK], backend=Worker(name),
                                   agent_type="worker") for name in ("w1", "w2")]
    for worker in workers:
        await wait_until(lambda w=worker: len(w.directory) >= 1, timeout=5.0)
    return workers, await collect(await bus_factory(url), "results.>")


async def test_the_winner_of_an_auction_publishes_on_the_callback(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory, listen: Any) -> None:
    workers, arrived = await workers_and_results(nats_server.client_url, agent_factory,
                                                 bus_factory)
    # An auction this agent runs itself (Dispatcher.submit's path).
    outcome = await workers[0].auctioneer.run(
        Task(capability="work.do", parameters={"n": 1}, callback="results.auctioned"),
        timeout=10.0)
    assert outcome.result.status is TaskStatus.COMPLETED
    await wait_until(lambda: len(arrived) == 1, timeout=3.0)
    published = arrived[0].envelope
    assert published is not None and published.sender == outcome.result.agent_id
    assert TaskResult.from_dict(published.body) == outcome.result
    # A plain-JSON client's task on agora.task.*: a node auctions it, and the award it
    # sends the winner is an envelope, so the winner publishes a signed envelope too.
    json_client = await listen()
    desk = await json_client.request("agora.task.work.do", {
        "parameters": {"n": 2}, "callback": "results.desk"})
    assert desk["status"] == "COMPLETED"
    await wait_until(lambda: len(arrived) == 2, timeout=3.0)
    assert arrived[1].subject == "results.desk" and arrived[1].envelope is not None
    assert arrived[1].envelope.sender == desk["agent_id"]
    assert arrived[1].body == desk
    assert sum(w.callbacks["published"] for w in workers) == 2


async def test_dispatcher_submit_names_a_callback_auctioned_or_direct(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    workers, arrived = await workers_and_results(nats_server.client_url, agent_factory,
                                                 bus_factory)
    dispatcher = workers[0].dispatcher
    auctioned = await dispatcher.submit(WORK.name, {"n": 1}, callback="results.auction",
                                        timeout=10)
    direct = await dispatcher.submit(WORK.name, {"n": 2}, strategy="direct",
                                     callback="results.direct", timeout=10)
    assert auctioned.status is direct.status is TaskStatus.COMPLETED
    await wait_until(lambda: len(arrived) == 2, timeout=3.0)
    by_subject = {delivery.subject: delivery for delivery in arrived}
    assert by_subject.keys() == {"results.auction", "results.direct"}
    for subject, result in (("results.auction", auctioned), ("results.direct", direct)):
        published = by_subject[subject].envelope
        assert published is not None and published.sender == result.agent_id
        assert TaskResult.from_dict(published.body) == result
    for bad in ("results.*", "_INBOX.x.1", 7):
        with pytest.raises(InvalidTask, match="callback"):
            await dispatcher.submit(WORK.name, {"n": 3}, callback=bad, timeout=5)  # type: ignore[arg-type]
    assert sum(w.callbacks["published"] for w in workers) == 2


async def test_a_streamed_task_publishes_only_its_final_result(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory, listen: Any) -> None:
    await agent_factory(nats_server.client_url, "echoer", ["echo"])
    results = await listen("results.>")
    client = await bus_factory(nats_server.client_url)
    items = [item async for item in stream_task(client, Task(
        capability="echo", parameters={"text": "x"}, callback="results.streamed"))]
    assert any(isinstance(item, Chunk) for item in items)
    final = items[-1]
    assert isinstance(final, TaskResult) and final.status is TaskStatus.COMPLETED
    # The marker: a later task's result is published after anything of the first.
    await submit_task(client, Task(capability="echo", callback="results.marker"))
    await wait_until(lambda: len(results.messages) == 2, timeout=3.0)
    assert [msg.subject for msg in results.messages] == ["results.streamed", "results.marker"]
    published = parse(results.messages[0].data)
    assert published.type == "task_response"
    assert TaskResult.from_dict(published.body) == final


async def test_a_callback_that_cannot_be_published_is_logged_and_counted(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, listen: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """A result too large for one message, asked for by `nats pub` (no reply to fail
    instead): nothing is published, the task still counts as COMPLETED."""
    agent = await agent_factory(nats_server.client_url, "echoer", ["echo"],
                                bus={"envelope": EnvelopePolicy(max_bytes=2048)})
    results = await listen("results.>")
    request = json.dumps({"parameters": {"text": "x" * 1900}, "callback": "results.big"})
    assert len(request) < 2048
    await results.client.publish("agora.cap.echo", request.encode())
    await wait_until(lambda: agent.callbacks["failed"] == 1, timeout=3.0)
    assert "could not publish the result" in caplog.text and "results.big" in caplog.text
    assert agent.metrics.tasks["echo", "completed"] == 1
    small = await results.request("agora.cap.echo", {"parameters": {"text": "x"},
                                                     "callback": "results.small"})
    assert small["status"] == "COMPLETED"
    await wait_until(lambda: len(results.messages) == 1, timeout=3.0)
    assert results.messages[0].subject == "results.small"
    assert agent.callbacks == {"failed": 1, "published": 1}


# -- a secured mesh ------------------------------------------------------------------


@pytest_asyncio.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[tuple[Mesh, TrustStore]]:
    store = TrustStore.init(tmp_path / "trust")
    template = ServerConfig(name="template", data_dir=tmp_path / "mesh",
                            auth=store.server_auth())
    mesh = await Mesh.launch(tmp_path / "mesh", seeds=1, template=template)
    try:
        yield mesh, store
    finally:
        pids = [server.pid for server in mesh.servers]
        await mesh.stop(grace=2.0)
        assert_stopped(pids)


async def test_on_a_secured_mesh_a_refused_callback_is_logged_not_fatal(
        secure_server: tuple[Mesh, TrustStore], agent_factory: AgentFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    mesh, store = secure_server
    identity = Identity.generate()
    agent: AgentNode = await agent_factory(
        mesh.url, "echoer", ["echo"], identity=identity,
        bus={"user_jwt": store.admit(identity.agent_id, capabilities=["echo"]).jwt,
             "connect_timeout": 2.0})
    asker = Identity.generate()
    client = await Bus.connect(asker, BusConfig(
        servers=(mesh.url,), user_jwt=store.admit(asker.agent_id, capabilities=["vote"]).jwt,
        connect_timeout=2.0))
    try:
        caplog.set_level(logging.WARNING, "agoramesh")
        for n in range(2):
            result = await submit_task(client, Task(
                capability="echo", parameters={"n": n}, callback="results.secured"))
            assert result.status is TaskStatus.COMPLETED
        await wait_until(lambda: any("results.secured" in text
                                     for text in agent.bus.permission_denials), timeout=3.0)
        assert "permissions violation" in caplog.text.lower()
        assert agent.is_running and agent.callbacks == {"published": 2}
    finally:
        await client.close()
