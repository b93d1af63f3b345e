"""The HTTP API's durable way in: Idempotency-Key / "durable": true, 202 + Location, results by id.

Against real nats-servers: a 3-seed JetStream mesh with the job store created,
the API served by an agent on it, and a Worker agent that records every task
it starts (so "ran once" is a count).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.api.json_http import status_for
from agoramesh.api.server import HttpApi
from agoramesh.api.tasks import IDEMPOTENCY_KEY
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, JetStreamConfig, JobsConfig, ServerConfig
from agoramesh.errors import (
    InvalidInput,
    JetStreamUnavailable,
    JobNotFound,
    NoBidders,
    StoreFull,
)
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, MeshFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token_of.24+chars"


def js_template(base: Path) -> ServerConfig:
    return ServerConfig(name="template", data_dir=base, jetstream=JetStreamConfig())


@pytest_asyncio.fixture
async def js_mesh(mesh_factory: MeshFactory, tmp_path: Path) -> AsyncIterator[Mesh]:
    """3 seeds running JetStream; the job stream and result store exist with 3 replicas."""
    mesh = await mesh_factory(seeds=3, template=js_template(tmp_path / "js"))
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
        await JetStream(bus, JobsConfig(replicas=3)).ensure()
    yield mesh


@pytest.fixture
def backend() -> Worker:
    return Worker("worker")


@pytest_asyncio.fixture
async def gateway(js_mesh: Mesh, agent_factory: AgentFactory, backend: Worker) -> AgentNode:
    """The agent serving the API (echo only), with a worker (work.do) in its directory."""
    node: AgentNode = await agent_factory(js_mesh.seeds[0].client_url, "gateway", ["echo"])
    worker = await agent_factory(js_mesh.seeds[1].client_url, "worker", [WORK], backend=backend)
    await wait_until(lambda: worker.agent_id in node.directory, timeout=10)
    return node


@pytest_asyncio.fixture
async def api(gateway: AgentNode) -> AsyncIterator[HttpApi]:
    async with HttpApi(gateway.dispatcher, agent_id=gateway.agent_id, timeout=20) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def post(http: aiohttp.ClientSession, api: HttpApi, body: dict[str, Any], *,
               key: str | None = None, **kwargs: Any) -> tuple[int, Any, str | None]:
    """POST /api/tasks; the status, the body and the Location header."""
    headers = {} if key is None else {IDEMPOTENCY_KEY: key}
    async with http.post(f"{api.url}/api/tasks", json=body, headers=headers,
                         **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json(), response.headers.get("Location")


def assert_error(status: int, body: Any, expected: int, type_name: str, text: str) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["type"] == type_name, body
    assert text in body["error"]["message"] and "\n" not in body["error"]["message"], body


def accepted(task_id: str, *, duplicate: bool) -> dict[str, Any]:
    return {"task_id": task_id, "status": "PENDING", "duplicate": duplicate,
            "result_url": f"/api/tasks/{task_id}"}


def work(n: int, **more: Any) -> dict[str, Any]:
    return {"capability": "work.do", "parameters": {"n": n, **more}}


async def test_202_and_location_then_the_result_by_id(api: HttpApi, backend: Worker,
                                                      http: aiohttp.ClientSession) -> None:
    status, body, location = await post(http, api, work(42), key="order-42")
    assert (status, body, location) == (202, accepted("order-42", duplicate=False),
                                        "/api/tasks/order-42")
    answers: list[tuple[int, Any]] = []

    async def served() -> bool:
        answers.append(await call(http, "GET", f"{api.url}{location}"))
        return answers[-1][0] == 200

    await wait_until(served, timeout=20, interval=0.1)
    assert {status for status, _ in answers[:-1]} <= {404}
    result = answers[-1][1]
    assert (result["task_id"], result["status"], result["result"]) == (
        "order-42", "COMPLETED", {"by": "worker", "n": 42})
    assert set(result) == {"task_id", "status", "result", "error", "execution_time_ms",
                           "tokens_used", "cost_usd", "agent_id"}
    assert backend.started == ["order-42"]


async def test_wait_answers_the_result_on_post_and_on_get(api: HttpApi, backend: Worker,
                                                          http: aiohttp.ClientSession) -> None:
    status, result, _ = await post(http, api, work(1), key="waited", params={"wait": "15"})
    assert (status, result["task_id"], result["result"]) == (
        200, "waited", {"by": "worker", "n": 1})

    # GET ?wait for a task that completes meanwhile.
    status, body, _ = await post(http, api, {**work(2, seconds=0.5), "durable": True})
    assert status == 202 and body["duplicate"] is False
    task_id = body["task_id"]
    status, result = await call(http, "GET", f"{api.url}/api/tasks/{task_id}",
                                params={"wait": "15"})
    assert (status, result["task_id"], result["result"]) == (
        200, task_id, {"by": "worker", "n": 2})
    assert backend.started == ["waited", task_id]


async def test_a_durable_task_s_callback_gets_its_result(
        api: HttpApi, backend: Worker, gateway: AgentNode,
        http: aiohttp.ClientSession) -> None:
    arrived: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        arrived.append(delivery)

    await gateway.bus.subscribe("orders.done", keep)
    status, result, _ = await post(http, api, {**work(3), "callback": "orders.done"},
                                   key="called-back", params={"wait": "15"})
    assert (status, result["task_id"], result["status"]) == (200, "called-back", "COMPLETED")
    await wait_until(lambda: len(arrived) == 1, timeout=5)
    assert arrived[0].body == result and backend.started == ["called-back"]
    status, body, _ = await post(http, api, {**work(4), "durable": True, "callback": "a.>"})
    assert_error(status, body, 400, "InvalidRequest", "'callback': callback 'a.>'")


async def test_the_same_key_twice_runs_the_task_once(api: HttpApi, backend: Worker,
                                                     http: aiohttp.ClientSession) -> None:
    task = work(3, seconds=0.5)
    first = await post(http, api, task, key="same-key")
    again = await post(http, api, task, key="same-key")  # while it is queued or running
    assert first == (202, accepted("same-key", duplicate=False), "/api/tasks/same-key")
    assert again == (202, accepted("same-key", duplicate=True), "/api/tasks/same-key")
    status, result, _ = await post(http, api, task, key="same-key", params={"wait": "15"})
    assert (status, result["task_id"], result["result"]) == (
        200, "same-key", {"by": "worker", "n": 3})

    # Once a result is stored it is the answer: nothing is submitted again, whatever the
    # body (a finished job is no longer in the stream to compare with).
    after = await post(http, api, task, key="same-key")
    assert after == (202, accepted("same-key", duplicate=True), "/api/tasks/same-key")
    assert (await post(http, api, task, key="same-key", params={"wait": "5"}))[:2] == (
        200, result)
    other = await post(http, api, work(99), key="same-key")
    assert other[:2] == (202, accepted("same-key", duplicate=True))
    assert await call(http, "GET", f"{api.url}/api/tasks/same-key") == (200, result)
    assert backend.started == ["same-key"]


async def test_durable_true_without_a_key_gets_a_fresh_task_id(
        api: HttpApi, backend: Worker, http: aiohttp.ClientSession) -> None:
    ids = []
    for n in (4, 5):
        status, result, _ = await post(http, api, {**work(n), "durable": True, "timeout": 15,
                                                   "priority": 9}, params={"wait": "15"})
        assert (status, result["result"]) == (200, {"by": "worker", "n": n})
        ids.append(result["task_id"])
    assert ids[0] != ids[1] and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert backend.started == ids


async def test_a_key_in_use_by_another_task_is_a_409(api: HttpApi, backend: Worker,
                                                     http: aiohttp.ClientSession) -> None:
    """Compared while the key's job is in the stream: nobody offers work.later, so it waits."""
    queued = {"capability": "work.later", "parameters": {"n": 6}}
    assert (await post(http, api, queued, key="clash"))[:2] == (
        202, accepted("clash", duplicate=False))
    assert_error(*(await post(http, api, {**queued, "capability": "work.do"}, key="clash"))[:2],
                 409, "Conflict", "of capability 'work.later', not 'work.do'")
    assert_error(*(await post(http, api, {**queued, "parameters": {"n": 7}}, key="clash"))[:2],
                 409, "Conflict", "with other parameters")
    assert_error(*(await post(http, api, {**queued, "callback": "b.c"}, key="clash"))[:2],
                 409, "Conflict", "with another callback (none)")
    assert (await post(http, api, queued, key="clash"))[:2] == (
        202, accepted("clash", duplicate=True))
    assert_error(*await call(http, "GET", f"{api.url}/api/tasks/clash"), 404, "JobNotFound",
                 "no result for task clash yet")
    assert backend.started == []


async def test_results_by_id_not_found_bad_ids_and_the_token(
        api: HttpApi, gateway: AgentNode, http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/api/tasks"
    assert_error(*await call(http, "GET", f"{url}/nobody-sent-this"), 404, "JobNotFound",
                 "no result for task nobody-sent-this yet")
    assert_error(*await call(http, "GET", f"{url}/nobody-sent-this", params={"wait": "0.3"}),
                 404, "JobNotFound", "queued, running or unknown")
    for bad in ("a.b", "x" * 129, "with space"):
        assert_error(*await call(http, "GET", f"{url}/{bad}"), 400, "InvalidRequest",
                     "a durable task id is 1-128 letters")
    for wait in ("0", "-1", "21", "soon", "nan", "inf"):
        assert_error(*await call(http, "GET", f"{url}/x", params={"wait": wait}), 400,
                     "InvalidRequest", "'wait' must be a number of seconds above 0 and at most 20")
    assert_error(*await call(http, "GET", f"{url}/x", params={"colour": "red"}), 400,
                 "InvalidRequest", "unknown query parameter(s) colour")
    async with http.post(f"{url}/x", json={}) as response:
        assert (response.status, response.headers["Allow"]) == (405, "GET,HEAD")

    async with HttpApi(gateway.dispatcher, timeout=20, token=TOKEN) as guarded:
        for method, body in (("GET", None), ("POST", {**work(8), "durable": True})):
            path = "/api/tasks/order-1" if method == "GET" else "/api/tasks"
            status, answer = await call(http, method, guarded.url + path, json=body,
                                        headers={IDEMPOTENCY_KEY: "order-1"})
            assert_error(status, answer, 401, "Unauthorized", "Authorization: Bearer")
        assert_error(*await call(http, "GET", f"{guarded.url}/api/tasks/order-1",
                                 headers={"Authorization": f"Bearer {TOKEN}"}),
                     404, "JobNotFound", "order-1")
        assert guarded.unauthorized == 2


# --- without JetStream, a full store, and what is refused before the mesh is asked -----------


@pytest_asyncio.fixture
async def plain_api(mesh_factory: MeshFactory, agent_factory: AgentFactory
                    ) -> AsyncIterator[HttpApi]:
    """The API on a one-seed mesh without JetStream."""
    mesh = await mesh_factory(seeds=1)
    node = await agent_factory(mesh.url, "gateway", ["echo"])
    async with HttpApi(node.dispatcher, agent_id=node.agent_id, timeout=10) as server:
        yield server


async def test_without_jetstream_durable_tasks_are_503(plain_api: HttpApi,
                                                       http: aiohttp.ClientSession) -> None:
    echo = {"capability": "echo", "parameters": {"text": "hi"}}
    for key, body in (("order-42", echo), (None, {**echo, "durable": True})):
        status, answer, _ = await post(http, plain_api, body, key=key)
        assert_error(status, answer, 503, "JetStreamUnavailable", "no JetStream answers")
    assert_error(*await call(http, "GET", f"{plain_api.url}/api/tasks/order-42"), 503,
                 "JetStreamUnavailable", "no JetStream answers")
    # The rest of the API goes on: a task sent without a key is answered by its agent.
    status, result, _ = await post(http, plain_api, echo)
    assert (status, result["result"]) == (200, {"echo": {"text": "hi"}})


ECHO = {"capability": "echo", "parameters": {"text": "hi"}}
KEY_RULES = "the Idempotency-Key header is the durable task id: 1-128 letters"


@pytest.mark.parametrize(("key", "body", "query", "text"), [
    ("a.b", ECHO, {}, KEY_RULES),
    ("with space", ECHO, {}, KEY_RULES),
    ("x" * 129, ECHO, {}, KEY_RULES),
    ("", ECHO, {}, KEY_RULES),
    ("order-42", {**ECHO, "durable": False}, {}, '"durable": false'),
    (None, {**ECHO, "durable": "yes"}, {}, "'durable' must be true or false"),
    ("order-42", {**ECHO, "strategy": "direct"}, {}, "do not apply to a durable task"),
    (None, {**ECHO, "durable": True, "agent_id": "U" * 56}, {}, "do not apply"),
    (None, ECHO, {"wait": "5"}, "'?wait' is for durable tasks"),
    ("order-42", ECHO, {"wait": "0"}, "'wait' must be a number of seconds"),
    ("order-42", ECHO, {"wait": "11"}, "at most 10"),
    ("order-42", ECHO, {"wait": "soon"}, "'wait'"),
    ("order-42", ECHO, {"wait": "nan"}, "'wait'"),
    ("order-42", ECHO, {"colour": "red"}, "unknown query parameter(s) colour"),
    ("order-42", {**ECHO, "timeout": 0}, {}, "'timeout'"),
    (None, {**ECHO, "durable": True, "timeout": None}, {}, "'timeout'"),
    ("order-42", {**ECHO, "colour": "red"}, {}, "unknown task field(s) colour"),
], ids=["dot", "space", "too-long", "empty", "durable-false", "durable-not-bool",
        "direct", "agent-id", "wait-not-durable", "wait-zero", "wait-over-timeout",
        "wait-word", "wait-nan", "unknown-query", "timeout-zero", "timeout-null",
        "unknown-field"])
async def test_bad_durable_requests_are_400(plain_api: HttpApi, http: aiohttp.ClientSession,
                                            key: str | None, body: dict[str, Any],
                                            query: dict[str, str], text: str) -> None:
    status, answer, _ = await post(http, plain_api, body, key=key, params=query)
    assert_error(status, answer, 400, "InvalidRequest", text)
    if text == KEY_RULES:
        assert repr(key[:60] if key is not None else key) in answer["error"]["message"]


async def test_a_durable_post_needs_a_json_body(plain_api: HttpApi,
                                                http: aiohttp.ClientSession) -> None:
    status, answer = await call(http, "POST", f"{plain_api.url}/api/tasks",
                                data=json.dumps(ECHO).encode(),
                                headers={IDEMPOTENCY_KEY: "order-42",
                                         "Content-Type": "text/plain"})
    assert_error(status, answer, 415, "UnsupportedMediaType",
                 "send Content-Type: application/json")


async def test_a_full_store_is_503(mesh_factory: MeshFactory, agent_factory: AgentFactory,
                                   tmp_path: Path, http: aiohttp.ClientSession) -> None:
    mesh = await mesh_factory(seeds=1, template=js_template(tmp_path / "full"))
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
        await JetStream(bus, JobsConfig(max_bytes=1024 * 1024)).ensure()
    node = await agent_factory(mesh.url, "gateway", ["echo"], max_jobs=0)  # takes no job
    async with HttpApi(node.dispatcher, timeout=10) as api:
        answers = []
        for n in range(20):
            status, answer, _ = await post(http, api, {
                "capability": "work.do", "parameters": {"blob": "x" * 200_000, "n": n}},
                key=f"big-{n}")
            answers.append(status)
            if status != 202:
                break
    assert_error(status, answer, 503, "StoreFull", "maximum bytes")
    assert 3 <= answers.count(202) == len(answers) - 1


def test_job_errors_map_to_http_statuses() -> None:
    assert [status_for(error) for error in (JobNotFound("x"), JetStreamUnavailable("x"),
                                            StoreFull("x"), InvalidInput("x"), NoBidders("x"))
            ] == [404, 503, 503, 400, 503]
