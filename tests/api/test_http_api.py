"""The HTTP API with a real HTTP client against offline agents on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.api.json_http import status_for
from agoramesh.api.server import MAX_BODY, HttpApi, validate_token
from agoramesh.api.web import CLIENT_TEXT, RECORD_TEXT, ClientTextFilter
from agoramesh.bus.bus import Delivery
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import MAX_MESSAGE_BYTES
from agoramesh.errors import NotConnected
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.testing import wait_until

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
TEXTS = ["Solar panels turn sunlight into power. Storage keeps power for the night.",
         "Wind turbines turn wind into power. Offshore wind is strong and steady."]


@pytest_asyncio.fixture
async def api(driver: AgentNode) -> AsyncIterator[HttpApi]:
    async with HttpApi(driver.dispatcher, agent_id=driver.agent_id, timeout=10,
                       max_body=64 * 1024) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def assert_error(status: int, body: Any, expected: int, type_name: str, text: str) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and body["error"]["type"] == type_name, body
    assert text in body["error"]["message"] and "Traceback" not in body["error"]["message"]


async def test_health_and_agents(api: HttpApi, driver: AgentNode,
                                 http: aiohttp.ClientSession) -> None:
    assert api.url == f"http://127.0.0.1:{api.port}"
    assert await call(http, "GET", f"{api.url}/api/health") == (
        200, {"status": "ok", "agents": 3, "agent_id": driver.agent_id})

    status, body = await call(http, "GET", f"{api.url}/api/agents")
    assert status == 200
    assert [agent["name"] for agent in body["agents"]] == ["analyst", "con", "pro"]
    peers = [agent for agent in body["agents"] if agent["name"] != "analyst"]
    assert all(agent["status"]["state"] == "ready" for agent in peers)
    assert {"id", "type", "capabilities", "public_key"} <= set(body["agents"][0])

    status, body = await call(http, "GET", f"{api.url}/api/agents",
                              params={"capability": "vote"})
    assert (status, [agent["name"] for agent in body["agents"]]) == (200, ["con", "pro"])
    assert_error(*await call(http, "GET", f"{api.url}/api/agents",
                             params={"capability": "a b"}), 400, "SubjectError", "capability")
    assert_error(*await call(http, "GET", f"{api.url}/api/agents", params={"limit": "1"}),
                 400, "InvalidRequest", "limit")


async def test_tasks_by_auction_direct_and_agent_id(api: HttpApi, driver: AgentNode,
                                                    http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/api/tasks"
    status, result = await call(http, "POST", url, json={"capability": "math.evaluate",
                                                         "parameters": {"expression": "2**10"}})
    assert status == 200 and result["status"] == "COMPLETED"
    assert result["result"] == {"value": 1024} and result["agent_id"] == driver.agent_id

    pro = next(card for card in driver.directory if card.card.name == "pro").card
    status, result = await call(http, "POST", url, json={
        "capability": "vote", "parameters": {"question": "a or b", "options": ["a", "b"]},
        "agent_id": pro.id, "timeout": 5, "priority": 9})
    assert (status, result["status"], result["agent_id"]) == (200, "COMPLETED", pro.id)

    status, result = await call(http, "POST", url, json={
        "capability": "echo", "parameters": {"text": "hi"}, "strategy": "direct"})
    assert (status, result["result"]) == (200, {"echo": {"text": "hi"}})

    status, result = await call(http, "POST", url, json={
        "capability": "math.evaluate", "parameters": {"expression": "1/0"}})
    assert status == 200 and result["status"] == "FAILED"
    assert result["error"] == {"type": "InvalidInput", "message": "division by zero"}

    for strategy in ("auction", "direct"):
        status, body = await call(http, "POST", url, json={
            "capability": "code.run.python", "parameters": {"code": "print(1)"},
            "strategy": strategy})
        assert status == 503 and body["error"]["type"] in ("NoBidders", "NoResponders")


async def test_a_task_s_callback_gets_its_result(api: HttpApi, driver: AgentNode,
                                              http: aiohttp.ClientSession) -> None:
    arrived: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        arrived.append(delivery)

    await driver.bus.subscribe("results.http", keep)
    status, result = await call(http, "POST", f"{api.url}/api/tasks", json={
        "capability": "echo", "parameters": {"text": "back"}, "callback": "results.http"})
    assert (status, result["status"]) == (200, "COMPLETED")
    await wait_until(lambda: len(arrived) == 1, timeout=5)
    assert arrived[0].body == result and arrived[0].envelope is not None
    assert arrived[0].envelope.sender == result["agent_id"]


@pytest.mark.parametrize(("body", "text"), [
    ({"parameters": {}}, "capability"),
    ({"capability": "echo", "parameters": []}, "'parameters' must be an object"),
    ({"capability": "echo", "strategy": "lottery"}, "'strategy'"),
    ({"capability": "echo", "timeout": "soon"}, "'timeout'"),
    ({"capability": "echo", "timeout": 10_000}, "'timeout'"),
    ({"capability": "echo", "priority": 11}, "'priority'"),
    ({"capability": "echo", "agent_id": 7}, "'agent_id'"),
    ({"capability": "echo", "colour": "red"}, "unknown task field(s) colour"),
    ({"capability": "echo", "callback": "results.*"}, "'callback': callback 'results.*'"),
    ({"capability": "echo", "callback": "_INBOX.a.b"}, "'callback': callback '_INBOX.a.b'"),
    ({"capability": "echo", "callback": 5}, "'callback': callback must be a subject string"),
    ({"capability": "echo", "parameters": {"n": 10**30}}, "cannot be sent on the mesh"),
])
async def test_bad_tasks_are_400(api: HttpApi, http: aiohttp.ClientSession,
                                 body: dict[str, Any], text: str) -> None:
    assert_error(*await call(http, "POST", f"{api.url}/api/tasks", json=body),
                 400, "InvalidRequest", text)


async def test_collaborate_debate_as_in_the_seed(api: HttpApi,
                                                 http: aiohttp.ClientSession) -> None:
    status, result = await call(http, "POST", f"{api.url}/api/collaborate", json={
        "mode": "debate", "topic": "universal basic income", "agents": ["pro", "con"],
        "rounds": 2, "requirements": {}})
    assert status == 200, result
    assert len(result["debate_history"]) == 4
    assert [e["position"] for e in result["debate_history"]] == ["for", "against"] * 2
    assert result["consensus"]["position"] in ("for", "against")
    assert sum(result["consensus"]["votes"].values()) == 2


async def test_collaborate_every_other_mode(api: HttpApi, http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/api/collaborate"
    status, voting = await call(http, "POST", url, json={
        "mode": "voting", "topic": "Which parser: rust or python?", "agents": None,
        "rounds": None, "requirements": {"options": ["rust parser", "python parser"]}})
    assert status == 200 and sum(voting["tally"].values()) == 2 and voting["winner"]

    status, parallel = await call(http, "POST", url, json={
        "mode": "parallel", "agents": ["capability:vote"],
        "requirements": {"capability": "vote", "parameters": {"question": "x or y",
                                                              "options": ["x", "y"]}}})
    assert status == 200 and len(parallel["results"]) == 2 and parallel["failed"] == []

    status, mapped = await call(http, "POST", url, json={
        "mode": "map-reduce", "requirements": {"items": TEXTS,
                                               "reduce_parameters": {"max_sentences": 1}}})
    assert status == 200 and len(mapped["map"]) == 2
    assert len(mapped["output"]["sentences"]) == 1

    status, chained = await call(http, "POST", url, json={
        "mode": "sequential", "topic": "6 * 7", "requirements": {"stages": [
            {"capability": "math.evaluate", "parameters": {"expression": "${topic}"}},
            {"capability": "echo", "parameters": {"answer": "${previous.output.value}"}}]}})
    assert status == 200 and chained["output"] == {"echo": {"answer": 42}}


async def test_bad_requests_get_json_errors(api: HttpApi, http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/api/collaborate"
    assert_error(*await call(http, "POST", url, data=b"{not json", headers=JSON), 400,
                 "InvalidRequest", "not valid JSON")
    assert_error(*await call(http, "POST", url, data=b"\xff\xfe", headers=JSON), 400,
                 "InvalidRequest", "UTF-8")
    assert_error(*await call(http, "POST", url, data=b'{"mode": NaN}', headers=JSON), 400,
                 "InvalidRequest", "NaN")
    assert_error(*await call(http, "POST", url, json=["debate"]), 400, "InvalidRequest",
                 "JSON object")
    assert_error(*await call(http, "POST", url, json={"mode": "brainstorm", "topic": "x"}),
                 400, "InvalidCollaboration", "unknown mode 'brainstorm'")
    assert_error(*await call(http, "POST", url, json={"mode": "debate", "topic": "x",
                                                      "rounds": "three"}),
                 400, "InvalidCollaboration", "'rounds' must be an integer")
    assert_error(*await call(http, "POST", url, json={"mode": "debate", "topic": 5}),
                 400, "InvalidCollaboration", "'topic'")
    assert_error(*await call(http, "POST", url, json={"mode": "debate", "topic": "x",
                                                      "agents": ["ghost", "pro"]}),
                 400, "InvalidCollaboration", "no known agent matches 'ghost'")
    assert_error(*await call(http, "GET", f"{api.url}/api/nowhere"), 404, "NotFound",
                 "no route /api/nowhere")
    async with http.get(url) as response:
        assert response.status == 405 and response.headers["Allow"] == "POST"
        assert_error(405, await response.json(), 405, "MethodNotAllowed", "GET is not allowed")
    assert_error(*await call(http, "DELETE", f"{api.url}/api/agents"), 405,
                 "MethodNotAllowed", "DELETE")


async def test_oversized_bodies_are_413(api: HttpApi, http: aiohttp.ClientSession) -> None:
    big = b'{"mode": "debate", "topic": "' + b"x" * api.max_body + b'"}'
    assert_error(*await call(http, "POST", f"{api.url}/api/collaborate", data=big,
                             headers=JSON), 413, "RequestEntityTooLarge", "larger than")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        for _ in range(4):
            yield b" " * (api.max_body // 2)

    assert_error(*await call(http, "POST", f"{api.url}/api/tasks", data=chunks(),
                             headers=JSON), 413, "RequestEntityTooLarge", "larger than")


async def test_no_agents_is_503_and_a_deadline_is_504(
        driver: AgentNode, nats_server: EmbeddedServer, agent_factory: Any,
        http: aiohttp.ClientSession, sloth_backend: OfflineBackend) -> None:
    sloth = await agent_factory(nats_server.client_url, "sloth", ["text.debate"],
                                backend=sloth_backend, stop_grace=0.1)
    await wait_until(lambda: sloth.agent_id in driver.directory, timeout=5)
    async with HttpApi(driver.dispatcher, timeout=0.3) as api:
        url, health = f"{api.url}/api/collaborate", f"{api.url}/api/health"
        assert_error(*await call(http, "POST", url, json={
            "mode": "parallel", "requirements": {"capability": "code.run.python"}}),
            503, "NoResponders", "code.run.python")
        assert_error(*await call(http, "POST", url, json={
            "mode": "debate", "topic": "x", "agents": ["pro", "sloth"]}),
            504, "BusTimeout", "within 0.3s")
    with pytest.raises(NotConnected):
        _ = api.url
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", health)


def test_status_mapping() -> None:
    from agoramesh.errors import (
        AuctionFailed,
        BackendError,
        BusTimeout,
        OversizeEnvelope,
        SubjectError,
    )
    # An OversizeEnvelope that reaches status_for came back from an agent: the mesh failed.
    # One the API would send itself is a 413 decided before sending (test_the_body_limit_…).
    assert [status_for(error) for error in (SubjectError("x"), AuctionFailed("x"),
                                            BusTimeout("x"), BackendError("x"),
                                            OversizeEnvelope("x"), KeyError("x"))
            ] == [400, 503, 504, 502, 502, 500]


async def test_a_port_in_use_is_a_one_line_config_error(api: HttpApi, driver: AgentNode) -> None:
    from agoramesh.errors import ConfigError

    assert api.port is not None
    with pytest.raises(ConfigError) as info:
        await HttpApi(driver.dispatcher, port=api.port).start()
    assert str(info.value) == (f"cannot serve the HTTP API on 127.0.0.1:{api.port}: "
                               f"address already in use")
    with pytest.raises(ConfigError, match="0-65535"):
        HttpApi(driver.dispatcher, port=70000)


TOKEN = "s3cret-token_of.24+chars"


@pytest_asyncio.fixture
async def guarded(driver: AgentNode) -> AsyncIterator[HttpApi]:
    async with HttpApi(driver.dispatcher, agent_id=driver.agent_id, timeout=10,
                       token=TOKEN) as server:
        yield server


NEEDS_HEADER, NOT_VALID = "needs an 'Authorization: Bearer <token>' header", "not valid"


@pytest.mark.parametrize(("authorization", "text"), [
    (None, NEEDS_HEADER), ("", NEEDS_HEADER), ("Bearer", NEEDS_HEADER),
    ("Bearer ", NEEDS_HEADER), (f"Basic {TOKEN}", NEEDS_HEADER), (TOKEN, NEEDS_HEADER),
    ("Bearer wrong-token-of-24-chars", NOT_VALID), (f"Bearer {TOKEN[:-1]}", NOT_VALID),
    (f"Bearer {TOKEN}x", NOT_VALID), (f"Bearer {TOKEN} x", NOT_VALID),
    (f"Bearer {TOKEN}\u00e9", NOT_VALID),
], ids=["missing", "empty", "scheme-only", "scheme-and-space", "basic", "no-scheme", "wrong",
        "prefix", "trailing-junk", "trailing-word", "non-ascii"])
async def test_a_token_guards_every_route_but_health(guarded: HttpApi, driver: AgentNode,
                                                     http: aiohttp.ClientSession,
                                                     authorization: str | None,
                                                     text: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert await call(http, "GET", f"{guarded.url}/api/health", headers=headers) == (
        200, {"status": "ok", "agents": 3, "agent_id": driver.agent_id})
    requests = [("GET", "/api/agents", None), ("POST", "/api/tasks", {"capability": "echo"}),
                ("POST", "/api/collaborate", {"mode": "debate", "topic": "x"}),
                ("POST", "/api/health", {}), ("GET", "/api/nowhere", None),
                ("DELETE", "/api/agents", None)]
    for method, path, body in requests:
        async with http.request(method, guarded.url + path, json=body,
                                headers=headers) as response:
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert_error(response.status, await response.json(), 401, "Unauthorized", text)
    assert guarded.unauthorized == len(requests)


async def test_the_right_token_is_served(guarded: HttpApi, driver: AgentNode,
                                         http: aiohttp.ClientSession) -> None:
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        status, body = await call(http, "GET", f"{guarded.url}/api/agents", headers=headers)
        assert (status, len(body["agents"])) == (200, 3)
        status, result = await call(http, "POST", f"{guarded.url}/api/tasks", headers=headers,
                                    json={"capability": "echo", "parameters": {"text": "hi"},
                                          "strategy": "direct"})
        assert (status, result["result"]) == (200, {"echo": {"text": "hi"}})
        # Authenticated requests get the usual errors.
        assert_error(*await call(http, "GET", f"{guarded.url}/api/nowhere", headers=headers),
                     404, "NotFound", "no route")
    assert guarded.unauthorized == 0


async def test_without_a_token_an_authorization_header_is_ignored(
        api: HttpApi, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", f"{api.url}/api/agents",
                              headers={"Authorization": "Bearer anything"})
    assert status == 200 and len(body["agents"]) == 3


@pytest.mark.parametrize(("token", "text"), [
    ("", "at least 16 characters"), ("fifteen-chars15", "at least 16 characters"),
    ("sixteen chars ok", "may only contain"), ("sixteen-chars-é!", "may only contain"),
])
def test_a_bad_token_is_a_one_line_config_error(driver: AgentNode, token: str,
                                                text: str) -> None:
    from agoramesh.errors import ConfigError

    with pytest.raises(ConfigError, match=text) as info:
        HttpApi(driver.dispatcher, token=token)
    assert "\n" not in str(info.value)
    if token:
        assert token not in str(info.value)


def test_validate_token_accepts_16_token_characters() -> None:
    assert validate_token("aZ09-._~+/=aZ09-") == "aZ09-._~+/=aZ09-"


# --- content types, body limits and what clients can make the server log ------------------


@pytest.mark.parametrize("path", ["/api/tasks", "/api/collaborate"])
@pytest.mark.parametrize("content_type", [None, "text/plain",
                                          "application/x-www-form-urlencoded",
                                          "application/octet-stream", "application/jsonp",
                                          "application/+json", "text/json"],
                         ids=["missing", "text", "form", "octet-stream", "jsonp", "bare-suffix",
                              "text-json"])
async def test_a_body_not_declared_json_is_415(api: HttpApi, http: aiohttp.ClientSession,
                                               path: str, content_type: str | None) -> None:
    body = b'{"capability": "echo", "mode": "debate", "topic": "x"}'
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer = await call(http, "POST", api.url + path, data=body, headers=headers,
                                skip_auto_headers=["Content-Type"])
    assert_error(status, answer, 415, "UnsupportedMediaType",
                 "send Content-Type: application/json")
    assert ("no Content-Type" if content_type is None
            else repr(content_type)) in answer["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8",
                                          "Application/JSON;charset=utf-8",
                                          "application/merge-patch+json",
                                          "application/vnd.example+JSON"])
async def test_json_content_types_are_accepted(api: HttpApi, http: aiohttp.ClientSession,
                                               content_type: str) -> None:
    body = json.dumps({"capability": "echo", "parameters": {"text": "hi"},
                       "strategy": "direct"}).encode()
    status, result = await call(http, "POST", f"{api.url}/api/tasks", data=body,
                                headers={"Content-Type": content_type})
    assert (status, result["result"]) == (200, {"echo": {"text": "hi"}})


async def test_the_content_type_is_checked_before_the_body_is_read(api: HttpApi) -> None:
    """A 415 comes back while the client still owes the whole body (and a 401 comes first)."""
    assert api.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 415 ")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_token_is_checked_before_the_content_type(guarded: HttpApi,
                                                            http: aiohttp.ClientSession) -> None:
    assert_error(*await call(http, "POST", f"{guarded.url}/api/tasks", data=b"x=1",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 401, "Unauthorized", NEEDS_HEADER)


@pytest_asyncio.fixture
async def roomy(driver: AgentNode) -> AsyncIterator[HttpApi]:
    """The API with its default body limit, MAX_BODY."""
    async with HttpApi(driver.dispatcher, agent_id=driver.agent_id, timeout=10) as server:
        yield server


async def test_the_body_limit_is_what_is_accepted(roomy: HttpApi,
                                                  http: aiohttp.ClientSession) -> None:
    """A body of up to ``MAX_BODY`` reaches the agent whole; beyond, a 413 says why."""
    url = f"{roomy.url}/api/tasks"
    for strategy in ("auction", "direct"):
        task: dict[str, Any] = {"capability": "echo", "parameters": {"text": ""},
                                "strategy": strategy}
        text = "x" * (MAX_BODY - 10 - len(json.dumps(task)))
        task["parameters"]["text"] = text
        body = json.dumps(task).encode()
        assert len(body) == MAX_BODY - 10
        status, result = await call(http, "POST", url, data=io.BytesIO(body), headers=JSON)
        assert (status, result.get("status")) == (200, "COMPLETED"), str(result)[:500]
        assert result["result"] == {"echo": {"text": text}}

    over = body + b" " * 11  # still valid JSON; refused for its Content-Length alone
    assert len(over) == MAX_BODY + 1
    assert_error(*await call(http, "POST", url, data=io.BytesIO(over), headers=JSON), 413,
                 "RequestEntityTooLarge", f"larger than {MAX_BODY} bytes")

    # Within MAX_BODY, yet over the bus's message limit once encoded: msgpack writes
    # each 1.5 (4 characters of JSON with its comma) in 9 bytes.
    empty = len(json.dumps({"capability": "echo", "parameters": {"v": []}},
                           separators=(",", ":")))
    numbers = [1.5] * ((MAX_BODY - 10 - empty + 1) // 4)
    body = json.dumps({"capability": "echo", "parameters": {"v": numbers}},
                      separators=(",", ":")).encode()
    assert MAX_BODY - 14 < len(body) <= MAX_BODY - 10
    status, answer = await call(http, "POST", url, data=io.BytesIO(body), headers=JSON)
    assert_error(status, answer, 413, "OversizeEnvelope", f"fit in {MAX_MESSAGE_BYTES} bytes")
    encoded = re.fullmatch(r"the task is (\d+) bytes once encoded for the mesh; .*",
                           answer["error"]["message"])
    assert encoded is not None and int(encoded[1]) > 9 * len(numbers) > MAX_MESSAGE_BYTES


@contextlib.contextmanager
def logged_at_debug(caplog: pytest.LogCaptureFixture) -> Any:
    with caplog.at_level(logging.DEBUG, logger="agoramesh"), \
            caplog.at_level(logging.DEBUG, logger="aiohttp"):
        yield


def ours_and_aiohttp(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.name.split(".")[0] in ("agoramesh", "aiohttp", "asyncio")]


async def test_a_client_hanging_up_mid_body_is_a_quiet_debug_line(
        roomy: HttpApi, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """Content-Length: 100000 and 10 bytes of body, then the client closes.

    Closed at once, the request may be dropped before a handler reads it; with
    ``Expect: 100-continue`` the client waits for "100 Continue", i.e. until the
    request is being handled, so the handler's read is sure to find the loss.
    """
    assert roomy.port is not None
    head = b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sending = [(b"Content-Length: 100000", b"0123456789", False),
               (b"Content-Length: 100000", b"0123456789", True),
               (b"Transfer-Encoding: chunked", b"a\r\n0123456789\r\n", True)]
    with logged_at_debug(caplog):
        for framing, body, expect in sending:
            reader, writer = await asyncio.open_connection("127.0.0.1", roomy.port)
            try:
                writer.write(head + framing + b"\r\n" + (b"Expect: 100-continue\r\n" if expect
                                                         else b"") + b"\r\n")
                if expect:
                    async with asyncio.timeout(5):
                        assert await reader.readuntil(b"\r\n\r\n") == (
                            b"HTTP/1.1 100 Continue\r\n\r\n")
                writer.write(body)
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        await wait_until(lambda: sum("did not arrive" in record.getMessage()
                                     for record in caplog.records) >= 2, timeout=5)
        assert await call(http, "GET", f"{roomy.url}/api/health") == (
            200, {"status": "ok", "agents": 3, "agent_id": roomy.agent_id})
    records = ours_and_aiohttp(caplog)
    lost = [record for record in records if "did not arrive" in record.getMessage()]
    assert {(record.name, record.levelno, record.getMessage()) for record in lost} == {
        ("agoramesh.http", logging.DEBUG,
         "POST /api/tasks: the body did not arrive: Connection lost")}
    assert [record.getMessage() for record in records if record.levelno >= logging.WARNING
            ] == []
    assert [record.getMessage() for record in records if record.exc_info or record.exc_text
            ] == []


MALFORMED = {
    "request-line": b"G" * (128 * 1024) + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
    "header-line": b"GET /api/health HTTP/1.1\r\nX-Junk: " + b"j" * (64 * 1024) + b"\r\n\r\n",
    "control-bytes": b"\x1b[31m\x00" * 1000 + b" / HTTP/1.1\r\n\r\n",
    "bad-chunk": (b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz" + b"z" * (64 * 1024) + b"\r\n\r\n"),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_http_is_a_bounded_debug_line(
        api: HttpApi, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
        request_bytes: bytes) -> None:
    assert api.port is not None
    with logged_at_debug(caplog):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        try:
            writer.write(request_bytes)
            await writer.drain()
            async with asyncio.timeout(5):
                status_line = await reader.readuntil(b"\r\n")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert status_line.split()[1] == b"400", status_line
        await wait_until(lambda: any(
            "malformed HTTP request" in record.getMessage() or "did not arrive"
            in record.getMessage() for record in caplog.records), timeout=5)
        assert (await call(http, "GET", f"{api.url}/api/health"))[0] == 200
    records = ours_and_aiohttp(caplog)
    assert records
    for record in records:
        message = record.getMessage()
        assert len(message) <= RECORD_TEXT and message.isprintable(), message[:300]
        assert record.levelno <= logging.INFO and not record.exc_info and not record.exc_text
        for byte in "Gjz":  # the runs of the requests above: never more than CLIENT_TEXT
            assert byte * (CLIENT_TEXT + 1) not in message


def test_other_aiohttp_records_keep_their_level_with_bounded_text() -> None:
    """A bug's traceback stays, clipped; a long argument is clipped where it is used."""
    try:
        raise RuntimeError("boom " + "q" * 5000)
    except RuntimeError:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                   "Unhandled exception from %s: %r", ("a" * 5000, 7),
                                   sys.exc_info())
    assert ClientTextFilter().filter(record)
    message = record.getMessage()
    assert record.levelno == logging.ERROR and len(message) <= RECORD_TEXT
    assert message.startswith("Unhandled exception from " + "a" * CLIENT_TEXT + "… [+4800 ")
    assert record.exc_info is None and record.exc_text is not None
    lines = record.exc_text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith("RuntimeError: boom qqq") and lines[-1].endswith(" characters]")
    assert max(map(len, lines)) <= CLIENT_TEXT + 30
