"""The A2A bridge as processes: an A2A client and an A2A agent meeting through a mesh of
``agoramesh node`` processes (``--a2a-port``, ``--type a2a``), ``agoramesh a2a`` on its own,
and the one-line error without the extra."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from a2a_support import TOKEN, ToolAgent

from agoramesh.nodes.backends.a2a import output_of
from agoramesh.testing import NodeProcess
from agoramesh.testing.processes import CLIProcess, LineReader
from agoramesh.testing.up import READY_TIMEOUT

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class BridgeProcess(CLIProcess):
    """``agoramesh a2a --json --port 0 *args``, ``ready`` its ready line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        super().__init__("a2a", "--json", "--port", "0", *args, env=env)
        assert self.process.stdout is not None
        line = ""
        try:
            line = LineReader(self.process.stdout).readline(time.monotonic() + READY_TIMEOUT)
        finally:
            self.ready: dict[str, Any] = json.loads(line) if line else {}
            if not self.ready:
                self.reap()
        assert self.ready, f"agoramesh a2a was not ready: {self.stderr}"

    def stop(self) -> int:
        self._stop(signal.SIGTERM, 20)
        return self.process.returncode


@pytest.fixture
def processes() -> Iterator[list[CLIProcess]]:
    started: list[CLIProcess] = []
    yield started
    for process in started:
        process.reap()


async def _client(http: httpx.AsyncClient, url: str) -> Client:
    card = await A2ACardResolver(http, url).get_agent_card()
    return ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)


async def _send(client: Client, text: str, skill: str) -> Any:
    sent = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)],
                   metadata={"skill": skill})
    answers = [event async for event in client.send_message(SendMessageRequest(message=sent))]
    return answers[-1].task


async def _skills(http: httpx.AsyncClient, url: str) -> list[str]:
    card = (await http.get(url + "/.well-known/agent-card.json")).json()
    return [skill["id"] for skill in card["skills"]]


async def test_an_a2a_client_and_an_a2a_agent_meet_through_the_mesh(
        tmp_path: Path, tool_agent: ToolAgent, tool_url: str,
        processes: list[CLIProcess]) -> None:
    env = {"AGORAMESH_API_TOKEN": TOKEN}
    seed = await asyncio.to_thread(NodeProcess, tmp_path / "seed", "--name", "seed",
                                   "--capability", "echo", "--heartbeat", "0.5",
                                   "--a2a-port", "0", env=env)
    processes.append(seed)
    # The A2A agent joins: the node fetches its card while this loop serves it.
    tools = await asyncio.to_thread(NodeProcess, tmp_path / "tools", "--name", "tools",
                                    "--type", "a2a", "--a2a-url", tool_url, "--heartbeat", "0.5",
                                    "--connect", seed.ready["client"])
    processes.append(tools)
    assert tools.ready["type"] == "a2a"
    assert tools.ready["capabilities"] == ["echo", "tool.fail", "slow", "Say-hello"]

    async with httpx.AsyncClient(headers=AUTH, timeout=20) as http:
        url = seed.ready["a2a"]
        for _ in range(100):
            if "Say-hello" in await _skills(http, url):
                break
            await asyncio.sleep(0.1)
        assert await _skills(http, url) == ["Say-hello", "echo", "slow", "tool.fail"]
        client = await _client(http, url)
        task = await _send(client, "hi", "Say-hello")  # an auction: only tools offers it
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
        assert output_of(task.artifacts[0].parts) == {"text": "hello"}
        assert task.artifacts[0].metadata["agent_id"] == tools.id
        assert tool_agent.seen[-1] == ("Say hello!", {"text": "hi"})
        task = await _send(client, "x", "tool.fail")
        assert task.status.state == TaskState.TASK_STATE_FAILED
        assert "the tool broke" in task.status.message.parts[0].text

        refused = await http.post(url + "/", json={}, headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401

        bridge = await asyncio.to_thread(BridgeProcess, "--server", seed.ready["client"],
                                         env={**env, "AGORAMESH_HOME": str(tmp_path / "b")})
        processes.append(bridge)
        assert bridge.ready["agents"] == 2
        assert bridge.ready["card"] == bridge.ready["a2a"] + "/.well-known/agent-card.json"
        client = await _client(http, bridge.ready["a2a"])
        task = await _send(client, "hi", "Say-hello")
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        agent = await _client(http, bridge.ready["a2a"] + "/agents/seed")
        task = await _send(agent, "over here", "echo")
        assert task.artifacts[0].metadata["agent_id"] == seed.id

    assert await asyncio.to_thread(bridge.stop) == 0, bridge.stderr
    assert await asyncio.to_thread(tools.stop) == 0, tools.stderr
    assert await asyncio.to_thread(seed.stop) == 0, seed.stderr


@pytest.mark.parametrize("argv", [["a2a", "--port", "0"],
                                  ["node", "--name", "x", "--type", "a2a",
                                   "--a2a-url", "http://127.0.0.1:9"],
                                  ["node", "--name", "x", "--a2a-port", "0"]])
def test_without_the_extra_one_line_and_a_failure(tmp_path: Path, argv: list[str]) -> None:
    program = ("import sys; sys.modules['a2a'] = None; from agoramesh.cli.main import run; "
               f"sys.exit(run({argv!r}))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={**os.environ, "AGORAMESH_HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "pip install 'agoramesh[a2a]'" in lines[-1] and "missing" in lines[-1], lines
    assert "Traceback" not in done.stderr
