"""The task desk (``agora.task.<capability>``) passes the winner's result on, or says why not.

The winner's result reaches the desk in a signed msgpack envelope, which fits;
the desk's reply to a plain-JSON client need not: JSON writes each small
number in two bytes where msgpack takes one. Before, such a reply raised
OversizeEnvelope in the desk and the client got no answer (it timed out).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import ERROR_CODE_HEADER, ERROR_HEADER
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import EnvelopePolicy
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Completion, StreamItem, Task, TaskResult, TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

pytestmark = pytest.mark.integration

NUMBERS = Capability(name="bulk.numbers")
LIMIT = 16 * 1024  # max_bytes of both nodes: whichever takes the request is the desk
COUNT = 12_000  # zeros: about 12 KB in msgpack (fits), 24 KB in JSON (does not)


class Numbers(Backend):
    """Answers ``count`` zeros (default :data:`COUNT`), or NaN when asked for ``nan``."""

    type = "numbers"

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        if task.parameters.get("nan"):
            yield Completion(output={"value": math.nan})
        else:
            yield Completion(output={"values": [0] * int(task.parameters.get("count", COUNT))})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output="")


@pytest.fixture
async def maker(nats_server: EmbeddedServer, agent_factory: AgentFactory) -> AgentNode:
    """``maker`` (bulk.numbers) and a ``desk`` (echo only), both with a 16 KiB limit."""
    small = {"envelope": EnvelopePolicy(max_bytes=LIMIT)}
    url = nats_server.client_url
    desk = await agent_factory(url, "desk", ["echo"], bus=small)
    node = await agent_factory(url, "maker", [NUMBERS], backend=Numbers(), agent_type="numbers",
                               bus=small)
    await wait_until(lambda: node.agent_id in desk.directory and desk.agent_id in node.directory,
                     timeout=5)
    return node


async def test_a_result_too_large_for_the_desks_json_reply_is_result_too_large(
        maker: AgentNode, nats_server: EmbeddedServer) -> None:
    cli = NatsClient()
    await cli.connect(nats_server.client_url, allow_reconnect=False)
    try:
        answer = await cli.request("agora.task.bulk.numbers", b"{}", timeout=10)
        small = await cli.request("agora.task.bulk.numbers", b'{"count": 100}', timeout=10)
    finally:
        await cli.close()
    result = TaskResult.from_dict(json.loads(answer.data))
    assert result.status is TaskStatus.FAILED and result.result is None, result
    assert result.error is not None and result.error["type"] == "ResultTooLarge"
    match = re.fullmatch(r"the result of task (\S+) is (\d+) bytes as a message, over the "
                         rf"{LIMIT}-byte limit", result.error["message"])
    assert match and match[1] == result.task_id, result.error["message"]
    assert int(match[2]) > 2 * COUNT  # as JSON
    assert answer.headers is not None and answer.headers[ERROR_CODE_HEADER] == "413"
    assert answer.headers[ERROR_HEADER] == f"ResultTooLarge: {result.error['message']}"
    assert result.agent_id == maker.agent_id  # who did the work, which was done
    # The winner's own reply fit: for the maker the task completed.
    assert (maker.status.tasks_completed, maker.status.tasks_failed) == (2, 0)  # both
    fits = json.loads(small.data)
    assert fits["status"] == "COMPLETED" and fits["result"] == {"values": [0] * 100}
    assert not small.headers


async def test_a_signed_requester_gets_the_same_result(maker: AgentNode,
                                                        bus_factory: BusFactory,
                                                        nats_server: EmbeddedServer) -> None:
    """Sealed for a signed requester, the result stays msgpack: it fits, and arrives whole."""
    client = await bus_factory(nats_server.client_url)
    task = Task(capability="bulk.numbers")
    reply = await client.request("agora.task.bulk.numbers", "task_request", task.as_dict(),
                                 timeout=10)
    result = TaskResult.from_dict(reply.body)
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.result == {"values": [0] * COUNT}


async def test_a_result_plain_json_cannot_hold_is_a_failure_not_silence(
        maker: AgentNode, nats_server: EmbeddedServer) -> None:
    cli = NatsClient()
    await cli.connect(nats_server.client_url, allow_reconnect=False)
    try:
        answer = await cli.request("agora.task.bulk.numbers", b'{"nan": true}', timeout=10)
    finally:
        await cli.close()
    result = json.loads(answer.data)
    assert result["status"] == "FAILED" and result["result"] is None
    assert result["error"]["type"] == "BackendBadResponse"
    assert "cannot be answered in plain JSON" in result["error"]["message"]
    assert answer.headers is not None and answer.headers[ERROR_CODE_HEADER] == "502"
