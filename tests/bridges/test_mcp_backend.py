"""An MCP server's tools as an agent (``--type mcp``): a server written with the SDK (two
tools, one slow, one failing) over stdio and over streamable HTTP, auctioned on a real mesh,
killed and started again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import ConfigError
from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.mcp import McpBackend
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.auction.policy import Progress
from agoramesh.testing import alive, wait_until
from agoramesh.testing.plugin import AgentFactory

pytestmark = pytest.mark.integration

TOOL_SERVER = Path(__file__).with_name("tool_server.py")
SQUARE_SCHEMA = {"type": "object", "required": ["n"],
                 "properties": {"n": {"type": "integer"},
                                "seconds": {"type": "number", "minimum": 0}}}


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def driver(js_server: EmbeddedServer, agent_factory: AgentFactory) -> AgentNode:
    """An agent that runs the auctions (it offers echo only)."""
    node: AgentNode = await agent_factory(js_server.client_url, "driver", ["echo"])
    return node


async def toolbox(agent_factory: AgentFactory, driver: AgentNode, backend: McpBackend,
                  *names: str) -> AgentNode:
    """An agent offering the tools of ``backend``'s server (``names`` only, if given)."""
    node: AgentNode = await agent_factory(driver.bus.config.servers[0], "toolbox",
                                          list(await backend.offered(names)), backend=backend,
                                          agent_type="mcp")
    await wait_until(lambda: node.agent_id in driver.directory, timeout=10)
    return node


async def test_stdio_server_joins_and_survives_a_restart(driver: AgentNode,
                                                         agent_factory: AgentFactory,
                                                         tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    backend = create_backend("mcp", BackendConfig(
        command=(sys.executable, str(TOOL_SERVER), "stdio", str(pidfile)), timeout=30))
    assert isinstance(backend, McpBackend)
    capabilities = await backend.offered()
    assert [cap.name for cap in capabilities] == ["explode", "slow.square"]
    assert capabilities[1].description == "Squares n, slowly."
    assert capabilities[1].input_schema == SQUARE_SCHEMA
    node = await toolbox(agent_factory, driver, backend)
    first = pid_in(pidfile)

    chunks: list[str] = []

    def progress(event: Progress) -> None:
        if event.event == "chunk":
            chunks.append(event.detail["text"])

    outcome = await driver.dispatcher.auctioneer.run(
        Task(capability="slow.square", parameters={"n": 7, "seconds": 0.2}), timeout=20,
        stream=True, progress=progress)
    assert outcome.winner == node.agent_id
    assert outcome.result.result == {"square": 49, "pid": first}
    assert chunks == [f"squaring, step {step} of 10" for step in range(1, 11)]

    failed = await driver.dispatcher.submit("explode", {"reason": "on purpose"})
    assert failed.status is TaskStatus.FAILED
    assert failed.error == {"type": "BackendError", "message": "kaboom: on purpose"}
    refused = await driver.dispatcher.submit("slow.square", {"n": "seven"})
    assert refused.status is TaskStatus.FAILED and refused.error["type"] == "InvalidInput"

    assert first is not None
    os.kill(first, signal.SIGKILL)  # the backend starts its server again
    await wait_until(lambda: backend.connections == 2 and pid_in(pidfile) != first, timeout=20)
    again = await driver.dispatcher.submit("slow.square", {"n": 3})
    assert again.status is TaskStatus.COMPLETED, again.error
    assert again.result == {"square": 9, "pid": pid_in(pidfile)}


class HttpToolServer:
    """``tool_server.py http PORT`` as a process a test kills and starts again."""

    def __init__(self, tmp_path: Path, token: str = "") -> None:
        self.port = free_port()
        self.pidfile = tmp_path / "http.pid"
        self.token = token
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(TOOL_SERVER), "http", str(self.port), str(self.pidfile),
            *([self.token] if self.token else []))
        await wait_until(lambda: pid_in(self.pidfile) is not None, timeout=30)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


@pytest_asyncio.fixture(params=[""], ids=["open"])
async def http_tools(tmp_path: Path, request: pytest.FixtureRequest
                     ) -> AsyncIterator[HttpToolServer]:
    server = HttpToolServer(tmp_path, request.param)
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.returncode is None:
            await server.kill()


async def test_http_server_joins_and_survives_a_restart(driver: AgentNode,
                                                        agent_factory: AgentFactory,
                                                        http_tools: HttpToolServer) -> None:
    backend = McpBackend(BackendConfig(base_url=http_tools.url, timeout=30))
    node = await toolbox(agent_factory, driver, backend, "slow.square")
    assert [cap.name for cap in node.config.capabilities] == ["slow.square"]
    done = await driver.dispatcher.submit("slow.square", {"n": 5})
    assert done.status is TaskStatus.COMPLETED and done.result["square"] == 25

    slow = asyncio.ensure_future(driver.dispatcher.submit(
        "slow.square", {"n": 2, "seconds": 20}, timeout=40))
    await wait_until(lambda: bool(node.tasks.running), timeout=10)
    await http_tools.kill()
    lost = await slow
    assert lost.status is TaskStatus.FAILED
    assert lost.error["type"] == "BackendUnavailable", lost.error

    await http_tools.start()
    await wait_until(lambda: backend.connections >= 2, timeout=30)
    again = await driver.dispatcher.submit("slow.square", {"n": 6})
    assert again.status is TaskStatus.COMPLETED, again.error
    assert again.result == {"square": 36, "pid": pid_in(http_tools.pidfile)}


@pytest.mark.parametrize("http_tools", ["s3cret-token"], ids=["guarded"], indirect=True)
async def test_an_http_server_behind_a_bearer_token(driver: AgentNode,
                                                    agent_factory: AgentFactory,
                                                    http_tools: HttpToolServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The token (``--api-key`` / ``$AGORAMESH_MCP_TOKEN``) goes with every request; without
    it, or with another, the server's 401 is the one-line reason the node cannot start."""
    for wrong in ("", "not-the-token"):
        caplog.clear()
        refused = McpBackend(BackendConfig(base_url=http_tools.url, api_key=wrong or None,
                                           timeout=30))
        try:
            expected = (r"is not reachable: HTTP 401 Unauthorized \(its token: --api-key or "
                        r"\$AGORAMESH_MCP_TOKEN\): Server returned an error response$")
            with pytest.raises(Exception, match=expected) as error:
                await refused.offered()
            assert type(error.value).__name__ == "BackendUnavailable"
            assert "\n" not in str(error.value)
            # Refused after the first attempt: retrying cannot mend a token.
            assert sum("connecting again" in record.message for record in caplog.records) == 1
        finally:
            await refused.aclose()
    backend = McpBackend(BackendConfig(base_url=http_tools.url, api_key=http_tools.token,
                                       timeout=30))
    await toolbox(agent_factory, driver, backend, "slow.square")
    done = await driver.dispatcher.submit("slow.square", {"n": 7})
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.result == {"square": 49, "pid": pid_in(http_tools.pidfile)}


async def test_what_the_backend_refuses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs one MCP server"):
        McpBackend(BackendConfig())
    with pytest.raises(ConfigError, match="needs one MCP server"):
        McpBackend(BackendConfig(command=("x",), base_url="http://127.0.0.1:1/mcp"))
    unreachable = McpBackend(BackendConfig(base_url="http://127.0.0.1:1/mcp", timeout=1))
    try:
        with pytest.raises(Exception, match="is not reachable") as error:
            await unreachable.offered()
        assert type(error.value).__name__ == "BackendUnavailable"
    finally:
        await unreachable.aclose()
    backend = McpBackend(BackendConfig(
        command=(sys.executable, str(TOOL_SERVER), "stdio", str(tmp_path / "pid")), timeout=30))
    try:
        with pytest.raises(ConfigError, match=r"offers explode, slow\.square; not nothing"):
            await backend.offered(["nothing"])
        items: list[Any] = []
        with pytest.raises(Exception, match="has tools, not a chat"):
            async for item in backend.chat([{"role": "user", "content": "hi"}]):
                items.append(item)
        assert items == []
    finally:
        pid = pid_in(tmp_path / "pid")
        await backend.aclose()
    assert pid is not None
    assert not alive(pid)  # aclose saw the SDK's shutdown through: the server exited, reaped


async def test_close_sees_the_server_exit(tmp_path: Path) -> None:
    """aclose lets the SDK's shutdown run to its end: stdin closed, then the server's own
    exit (here a second after stdin ends) awaited and reaped, not left behind running."""
    backend = McpBackend(BackendConfig(
        command=(sys.executable, str(TOOL_SERVER), "stdio", str(tmp_path / "pid"), "1"),
        timeout=30))
    try:
        assert [c.name for c in await backend.offered()] == ["explode", "slow.square"]
    finally:
        pid = pid_in(tmp_path / "pid")
        await backend.aclose()
    assert pid is not None
    assert not alive(pid)


async def test_close_ends_a_supervisor_whose_cancel_was_absorbed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancellation can be lost inside the SDK's anyio scopes (one landing as an attempt
    times out): aclose cancels again, and the supervisor stops at its next attempt anyway,
    instead of reconnecting for ever while aclose waits."""
    backend = McpBackend(BackendConfig(base_url="http://127.0.0.1:1/mcp", timeout=30))
    inside, absorbed = asyncio.Event(), []

    class Absorbing:
        """An attempt that swallows the first cancel it gets, as an anyio scope may."""

        async def __aenter__(self) -> None:
            inside.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if absorbed or task is None:
                    raise
                absorbed.append(task.uncancel())
            raise OSError("connection refused")

        async def __aexit__(self, *exc_info: object) -> None:
            return None

    monkeypatch.setattr(backend, "_open", lambda stack: Absorbing())
    waiting = asyncio.ensure_future(backend.offered())
    try:
        async with asyncio.timeout(5):
            await inside.wait()
        supervisor = backend._supervisor
        assert supervisor is not None
        closing = asyncio.ensure_future(backend.aclose())
        await asyncio.wait({closing}, timeout=5)  # (a timeout here would cancel nothing)
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    if not closing.done():
        supervisor.cancel()  # so the test ends: what aclose should have done
        await asyncio.gather(closing, return_exceptions=True)
        pytest.fail("aclose still waits for a supervisor that goes on reconnecting")
    assert absorbed == [0]  # the first cancel was lost,
    assert supervisor.done()  # and the supervisor stopped anyway
