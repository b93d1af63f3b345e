"""Whatever goes wrong while a task runs, its requester gets a task_response (FAILED)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig
from agoramesh.errors import InvalidInput
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.backends.offline import OFFLINE_CAPABILITIES, OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.execution import UNREADABLE_TASK_ID
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import MAX_DEADLINE, MAX_PARAMETER_DEPTH, Completion, StreamItem, Task
from agoramesh.testing.plugin import BusFactory

pytestmark = pytest.mark.integration

CRASH = Capability(name="crash")
NAN = Capability(name="nan")


class FaultyBackend(Backend):
    """A backend with bugs: it raises what no backend should, or answers NaN."""

    type = "faulty"

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        if task.capability == "crash":
            raise RecursionError("maximum recursion depth exceeded")
        yield Completion(output={"value": float("nan")})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output="")


@pytest.fixture
async def faulty(nats_server: EmbeddedServer) -> AsyncIterator[AgentNode]:
    node = AgentNode(Identity.generate(),
                     NodeConfig(name="faulty", type="faulty", capabilities=(CRASH, NAN)),
                     FaultyBackend(), BusConfig(servers=(nats_server.client_url,)))
    await node.start()
    yield node
    await node.stop(grace=1.0)


@pytest.fixture
async def offline(nats_server: EmbeddedServer) -> AsyncIterator[AgentNode]:
    echo = Capability.from_dict({"name": "echo", **OFFLINE_CAPABILITIES["echo"]})
    node = AgentNode(Identity.generate(),
                     NodeConfig(name="offline", capabilities=(echo,)),
                     OfflineBackend(), BusConfig(servers=(nats_server.client_url,)))
    await node.start()
    yield node
    await node.stop(grace=1.0)


async def plain(url: str, subject: str, payload: bytes) -> Any:
    raw = NatsClient()
    await raw.connect(url, allow_reconnect=False)
    try:
        reply = (await raw.request(subject, payload, timeout=5)).data
    finally:
        await raw.close()
    return json.loads(reply, parse_constant=lambda name: pytest.fail(f"{name} in {reply!r}"))


async def test_an_unexpected_backend_exception_is_a_failed_task_response(
        faulty: AgentNode, bus_factory: BusFactory, nats_server: EmbeddedServer,
        caplog: pytest.LogCaptureFixture) -> None:
    client = await bus_factory(nats_server.client_url)
    with caplog.at_level(logging.ERROR, logger="agoramesh.node"):
        reply = await client.request("agora.cap.crash", "task_request",
                                     {"task_id": "t-1", "parameters": {}}, timeout=5)
    assert reply.type == "task_response"
    assert reply.body["status"] == "FAILED" and reply.body["task_id"] == "t-1"
    assert reply.body["error"] == {
        "type": "BackendError",
        "message": "faulty backend failed: RecursionError: maximum recursion depth exceeded"}
    logged = [r for r in caplog.records if "t-1 failed unexpectedly" in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is RecursionError

    answer = await plain(nats_server.client_url, "agora.cap.crash", b'{"text": "hi"}')
    assert answer["status"] == "FAILED" and answer["error"]["type"] == "BackendError"
    assert faulty.status.tasks_failed == 2 and not faulty.running_tasks


async def test_a_result_json_cannot_carry_fails_the_plain_request_only(
        faulty: AgentNode, bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    answer = await plain(nats_server.client_url, "agora.cap.nan", b"{}")
    assert answer["status"] == "FAILED" and answer["error"]["type"] == "BackendBadResponse"
    assert "plain JSON" in answer["error"]["message"]
    # msgpack carries NaN: a signed request gets the result as it is.
    client = await bus_factory(nats_server.client_url)
    reply = await client.request("agora.cap.nan", "task_request", {"parameters": {}}, timeout=5)
    assert reply.body["status"] == "COMPLETED" and math.isnan(reply.body["result"]["value"])


def nested(levels: int) -> dict[str, Any]:
    """Parameters ``levels`` deep: the parameters object and ``levels - 1`` lists in it."""
    value: Any = []
    for _ in range(levels - 2):
        value = [value]
    return {"a": value}


async def test_deeply_nested_parameters_are_invalid_input_on_every_path(
        offline: AgentNode, bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    client = await bus_factory(nats_server.client_url)
    for levels, status in ((MAX_PARAMETER_DEPTH, "COMPLETED"), (MAX_PARAMETER_DEPTH + 1, "FAILED"),
                           (300, "FAILED")):
        body = {"parameters": nested(levels)}
        for subject in ("agora.cap.echo", offline.bus.subjects.agent(offline.agent_id)):
            reply = await client.request(subject, "task_request", {"task_type": "echo", **body},
                                         timeout=5)
            assert reply.body["status"] == status, (levels, reply.body)
            if status == "FAILED":  # no task_id was sent, and the body is invalid: null
                assert reply.body["task_id"] is None
                assert reply.body["error"] == {
                    "type": "InvalidInput",
                    "message": f"parameters nest more than {MAX_PARAMETER_DEPTH} levels deep"
                               + UNREADABLE_TASK_ID}
        if status == "FAILED":  # the task desk answers a bad task with an error reply
            with pytest.raises(InvalidInput, match=f"more than {MAX_PARAMETER_DEPTH} levels"):
                await client.request("agora.task.echo", "task_request", body, timeout=10)
        else:
            desk = await client.request("agora.task.echo", "task_request", body, timeout=10)
            assert desk.body["status"] == "COMPLETED"
    answer = await plain(nats_server.client_url, "agora.cap.echo",
                         b'{"a": ' + b"[" * 600 + b"]" * 600 + b"}")
    assert answer["error"]["type"] == "MalformedEnvelope"
    assert "601 levels deep" in answer["error"]["message"]


@pytest.mark.parametrize("field", [
    {"deadline": 9 * 10**400}, {"deadline": 1e308}, {"deadline": -1}, {"deadline": "soon"},
    {"deadline": MAX_DEADLINE + 1}, {"priority": 10**400}, {"priority": 1e308},
    {"priority": 11}, {"priority": True}])
async def test_out_of_range_numbers_are_an_invalid_task(
        offline: AgentNode, nats_server: EmbeddedServer, field: dict[str, Any]) -> None:
    # Plain JSON carries any number; msgpack no int beyond 64 bits.
    payload = json.dumps({"parameters": {}, **field}).encode()
    for subject in ("agora.cap.echo", "agora.task.echo"):
        answer = await plain(nats_server.client_url, subject, payload)
        error = answer["error"]
        assert error["type"] == "InvalidTask", answer
        assert next(iter(field)) in error["message"]
        if subject == "agora.cap.echo":
            assert answer["status"] == "FAILED"


async def test_a_deadline_within_range_still_bounds_the_task(
        offline: AgentNode, nats_server: EmbeddedServer) -> None:
    for deadline, status in ((time.time() + 30, "COMPLETED"), (MAX_DEADLINE, "COMPLETED"),
                             (1, "FAILED")):
        payload = json.dumps({"parameters": {"text": "hi"}, "deadline": deadline}).encode()
        answer = await plain(nats_server.client_url, "agora.cap.echo", payload)
        assert answer["status"] == status, answer
    assert answer["error"] == {"type": "TaskError", "message": "task " + answer["task_id"] +
                               " was past its deadline before it ran"}
