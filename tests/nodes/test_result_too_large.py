"""A result too large for one message comes back FAILED (``ResultTooLarge``), on every path.

Before, such a result got no reply at all (the requester timed out), or, in an
auction, read as a decline after the winner had done the work. A result up to
1 MiB always fits (the limit is 1 MiB + 64 KiB, config.MAX_MESSAGE_BYTES).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import ERROR_CODE_HEADER, ERROR_HEADER
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import MAX_MESSAGE_BYTES
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Completion, StreamItem, Task, TaskResult, TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

pytestmark = pytest.mark.integration

BULK = Capability(name="bulk.make")
MIB = 1024 * 1024


class Bulky(Backend):
    """Answers ``size`` characters of text (default 1.2 MB): too much for one message."""

    type = "bulky"

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        self.runs += 1
        yield Completion(output={"text": "x" * int(task.parameters.get("size", 1_200_000))})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output="")


@pytest.fixture
async def bulky(nats_server: EmbeddedServer, agent_factory: AgentFactory) -> AgentNode:
    return await agent_factory(nats_server.client_url, "bulky", [BULK], backend=Bulky(),
                               agent_type="bulky")


def too_large(result: TaskResult, task_id: str | None = None) -> None:
    """FAILED with ResultTooLarge, naming the task, the size and the limit."""
    assert result.status is TaskStatus.FAILED and result.result is None, result
    assert result.error is not None and result.error["type"] == "ResultTooLarge"
    match = re.fullmatch(r"the result of task (\S+) is (\d+) bytes as a message, over the "
                         rf"{MAX_MESSAGE_BYTES}-byte limit", result.error["message"])
    assert match, result.error["message"]
    assert match[1] == (task_id or result.task_id) and int(match[2]) > 1_200_000


async def test_an_oversize_result_over_plain_json(bulky: AgentNode,
                                                  nats_server: EmbeddedServer) -> None:
    cli = NatsClient()
    await cli.connect(nats_server.client_url, allow_reconnect=False)
    try:
        answer = await cli.request("agora.cap.bulk.make", b"{}", timeout=10)
        result = TaskResult.from_dict(json.loads(answer.data))
        too_large(result)
        assert answer.headers is not None and answer.headers[ERROR_CODE_HEADER] == "413"
        assert result.error is not None
        assert answer.headers[ERROR_HEADER] == f"ResultTooLarge: {result.error['message']}"
        small = json.loads((await cli.request("agora.cap.bulk.make", b'{"size": 10}',
                                              timeout=10)).data)
        assert small["status"] == "COMPLETED" and small["result"] == {"text": "x" * 10}
        stats = json.loads((await cli.request(
            f"$SRV.STATS.bulky.{bulky.agent_id}", b"", timeout=5)).data)["endpoints"][0]
        assert (stats["num_requests"], stats["num_errors"]) == (2, 1)
        assert stats["last_error"].startswith("ResultTooLarge: the result of task")
    finally:
        await cli.close()
    status = bulky.status  # the oversize one counts as failed, not completed
    assert (status.tasks_completed, status.tasks_failed) == (1, 1)
    assert bulky.metrics.tasks == {("bulk.make", "completed"): 1, ("bulk.make", "failed"): 1}


async def test_an_oversize_result_of_a_signed_request(
        bulky: AgentNode, bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    client = await bus_factory(nats_server.client_url)
    task = Task(capability="bulk.make")
    too_large(await submit_task(client, task, timeout=10), task.task_id)
    direct = Task(capability="bulk.make")
    too_large(await submit_task(client, direct, agent_id=bulky.agent_id, timeout=10),
              direct.task_id)
    assert (bulky.status.tasks_completed, bulky.status.tasks_failed) == (0, 2)


async def test_an_oversize_result_in_an_auction_is_the_result_not_a_decline(
        bulky: AgentNode, nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    driver = await agent_factory(nats_server.client_url, "driver", ["echo"])
    await wait_until(lambda: any(entry.card.name == "bulky" for entry in driver.directory),
                     timeout=5)
    result = await driver.dispatcher.submit("bulk.make", {}, timeout=15)
    too_large(result)
    assert result.agent_id == bulky.agent_id
    assert bulky.status.tasks_failed == 1 and bulky.status.tasks_completed == 0


async def test_a_one_mebibyte_result_fits(nats_server: EmbeddedServer,
                                          agent_factory: AgentFactory,
                                          bus_factory: BusFactory) -> None:
    await agent_factory(nats_server.client_url, "echoer", ["echo"])
    text = "x" * MIB
    client = await bus_factory(nats_server.client_url)
    result = await submit_task(client, Task(capability="echo", parameters={"text": text}),
                               timeout=10)
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.result == {"echo": {"text": text}}
    cli = NatsClient()
    await cli.connect(nats_server.client_url, allow_reconnect=False)
    try:
        answer = await cli.request("agora.cap.echo", json.dumps({"text": text}).encode(),
                                   timeout=10)
    finally:
        await cli.close()
    body = json.loads(answer.data)
    assert body["status"] == "COMPLETED" and body["result"] == {"echo": {"text": text}}
    assert not answer.headers


async def test_the_agent_remembers_the_failure_it_answered_not_the_oversize_result(
        bulky: AgentNode, bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    """Asked again for the same task, the agent answers from memory what it answered the
    first time, and holds that failure (a few hundred bytes), not the 1.2 MB result."""
    client = await bus_factory(nats_server.client_url)
    task = Task(capability="bulk.make")
    first = await submit_task(client, task, timeout=10)
    again = await submit_task(client, task, timeout=10)
    too_large(first, task.task_id)
    assert again == first
    assert isinstance(bulky.backend, Bulky) and bulky.backend.runs == 1
    assert bulky.metrics.answered_from_memory == 1
    remembered = bulky.tasks.memory.recall(task)
    assert remembered is not None and remembered.done is not None
    assert (remembered.done.status, remembered.done.error) == (first.status, first.error)
    assert 0 < bulky.tasks.memory.held_bytes < 2_000


async def test_a_result_nobody_is_answered_with_is_weighed_by_its_body(
        bulky: AgentNode, nats_server: EmbeddedServer) -> None:
    """A task published without a reply subject (``nats pub``) is run and its result kept,
    weighed by its body's size as JSON (no reply is sealed to measure it)."""
    cli = NatsClient()
    await cli.connect(nats_server.client_url, allow_reconnect=False)
    try:
        await cli.publish("agora.cap.bulk.make", b'{"task_id": "unanswered-1"}')
        await cli.flush()
    finally:
        await cli.close()
    memory = bulky.tasks.memory
    await wait_until(lambda: memory.held_bytes > 0, timeout=10)
    assert 1_200_000 < memory.held_bytes < 1_201_000  # the 1.2 MB text, as JSON
    remembered = memory.recall(Task(capability="bulk.make", task_id="unanswered-1"))
    assert remembered is not None and remembered.done is not None
    assert remembered.done.status is TaskStatus.COMPLETED
