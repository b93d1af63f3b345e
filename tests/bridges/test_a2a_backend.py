"""A remote A2A agent as a mesh agent (``--type a2a``): an agent written with a2a-sdk alone
joins, bids, wins, streams, fails with its message, is cancelled; and a mesh served by the
A2A bridge joins another as such an agent, its schemas kept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from a2a_support import TOKEN, ToolAgent, tool_agent_site

from agoramesh.agent import AgentNode
from agoramesh.bridges.a2a_server import A2AServer
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import BackendError, ConfigError
from agoramesh.nodes.backends.a2a import A2ABackend, capability_name
from agoramesh.nodes.backends.base import BackendConfig, collect
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.capability import ANY_OBJECT
from agoramesh.nodes.task import Completion, Task, TaskStatus
from agoramesh.protocols.auction.policy import Progress
from agoramesh.testing import wait_until

pytestmark = pytest.mark.integration


def test_skill_ids_become_capability_names() -> None:
    assert capability_name("echo") == "echo"
    assert capability_name("Say hello!") == "Say-hello"
    assert capability_name("code..review/python") == "code.review-python"
    assert capability_name("!!!") == "skill"
    assert capability_name("echo", taken=["echo", "echo-2"]) == "echo-3"
    assert len(capability_name("x" * 500)) <= 128


async def test_the_card_says_the_capabilities(tool_url: str) -> None:
    backend = create_backend("a2a", BackendConfig(base_url=tool_url))
    assert isinstance(backend, A2ABackend)
    try:
        capabilities = await backend.offered()
        assert [cap.name for cap in capabilities] == ["echo", "tool.fail", "slow", "Say-hello"]
        assert capabilities[0].description == "says back what it was given"
        assert all(cap.input_schema == ANY_OBJECT for cap in capabilities)
        assert backend.skills["Say-hello"] == "Say hello!"
        assert [cap.name for cap in await backend.offered(["slow"])] == ["slow"]
        with pytest.raises(ConfigError, match="not fly"):
            await backend.offered(["fly"])
    finally:
        await backend.aclose()
    full = A2ABackend(BackendConfig(base_url=tool_url + "/.well-known/agent-card.json"))
    try:
        assert len(await full.offered()) == 4
    finally:
        await full.aclose()
    for url, why in (("http://127.0.0.1:9/", "no usable A2A agent card"),
                     ("ftp://example.com/", "http"), (None, "--a2a-url")):
        with pytest.raises(ConfigError, match=why):
            await A2ABackend(BackendConfig(base_url=url, timeout=2)).offered()


async def test_an_a2a_agent_joins_wins_streams_fails_and_is_cancelled(
        nats_server: EmbeddedServer, agent_factory: Any, tool_agent: ToolAgent,
        tool_url: str) -> None:
    backend = A2ABackend(BackendConfig(base_url=tool_url))
    capabilities = await backend.offered()
    url = nats_server.client_url
    remote = await agent_factory(url, "tools", capabilities, backend=backend, agent_type="a2a")
    local = await agent_factory(url, "local", ["echo"])  # bids for echo too
    driver: AgentNode = await agent_factory(url, "driver", ["vote"])
    await wait_until(lambda: remote.agent_id in driver.directory
                     and local.agent_id in driver.directory, timeout=5)

    result = await driver.dispatcher.submit("Say-hello", {"text": "hi"})
    assert (result.status, result.result, result.agent_id) == (
        TaskStatus.COMPLETED, {"text": "hello"}, remote.agent_id)
    assert tool_agent.seen[-1] == ("Say hello!", {"text": "hi"})  # text in, skill named

    winners = {(await driver.dispatcher.submit("echo", {"n": 3, "items": [1, 2.5]})).agent_id
               for _ in range(6)}
    assert remote.agent_id in winners or local.agent_id in winners
    result = await driver.dispatcher.submit("echo", {"n": 3, "items": [1, 2.5]},
                                            agent_id=remote.agent_id)
    assert result.result == {"echo": {"n": 3, "items": [1, 2.5]}}  # data in, data out

    failed = await driver.dispatcher.submit("tool.fail", {"text": "x"})
    assert failed.status is TaskStatus.FAILED and failed.agent_id == remote.agent_id
    assert failed.error is not None and "the tool broke" in failed.error["message"]

    events: list[Progress] = []
    result = await driver.dispatcher.submit("slow", {"text": "go"}, stream=True,
                                            progress=events.append)
    chunks = [event.detail["text"] for event in events if event.event == "chunk"]
    assert result.status is TaskStatus.COMPLETED and chunks[:2] == ["tick 0\n", "tick 1\n"]
    assert len(chunks) == 40

    before = len(tool_agent.seen)
    running = asyncio.ensure_future(driver.dispatcher.submit("slow", {"text": "go"},
                                                             task_id="cancel-me"))
    await wait_until(lambda: len(tool_agent.seen) > before, timeout=5)
    await asyncio.sleep(0.2)
    assert driver.dispatcher.auctioneer.cancel("cancel-me")
    with pytest.raises(Exception, match="cancelled"):
        await running
    await wait_until(lambda: len(tool_agent.cancelled) == 1, timeout=5)  # cancelled there too


async def test_a_mesh_behind_the_bridge_joins_with_its_schemas_and_token(
        a2a: A2AServer, driver: AgentNode) -> None:
    backend = A2ABackend(BackendConfig(base_url=a2a.url, api_key=TOKEN))
    try:
        capabilities = {cap.name: cap for cap in await backend.offered()}
        assert sorted(capabilities) == ["echo", "math.evaluate", "text.debate",
                                        "text.summarize", "vote"]
        local = {cap.name: cap for cap in driver.config.capabilities}
        assert capabilities["math.evaluate"].input_schema == local["math.evaluate"].input_schema
        done = await collect(backend.execute(Task(capability="math.evaluate",
                                                  parameters={"expression": "3*4"})))
        assert done.output == {"value": 12}
        with pytest.raises(BackendError, match=r"InvalidInput: division by zero"):
            await collect(backend.execute(Task(capability="math.evaluate",
                                               parameters={"expression": "1/0"})))
        with pytest.raises(BackendError, match="InvalidParamsError"):
            await collect(backend.execute(Task(capability="math.evaluate",
                                               parameters={"expression": 5})))
        with pytest.raises(BackendError, match="name the skill"):  # five skills: which?
            await collect(backend.chat([{"role": "user", "content": "hi"}]))
    finally:
        await backend.aclose()
    refused = A2ABackend(BackendConfig(base_url=a2a.url))
    try:
        await refused.offered()  # the card is public
        with pytest.raises(BackendError, match="401"):
            await collect(refused.execute(Task(capability="echo", parameters={"text": "x"})))
    finally:
        await refused.aclose()


async def test_a_card_without_skills_or_streaming() -> None:
    agent = ToolAgent()
    async with tool_agent_site(agent, streaming=False, skills=False) as site:
        backend = A2ABackend(BackendConfig(base_url=site.url))
        try:
            with pytest.raises(ConfigError, match="declares no skills"):
                await backend.offered()
            assert [cap.name for cap in await backend.offered(["anything"])] == ["anything"]
            items = [item async for item in backend.execute(
                Task(capability="anything", parameters={"text": "go"}))]
            assert items == [Completion(output={"echo": {"text": "go"}}, model="tools")]
            assert agent.seen == [(None, {"text": "go"})]  # no skill named
        finally:
            await backend.aclose()
    async with tool_agent_site(agent, streaming=False) as site:
        backend = A2ABackend(BackendConfig(base_url=site.url))
        try:
            await backend.offered()
            items = [item async for item in backend.execute(
                Task(capability="slow", parameters={"text": "go"}))]
            assert len(items) == 1 and isinstance(items[0], Completion)  # no chunks: no stream
        finally:
            await backend.aclose()
