"""The web console's server side with a real HTTP client, offline agents and a real nats-server:
who gets in (token, cookie, CSRF), the headers, the event stream, what it shows."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.api.server import HttpApi
from agoramesh.api.session import CONSOLE_HEADER, COOKIE, SESSION_SECONDS, session_value
from agoramesh.bus.server import EmbeddedServer
from agoramesh.console import Console
from agoramesh.console.feed import ConsoleFeed, console_feed
from agoramesh.console.topology import Topology
from agoramesh.monitoring.records import AgentRecord
from agoramesh.testing import alive, wait_until

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
SESSION = {"Cookie": f"{COOKIE}={session_value(TOKEN.encode(), int(time.time()) + 3600)}"}
WORKFLOW = {"name": "sum-then-echo", "steps": [
    {"name": "add", "capability": "math.evaluate", "parameters": {"expression": "2+3"}},
    {"name": "say", "capability": "echo", "parameters": {"text": "${steps.add.output.value}"},
     "depends_on": ["add"]}]}


@pytest_asyncio.fixture
async def feed(driver: AgentNode, nats_server: EmbeddedServer) -> AsyncIterator[ConsoleFeed]:
    async with console_feed(driver.bus, [nats_server]) as started:
        started.interval = 0.1
        yield started


async def serve(driver: AgentNode, feed: ConsoleFeed, token: str | None) -> HttpApi:
    api = HttpApi(driver.dispatcher, agent_id=driver.agent_id, timeout=10, token=token,
                  mounts=(Console(feed),))
    feed.activity = api.activity
    await api.start()
    return api


@pytest_asyncio.fixture
async def api(driver: AgentNode, feed: ConsoleFeed) -> AsyncIterator[HttpApi]:
    server = await serve(driver, feed, TOKEN)
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def changed(value: str) -> str:
    """``value`` with its last character replaced by another (one in 16 MACs end in "0":
    a "0" put there would leave the cookie valid)."""
    return value[:-1] + ("1" if value.endswith("0") else "0")


async def status_of(http: aiohttp.ClientSession, method: str, url: str,
                    **kwargs: Any) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as response:
        return response.status, await response.text(), response.headers


async def first_events(http: aiohttp.ClientSession, url: str, count: int,
                       headers: dict[str, str]) -> list[dict[str, Any]]:
    """The first ``count`` data events of the console's stream (keep-alives skipped)."""
    events: list[dict[str, Any]] = []
    async with http.get(f"{url}/api/console/events", headers=headers) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        async with asyncio.timeout(10):
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == count:
                        break
    return events


async def test_without_the_token_the_page_its_files_data_and_stream_are_refused(
        api: HttpApi, http: aiohttp.ClientSession) -> None:
    status, text, headers = await status_of(http, "GET", f"{api.url}/")
    assert status == 401 and '<form method="post" action="/login">' in text
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    for path in ("/api/console/events", "/api/console/state", "/console/console.js",
                 "/console/console.css", "/api/agents"):
        status, text, headers = await status_of(http, "GET", f"{api.url}{path}")
        assert status == 401 and json.loads(text)["error"]["type"] == "Unauthorized", path
    now = int(time.time())
    refused = [session_value(b"another-token-0123456789", now + 3600),  # another token's
               session_value(TOKEN.encode(), now - 1),  # expired
               # The right MAC, but an expiry further out than a session lasts: not made here.
               session_value(TOKEN.encode(), now + SESSION_SECONDS + 3600),
               changed(session_value(TOKEN.encode(), now + 3600)),  # a MAC changed
               "", "123", f"{now + 3600}.", ".deadbeef", f"{now + 3600}.zz",
               "\u0661\u0662\u0663.ab", f"-{now}.ab", "9" * 40 + ".ab"]
    for value in refused:
        cookie = {"Cookie": f'{COOKIE}="{value}"'}
        assert (await status_of(http, "GET", f"{api.url}/api/console/events",
                                headers=cookie))[0] == 401, value
    status, text, _ = await status_of(http, "GET", f"{api.url}/?token=not-the-token")
    assert status == 401 and "not this API's token" in text
    assert (await status_of(http, "GET", f"{api.url}/api/health"))[0] == 200
    assert api.unauthorized == 7 + len(refused)


async def test_the_token_in_the_url_or_the_form_becomes_an_httponly_strict_cookie(
        api: HttpApi, http: aiohttp.ClientSession) -> None:
    for status, _, headers in (
            await status_of(http, "GET", f"{api.url}/?token={TOKEN}"),
            await status_of(http, "POST", f"{api.url}/login", data={"token": TOKEN})):
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        value = cookie.split(";")[0].removeprefix(f"{COOKIE}=")
        expires = int(value.partition(".")[0])
        assert 0 < expires - time.time() <= SESSION_SECONDS  # 12 hours from now, at most
        assert value == session_value(TOKEN.encode(), expires)
        assert TOKEN not in cookie
        assert {"HttpOnly", "Path=/", "SameSite=Strict", f"Max-Age={SESSION_SECONDS}"} <= {
            part.strip() for part in cookie.split(";")}
        assert "Secure" not in cookie  # plain http on loopback; over https it is set
    status, text, _ = await status_of(http, "POST", f"{api.url}/login", data={"token": "x"})
    assert status == 401 and "not this API's token" in text
    status, text, _ = await status_of(http, "POST", f"{api.url}/login", data={"token": TOKEN},
                                      headers={"Origin": "http://evil.example"})
    assert status == 403 and "Set-Cookie" not in _
    status, _, headers = await status_of(http, "POST", f"{api.url}/logout")
    assert status == 303 and f"{COOKIE}=\"\"" in headers["Set-Cookie"]

    status, text, headers = await status_of(http, "GET", f"{api.url}/", headers=SESSION)
    assert status == 200 and '<script src="/console/console.js" defer>' in text
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, text, headers = await status_of(http, "GET", f"{api.url}/console/console.js",
                                            headers=SESSION)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert ".innerHTML" not in text and "insertAdjacentHTML" not in text
    assert (await status_of(http, "GET", f"{api.url}/console/secrets.txt",
                            headers=SESSION))[0] == 404


async def test_a_cookie_alone_cannot_change_anything_without_the_console_header(
        api: HttpApi, http: aiohttp.ClientSession) -> None:
    body = json.dumps({"capability": "echo", "parameters": {"text": "hi"}})
    status, text, _ = await status_of(http, "POST", f"{api.url}/api/tasks", data=body,
                                      headers={**SESSION, **JSON})
    assert status == 403 and CONSOLE_HEADER in json.loads(text)["error"]["message"]
    status, _, _ = await status_of(http, "POST", f"{api.url}/api/tasks", data=body, headers={
        **SESSION, **JSON, CONSOLE_HEADER: "1", "Origin": "http://evil.example"})
    assert status == 403 and api.forbidden == 2
    status, text, _ = await status_of(http, "POST", f"{api.url}/api/tasks", data=body, headers={
        **SESSION, **JSON, CONSOLE_HEADER: "1", "Origin": api.url})
    assert status == 200 and json.loads(text)["status"] == "COMPLETED"
    status, text, _ = await status_of(http, "POST", f"{api.url}/api/tasks", data=body,
                                      headers={**BEARER, **JSON})  # a bearer needs no header
    assert status == 200 and json.loads(text)["result"] == {"echo": {"text": "hi"}}


async def test_the_stream_shows_agents_topology_auctions_bid_by_bid_and_activity(
        api: HttpApi, feed: ConsoleFeed, driver: AgentNode, http: aiohttp.ClientSession) -> None:
    await wait_until(lambda: len(feed.view.agents) >= 3, timeout=5)
    [snapshot] = await first_events(http, api.url, 1, SESSION)
    assert snapshot["kind"] == "snapshot"
    assert {agent["name"] for agent in snapshot["agents"]} >= {"analyst", "pro", "con"}
    servers = snapshot["topology"]["servers"]
    assert [(s["name"], s["role"], s["state"]) for s in servers] == [
        (feed.topology.servers[0].config.name, "seed", "up")]

    result = await driver.dispatcher.submit("vote", {"question": "tea?", "options": ["yes",
                                                                                    "no"]})
    assert result.status.value == "COMPLETED"
    status, text, _ = await status_of(http, "POST", f"{api.url}/api/workflows",
                                      data=json.dumps({"workflow": WORKFLOW}),
                                      headers={**BEARER, **JSON})
    assert status == 200 and json.loads(text)["outputs"]["say"] == {"echo": {"text": 5}}
    status, text, _ = await status_of(http, "POST", f"{api.url}/api/collaborate", data=json.dumps(
        {"mode": "debate", "topic": "<b>tabs</b> or spaces", "agents": ["pro", "con"],
         "rounds": 1}), headers={**BEARER, **JSON})
    assert status == 200, text

    def auctioned() -> dict[str, Any] | None:
        found = [a for a in feed.snapshot()["auctions"] if a["task_id"] == result.task_id]
        return found[0] if found else None

    await wait_until(lambda: auctioned() is not None, timeout=5)
    auction = auctioned()
    assert auction is not None and auction["winner"] == result.agent_id
    [round_] = auction["rounds"]
    assert {bid["agent_name"] for bid in round_["bids"]} == {"pro", "con"}
    assert round_["awards"][-1] == {"agent": result.agent_id, "outcome": "completed",
                                    "agent_name": auction["winner_name"]}
    activity = feed.snapshot()["activity"]
    workflow, debate = activity
    assert [(s["name"], s["needs"], s["state"]) for s in workflow["steps"]] == [
        ("add", [], "COMPLETED"), ("say", ["add"], "COMPLETED")]
    assert debate["title"] == "<b>tabs</b> or spaces" and debate["status"] == "completed"
    assert [turn["agent"] for turn in debate["transcript"][:2]] == ["pro", "con"]
    assert debate["transcript"][-1]["kind"] == "consensus"


async def test_a_listener_gets_only_what_changed_and_the_stream_ends_with_the_server(
        api: HttpApi, feed: ConsoleFeed, driver: AgentNode, http: aiohttp.ClientSession) -> None:
    await wait_until(lambda: len(feed.view.agents) >= 3, timeout=5)
    reader = asyncio.create_task(first_events(http, api.url, 3, BEARER))
    await wait_until(lambda: feed.listeners == 1, timeout=5)
    result = await driver.dispatcher.submit("echo", {"text": "x"})
    snapshot, *updates = await reader
    assert snapshot["kind"] == "snapshot" and all(u["kind"] == "update" for u in updates)
    await wait_until(lambda: feed.listeners == 0, timeout=5)  # the reader hung up
    assert feed._ticker is None  # no frames are built for nobody

    stream = asyncio.create_task(first_events(http, api.url, 1000, BEARER))
    await wait_until(lambda: feed.listeners == 1, timeout=5)
    await api.stop()  # ends the stream at once, not after the shutdown timeout
    async with asyncio.timeout(5):
        events = await stream  # ended by the server, well before 1000 events
    assert events[0]["kind"] == "snapshot" and result.status.value == "COMPLETED"


async def test_a_frame_that_fails_is_logged_once_and_the_stream_goes_on(
        api: HttpApi, feed: ConsoleFeed, driver: AgentNode, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in building one frame must not freeze every open console."""
    await wait_until(lambda: len(feed.view.agents) >= 3, timeout=5)
    build = feed.frame
    failures = 0

    def broken() -> dict[str, Any] | None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RuntimeError("a bug in a view")
        return build()

    monkeypatch.setattr(feed, "frame", broken)
    reader = asyncio.create_task(first_events(http, api.url, 2, BEARER))
    await wait_until(lambda: failures == 3, timeout=5)
    await driver.dispatcher.submit("echo", {"text": "after the failures"})
    snapshot, update = await reader
    assert snapshot["kind"] == "snapshot" and update["kind"] == "update"
    logged = [record for record in caplog.records if record.name == "agoramesh.console"]
    assert [record.getMessage() for record in logged] == [
        "a console frame could not be built; the stream goes on",
        "console frames are built again"]
    assert logged[0].exc_info is not None and "a bug in a view" in str(logged[0].exc_info[1])


async def test_without_a_token_the_console_is_open_as_the_api_is(
        driver: AgentNode, feed: ConsoleFeed, http: aiohttp.ClientSession) -> None:
    api = await serve(driver, feed, None)
    try:
        status, text, _ = await status_of(http, "GET", f"{api.url}/")
        assert status == 200 and "agoramesh console" in text
        status, _, headers = await status_of(http, "GET", f"{api.url}/?token=whatever")
        assert status == 303 and "Set-Cookie" not in headers
        status, _, headers = await status_of(http, "GET", f"{api.url}/login")
        assert status == 303 and headers["Location"] == "/"
    finally:
        await api.stop()


async def test_the_topology_has_seeds_routed_a_leaf_on_its_hub_and_a_server_down(
        mesh_factory: Any) -> None:
    mesh = await mesh_factory(seeds=2, leaves=1)
    topology = Topology(mesh.servers, every=60)
    await topology.read()
    graph = topology.graph([], now=0.0, missed=3)
    assert [(s["name"], s["role"], s["state"]) for s in graph["servers"]] == [
        ("seed1", "seed", "up"), ("seed2", "seed", "up"), ("leaf1", "leaf", "up")]
    [route] = [link for link in graph["links"] if link["kind"] == "route"]
    assert (route["a"], route["b"]) == ("seed1", "seed2")
    [leaf] = [link for link in graph["links"] if link["kind"] == "leaf"]
    assert leaf["a"] == "leaf1" and leaf["b"] in ("seed1", "seed2")

    # An agent is placed by the server its telemetry names, and moves when it fails over.
    seed1 = next(s for s in graph["servers"] if s["name"] == "seed1")
    agent = AgentRecord(id="U" + "B" * 55, first_seen=0.0, last_seen=0.0, name="mover",
                        server=(seed1["id"], ""))
    unknown = AgentRecord(id="U" + "C" * 55, first_seen=0.0, last_seen=0.0,
                          server=("NREMOTE", "<b>far</b>"))
    placed = topology.graph([agent, unknown], now=0.0, missed=3)
    assert [(a["name"], a["server"]) for a in placed["agents"]] == [
        ("mover", "seed1"), (unknown.label, "<b>far</b>")]
    assert ("<b>far</b>", "") in [(s["name"], s["role"]) for s in placed["servers"]]
    agent.server = ("NOTHER", "seed2")
    assert topology.graph([agent], now=0.0, missed=3)["agents"][0]["server"] == "seed2"

    pid = mesh.leaves[0].pid
    mesh.leaves[0].kill()
    await wait_until(lambda: not alive(pid), timeout=5)
    await topology.read()
    graph = topology.graph([], now=0.0, missed=3)
    assert ("leaf1", "leaf", "down") in [(s["name"], s["role"], s["state"])
                                         for s in graph["servers"]]
    assert not [link for link in graph["links"] if link["kind"] == "leaf"]
