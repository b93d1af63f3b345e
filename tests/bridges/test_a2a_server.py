"""The A2A bridge with a2a-sdk's own client (1.0 and 0.3) against offline agents on a real
nats-server: cards, send, stream, get, cancel, per-agent paths, and bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.server.context import ServerCallContext
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotCancelableError, TaskNotFoundError
from a2a_support import TOKEN

from agoramesh.agent import AgentNode
from agoramesh.bridges.a2a_server import A2AServer
from agoramesh.nodes.backends.a2a import INPUT_SCHEMAS, to_python, to_value
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task
from agoramesh.testing import wait_until

pytestmark = pytest.mark.integration

CARD = "/.well-known/agent-card.json"


class Dawdler(OfflineBackend):
    """``dawdle``: a line every 50 ms for ten seconds (or ``ticks`` lines), then
    ``{"done": true}``; counts the tasks cancelled on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.cancelled = 0

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        self.started += 1
        try:
            for tick in range(int(task.parameters.get("ticks", 200))):
                yield Chunk(f"tick {tick}\n")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield Completion(output={"done": True})


async def dawdler_on(driver: AgentNode, agent_factory: Any) -> Dawdler:
    """A ``dawdle`` agent on ``driver``'s mesh, known to its dispatcher."""
    dawdler = Dawdler()
    await agent_factory(driver.bus.config.servers[0], "dawdler", [Capability(name="dawdle")],
                        backend=dawdler)
    await wait_until(lambda: driver.dispatcher.select("dawdle"), timeout=5)
    return dawdler


def message(parts: list[Part] | str, skill: str | None = None, **metadata: Any) -> Message:
    if skill is not None:
        metadata["skill"] = skill
    return Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex,
                   parts=[Part(text=parts)] if isinstance(parts, str) else parts,
                   metadata=metadata or None)


async def client_for(http: httpx.AsyncClient, url: str, *, streaming: bool = True,
                     version: str = "1.0") -> Client:
    """a2a-sdk's client of the agent at ``url``, speaking A2A ``version`` (its card lists both)."""
    card = await A2ACardResolver(http, url).get_agent_card()
    chosen = [i for i in card.supported_interfaces if i.protocol_version == version]
    assert chosen, card.supported_interfaces
    del card.supported_interfaces[:]
    card.supported_interfaces.extend(chosen)
    return ClientFactory(ClientConfig(httpx_client=http, streaming=streaming)).create(card)


async def events(client: Client, sent: Message, **configuration: Any) -> list[StreamResponse]:
    request = SendMessageRequest(message=sent,
                                 configuration=SendMessageConfiguration(**configuration))
    return [event async for event in client.send_message(request)]


def result_of(answer: list[StreamResponse]) -> tuple[int, Any, dict[str, Any]]:
    """(final state, the result artifact's data, its metadata) of a send's events."""
    state, data, meta = TaskState.TASK_STATE_UNSPECIFIED, None, {}
    for event in answer:
        kind = event.WhichOneof("payload")
        if kind == "task":
            state = event.task.status.state
            for artifact in event.task.artifacts:
                if artifact.name == "result":
                    data, meta = _data(artifact.parts), to_python(artifact.metadata)
        elif kind == "status_update":
            state = event.status_update.status.state
        elif kind == "artifact_update" and event.artifact_update.artifact.name == "result":
            data = _data(event.artifact_update.artifact.parts)
            meta = to_python(event.artifact_update.artifact.metadata)
    return state, data, meta


def _data(parts: Any) -> Any:
    return next(to_python(part.data) for part in parts if part.WhichOneof("content") == "data")


async def test_cards_of_the_mesh_and_of_each_agent(a2a: A2AServer, driver: AgentNode) -> None:
    async with httpx.AsyncClient() as anonymous:  # cards need no token: they declare it
        card = await A2ACardResolver(anonymous, a2a.url).get_agent_card()
        assert [skill.id for skill in card.skills] == [
            "echo", "math.evaluate", "text.debate", "text.summarize", "vote"]
        assert card.capabilities.streaming and card.name == "agoramesh"
        assert [(i.url, i.protocol_binding, i.protocol_version)
                for i in card.supported_interfaces] == [(a2a.url + "/", "JSONRPC", "1.0"),
                                                        (a2a.url + "/", "JSONRPC", "0.3")]
        assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
        assert "bearer" in card.security_requirements[0].schemes
        schemas = to_python(card.capabilities.extensions[0].params)
        assert card.capabilities.extensions[0].uri == INPUT_SCHEMAS
        math = driver.config.capabilities[2]
        assert math.name == "math.evaluate" and schemas["math.evaluate"] == math.input_schema

        raw = (await anonymous.get(a2a.url + CARD)).json()  # 0.3 readers find theirs too
        assert raw["url"] == a2a.url + "/" and raw["protocolVersion"] == "0.3"

        pro = next(entry.card for entry in driver.directory if entry.card.name == "pro")
        for ref in ("pro", pro.id):
            card = await A2ACardResolver(anonymous, f"{a2a.url}/agents/{ref}").get_agent_card()
            assert card.name == "pro" and [s.id for s in card.skills] == ["text.debate", "vote"]
            assert card.supported_interfaces[0].url == f"{a2a.url}/agents/{ref}/"
        missing = await anonymous.get(f"{a2a.url}/agents/nobody{CARD}")
        assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]


async def test_send_stream_get_and_cancel(a2a: A2AServer, driver: AgentNode,
                                          http: httpx.AsyncClient, agent_factory: Any) -> None:
    plain = await client_for(http, a2a.url, streaming=False)
    answer = await events(plain, message("2**10", "math.evaluate"))
    assert len(answer) == 1 and answer[0].WhichOneof("payload") == "task"
    state, data, meta = result_of(answer)
    assert (state, data) == (TaskState.TASK_STATE_COMPLETED, {"value": 1024})
    assert meta["agent_id"] == driver.agent_id and meta["task_id"] == answer[0].task.id
    fetched = await plain.get_task(GetTaskRequest(id=answer[0].task.id))
    assert fetched.status.state == TaskState.TASK_STATE_COMPLETED

    streaming = await client_for(http, a2a.url)
    answer = await events(streaming, message([Part(data=to_value(
        {"question": "tea or coffee", "options": ["tea", "coffee"]}))], "vote"))
    kinds = [event.WhichOneof("payload") for event in answer]
    assert kinds[0] == "task" and answer[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    told = [" ".join(p.text for p in e.status_update.status.message.parts) for e in answer
            if e.WhichOneof("payload") == "status_update"
            and e.status_update.status.state == TaskState.TASK_STATE_WORKING]
    assert any("bid(s)" in line for line in told), told
    assert any("is working on it" in line for line in told), told
    state, data, meta = result_of(answer)
    assert state == TaskState.TASK_STATE_COMPLETED and data["choice"] in ("tea", "coffee")
    assert meta["agent_id"] != driver.agent_id  # pro or con won

    dawdler = await dawdler_on(driver, agent_factory)
    # Streamed: the winner's output arrives as chunks of the "stream" artifact.
    seen: list[StreamResponse] = []
    async with asyncio.timeout(10), contextlib.aclosing(streaming.send_message(
            SendMessageRequest(message=message("go", "dawdle")))) as stream:
        async for event in stream:
            seen.append(event)
            if sum(e.WhichOneof("payload") == "artifact_update" for e in seen) == 3:
                break
    task_id = seen[0].task.id
    chunks = [e.artifact_update for e in seen if e.WhichOneof("payload") == "artifact_update"]
    assert [c.artifact.parts[0].text for c in chunks] == ["tick 0\n", "tick 1\n", "tick 2\n"]
    assert [c.append for c in chunks] == [False, True, True]
    assert chunks[0].artifact.name == "stream"
    cancelled = await streaming.cancel_task(CancelTaskRequest(id=task_id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    await wait_until(lambda: dawdler.cancelled == 1, timeout=5)  # the mesh task is cancelled

    # Not streamed: the task comes back at once (return_immediately), cancelled later.
    answer = await events(plain, message("go", "dawdle"), return_immediately=True)
    task = answer[0].task
    assert task.status.state in (TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_SUBMITTED)
    await wait_until(lambda: dawdler.started == 2, timeout=5)
    cancelled = await plain.cancel_task(CancelTaskRequest(id=task.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    assert (await plain.get_task(GetTaskRequest(id=task.id))).status.state == \
        TaskState.TASK_STATE_CANCELED
    await wait_until(lambda: dawdler.cancelled == 2, timeout=5)

    # Sent to the agent itself (no auction): the cancel reaches it all the same.
    direct = await client_for(http, f"{a2a.url}/agents/dawdler", streaming=False)
    answer = await events(direct, message("go"), return_immediately=True)  # its only skill
    await wait_until(lambda: dawdler.started == 3, timeout=5)
    cancelled = await direct.cancel_task(CancelTaskRequest(id=answer[0].task.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    await wait_until(lambda: dawdler.cancelled == 3, timeout=5)


async def test_a_blocking_send_at_work_is_listed_fetched_and_cancelled(
        a2a: A2AServer, driver: AgentNode, http: httpx.AsyncClient, agent_factory: Any) -> None:
    """A blocking send runs outside the SDK's task machinery: its task is still there,
    working, for ListTasks and GetTask, and CancelTask stops the mesh task and ends the
    send ``canceled``."""
    dawdler = await dawdler_on(driver, agent_factory)
    plain = await client_for(http, a2a.url, streaming=False)
    sending = asyncio.ensure_future(events(plain, message("go", "dawdle")))
    try:
        await wait_until(lambda: dawdler.started == 1, timeout=5)
        listed = await plain.list_tasks(ListTasksRequest())
        (working,) = [task for task in listed.tasks
                      if task.status.state == TaskState.TASK_STATE_WORKING]
        fetched = await plain.get_task(GetTaskRequest(id=working.id))
        assert fetched.status.state == TaskState.TASK_STATE_WORKING
        assert fetched.history[0].parts[0].text == "go"
        cancelled = await plain.cancel_task(CancelTaskRequest(id=working.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        async with asyncio.timeout(10):
            (answer,) = await sending
    finally:
        sending.cancel()
    assert answer.task.id == working.id
    assert answer.task.status.state == TaskState.TASK_STATE_CANCELED
    await wait_until(lambda: dawdler.cancelled == 1, timeout=5)  # the mesh task stopped
    with pytest.raises(TaskNotCancelableError):
        await plain.cancel_task(CancelTaskRequest(id=working.id))
    with pytest.raises(TaskNotFoundError):
        await plain.cancel_task(CancelTaskRequest(id=str(uuid.uuid4())))


async def test_a_blocking_send_at_work_can_be_subscribed_to(
        a2a: A2AServer, driver: AgentNode, http: httpx.AsyncClient, agent_factory: Any) -> None:
    """SubscribeToTask on a blocking send's task: the task as it is (working), then its end;
    once it has ended, the SDK's answer for a terminal task."""
    dawdler = await dawdler_on(driver, agent_factory)
    plain = await client_for(http, a2a.url, streaming=False)
    streaming = await client_for(http, a2a.url)
    sending = asyncio.ensure_future(events(plain, message("go", "dawdle")))
    try:
        await wait_until(lambda: dawdler.started == 1, timeout=5)
        listed = await plain.list_tasks(ListTasksRequest())
        (working,) = listed.tasks
        followed: list[StreamResponse] = []

        async def follow() -> None:
            async for event in streaming.subscribe(SubscribeToTaskRequest(id=working.id)):
                followed.append(event)

        following = asyncio.ensure_future(follow())
        await wait_until(lambda: len(followed) == 1, timeout=5)
        assert followed[0].task.status.state == TaskState.TASK_STATE_WORKING
        await plain.cancel_task(CancelTaskRequest(id=working.id))
        async with asyncio.timeout(10):
            await following
            (answer,) = await sending
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    assert [event.WhichOneof("payload") for event in followed] == ["task", "status_update"]
    assert followed[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    assert answer.task.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(Exception, match="terminal state"):
        async for _ in streaming.subscribe(SubscribeToTaskRequest(id=working.id)):
            pass

    quick = asyncio.ensure_future(events(plain, message(
        [Part(data=to_value({"ticks": 20}))], "dawdle")))  # about a second
    try:
        await wait_until(lambda: dawdler.started == 2, timeout=5)
        (working,) = [task for task in (await plain.list_tasks(ListTasksRequest())).tasks
                      if task.status.state == TaskState.TASK_STATE_WORKING]
        async with asyncio.timeout(10):
            followed = [event async for event in streaming.subscribe(
                SubscribeToTaskRequest(id=working.id))]
            (answer,) = await quick
    finally:
        quick.cancel()
        await asyncio.gather(quick, return_exceptions=True)
    assert [event.WhichOneof("payload") for event in followed] == [
        "task", "artifact_update", "status_update"]
    assert _data(followed[1].artifact_update.artifact.parts) == {"done": True}
    assert followed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert result_of([answer])[:2] == (TaskState.TASK_STATE_COMPLETED, {"done": True})


async def test_a_blocking_send_cut_off_by_a_stop_leaves_its_task_cancelled(
        a2a: A2AServer, driver: AgentNode, http: httpx.AsyncClient, agent_factory: Any) -> None:
    """The server stops while a blocking send waits for its mesh task: past the stop's grace
    the send is cut off, the mesh task stopped, and the task is left ``canceled`` in the
    store, not ``working`` for ever."""
    dawdler = await dawdler_on(driver, agent_factory)
    plain = await client_for(http, a2a.url, streaming=False)
    sending = asyncio.ensure_future(events(plain, message("go", "dawdle")))
    try:
        await wait_until(lambda: dawdler.started == 1, timeout=5)
        handler = a2a.handler
        assert handler is not None
        async with asyncio.timeout(15):
            await a2a.stop()
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    await wait_until(lambda: dawdler.cancelled == 1, timeout=5)  # the mesh task stopped
    listed = await handler.task_store.list(ListTasksRequest(), ServerCallContext())
    (task,) = listed.tasks
    assert task.status.state == TaskState.TASK_STATE_CANCELED
    assert "the request ended before the task did" in task.status.message.parts[0].text


async def test_an_agent_path_sends_to_that_agent_only(a2a: A2AServer, driver: AgentNode,
                                                       http: httpx.AsyncClient) -> None:
    pro = next(entry.card for entry in driver.directory if entry.card.name == "pro")
    client = await client_for(http, f"{a2a.url}/agents/pro", streaming=False)
    for _ in range(3):
        answer = await events(client, message([Part(data=to_value(
            {"question": "a or b", "options": ["a", "b"]}))], "vote"))
        state, _, meta = result_of(answer)
        assert (state, meta["agent_id"]) == (TaskState.TASK_STATE_COMPLETED, pro.id)
    streamed = await events(await client_for(http, f"{a2a.url}/agents/pro"), message(
        [Part(data=to_value({"question": "a or b", "options": ["a", "b"]}))], "vote"))
    state, _, meta = result_of(streamed)  # streamed, with no auction to relay
    assert (state, meta["agent_id"]) == (TaskState.TASK_STATE_COMPLETED, pro.id)
    with pytest.raises(InvalidParamsError, match=r"no skill 'math\.evaluate'"):
        await events(client, message("1+1", "math.evaluate"))


async def test_clients_of_a2a_0_3_work_too(a2a: A2AServer, driver: AgentNode,
                                           http: httpx.AsyncClient) -> None:
    for streaming in (False, True):
        client = await client_for(http, a2a.url, streaming=streaming, version="0.3")
        answer = await events(client, message("6*7", "math.evaluate"))
        state, data, _ = result_of(answer)
        assert (state, data) == (TaskState.TASK_STATE_COMPLETED, {"value": 42})
        task_id = next(e.task.id for e in answer if e.WhichOneof("payload") == "task")
        fetched = await client.get_task(GetTaskRequest(id=task_id))
        assert fetched.status.state == TaskState.TASK_STATE_COMPLETED

    # The wire as an older client writes it, without an A2A-Version header.
    body = {"jsonrpc": "2.0", "id": 7, "method": "message/send", "params": {"message": {
        "kind": "message", "messageId": "m-1", "role": "user",
        "parts": [{"kind": "text", "text": "hello there"}], "metadata": {"skill": "echo"}}}}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as old:
        reply = (await old.post(a2a.url + "/", json=body)).json()
        assert reply["result"]["kind"] == "task", reply
        assert reply["result"]["status"]["state"] == "completed"
        task_id = reply["result"]["id"]
        reply = (await old.post(a2a.url + "/", json={
            "jsonrpc": "2.0", "id": 8, "method": "tasks/get", "params": {"id": task_id}})).json()
        assert reply["result"]["status"]["state"] == "completed"
        data = reply["result"]["artifacts"][0]["parts"][-1]["data"]
        assert data == {"echo": {"text": "hello there"}}
        reply = (await old.post(a2a.url + "/", json={
            "jsonrpc": "2.0", "id": 9, "method": "tasks/cancel", "params": {"id": task_id}})
        ).json()
        assert reply["error"]["code"] == -32002  # a finished task cannot be cancelled


def _rpc(method: str, params: Any, rpc_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def _send(parts: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    return _rpc("SendMessage", {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER",
                                            "parts": parts, "metadata": metadata}})


V1 = {"A2A-Version": "1.0", "Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(("body", "code", "text"), [
    (b'{"jsonrpc": "2.0", "id": 1, "method": ', -32700, ""),
    (b"[]", -32600, ""),
    (json.dumps([_rpc("GetTask", {"id": "a"}), _rpc("GetTask", {"id": "b"}, 2)]).encode(),
     -32600, "Batch"),
    (json.dumps({"jsonrpc": "2.0", "id": 1}).encode(), -32600, ""),
    (json.dumps(_rpc("SendMail", {})).encode(), -32601, ""),
    (json.dumps(_rpc("SendMessage", {"message": "hi"})).encode(), -32602, ""),
    (json.dumps(_send([{"text": "hi"}])).encode(), -32602, "name the skill"),
    (json.dumps(_send([{"text": "hi"}], skill="fly")).encode(), -32602, "no skill 'fly'"),
    (json.dumps(_send([{"data": {"expression": 5}}], skill="math.evaluate")).encode(), -32602,
     "expression"),
    (json.dumps(_send([{"data": [1, 2]}], skill="echo")).encode(), -32602, "JSON object"),
    (json.dumps(_send([{"text": "x"}], skill="echo", timeout="soon")).encode(), -32602,
     "timeout"),
    (json.dumps(_send([{"url": "https://example.com/a.txt"}], skill="echo")).encode(), -32005,
     "url part"),
    (json.dumps(_send([{"text": "x" * 70_000}], skill="echo")).encode(), -32600,
     "Payload too large"),
])
async def test_bad_requests_get_the_protocols_error(a2a: A2AServer, driver: AgentNode,
                                                   body: bytes, code: int, text: str) -> None:
    async with httpx.AsyncClient(headers=V1) as client:
        response = await client.post(a2a.url + "/", content=body,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        error = response.json()["error"]
        assert error["code"] == code and text in error["message"], error
        assert "Traceback" not in response.text
        # Nothing crashed: the next request is served, and the mesh still works.
        answer = await client.post(a2a.url + "/", json=_send([{"text": "2+2"}],
                                                             skill="math.evaluate"))
        assert answer.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert (await driver.dispatcher.submit("echo", {"text": "ok"})).result == {
        "echo": {"text": "ok"}}


async def test_the_token_the_version_and_a_body_of_unknown_length(a2a: A2AServer) -> None:
    good = _send([{"text": "1+1"}], skill="math.evaluate")
    async with httpx.AsyncClient() as client:
        for headers, why in (({}, "needs an 'Authorization: Bearer"),
                             ({"Authorization": "Bearer not-the-token-at-all"}, "not valid"),
                             ({"Authorization": f"Basic {TOKEN}"}, "needs")):
            response = await client.post(a2a.url + "/", json=good,
                                         headers={**headers, "A2A-Version": "1.0"})
            assert response.status_code == 401 and why in response.json()["error"]["message"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert a2a.unauthorized == 3

        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            response = await client.post(a2a.url + "/", content=json.dumps(good).encode(),
                                         headers={**V1, "Content-Type": kind or ""})
            assert response.status_code == 415, kind

        # A 1.0 method without the version header is read as 0.3, as a2a-sdk does.
        response = await client.post(a2a.url + "/", json=good,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.json()["error"]["code"] == -32009

        async def pieces() -> AsyncIterator[bytes]:
            yield b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"x": "'
            for _ in range(20):
                yield b"y" * 8192
            yield b'"}}'

        response = await client.post(a2a.url + "/", content=pieces(),
                                     headers={**V1, "Content-Type": "application/json"})
        assert response.json()["error"]["message"] == "Payload too large"

        answer = await client.post(a2a.url + "/", json=good, headers=V1)
        assert answer.json()["result"]["task"]["artifacts"][0]["parts"][0]["data"] == {
            "value": 2}


async def test_the_oldest_tasks_are_forgotten(driver: AgentNode, http: httpx.AsyncClient) -> None:
    async with A2AServer(driver.dispatcher, token=TOKEN, max_tasks=2) as small:
        client = await client_for(http, small.url, streaming=False)
        ids = [(await events(client, message("1+1", "math.evaluate")))[0].task.id
               for _ in range(3)]
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=ids[0]))
        for kept in ids[1:]:
            assert (await client.get_task(GetTaskRequest(id=kept))).status.state == \
                TaskState.TASK_STATE_COMPLETED
