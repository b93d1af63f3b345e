"""Claude Code and Codex agents with the mesh as their tools: the CLIs are faked (they play
the real stream formats) and use the MCP server they are given, the real ``agoramesh mcp``,
to hand a sub-task to another agent of the mesh."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from mcp_support import Agents, minimal_env

from agoramesh.nodes.backends.base import BackendConfig
from agoramesh.nodes.backends.cli import MCP_SERVER, McpServer
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import TaskStatus
from agoramesh.testing import NodeProcess, wait_until
from agoramesh.testing.cli import cli
from agoramesh.testing.plugin import AgentFactory
from agoramesh.testing.processes import AGORAMESH

pytestmark = pytest.mark.integration

CLI_AGENT = Path(__file__).with_name("cli_agent.py")
DELEGATE = Capability(name="code.delegate", description="a coding agent with the mesh at hand")
ASK = {"tool": "mesh_submit", "arguments": {"capability": "echo",
                                            "parameters": {"text": "through the mesh"}}}
ECHOED = '{"echo": {"text": "through the mesh"}}'


def install(directory: Path, plays: str) -> Path:
    """The fake CLI as an executable named ``plays`` (claude or codex)."""
    directory.mkdir(exist_ok=True)
    path = directory / plays
    path.write_text(f"#!{sys.executable}\n{CLI_AGENT.read_text()}")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
async def test_a_cli_agent_delegates_through_the_mesh(agents: Agents, agent_factory: AgentFactory,
                                                      tmp_path: Path, kind: str) -> None:
    program = install(tmp_path / "bin", "claude" if kind == "claude-code" else "codex")
    record = tmp_path / "record.json"
    server = McpServer(name="agoramesh", command=(*AGORAMESH, "mcp", "--server", agents.url),
                       env=tuple(minimal_env().items()))
    backend = create_backend(kind, BackendConfig(
        command=(str(program),), env=(("FAKE_RECORD", str(record)),), timeout=90,
        options=((MCP_SERVER, server),)))
    coder = await agent_factory(agents.url, "coder", [DELEGATE], backend=backend,
                                agent_type=kind)
    await wait_until(lambda: coder.agent_id in agents.alpha.directory, timeout=10)

    result = await agents.alpha.dispatcher.submit("code.delegate", {"prompt": json.dumps(ASK)},
                                                  timeout=90)
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.result == {"text": ECHOED}
    assert agents.alpha.metrics.tasks["echo", "completed"] == 1
    given = json.loads(record.read_text())["server"]
    assert (given["name"], given["command"], given["args"], given["env"]) == (
        "agoramesh", AGORAMESH[0], [*AGORAMESH[1:], "mcp", "--server", agents.url],
        minimal_env())
    if kind == "codex":
        assert given["tool_timeout_sec"] == 90.0


@pytest.mark.e2e
async def test_node_mesh_tools_flag(agents: Agents, tmp_path: Path) -> None:
    """``agoramesh node --type claude-code --mesh-tools``: the agent is given this mesh."""
    program = install(tmp_path / "bin", "claude")
    record = tmp_path / "record.json"
    node = await asyncio.to_thread(
        NodeProcess, tmp_path / "home", "--type", "claude-code", "--name", "coder",
        "--connect", agents.url, "--command", str(program), "--capability", DELEGATE.name,
        "--mesh-tools", "--heartbeat", "0.2", env={"FAKE_RECORD": str(record)})
    try:
        await wait_until(lambda: node.id in agents.alpha.directory, timeout=10)
        result = await asyncio.to_thread(
            cli, "submit", DELEGATE.name, json.dumps({"prompt": json.dumps(ASK)}), "--server",
            agents.url, "--json", "--timeout", "90", timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"] == {"text": ECHOED}
        given = json.loads(record.read_text())["server"]
        assert given["command"] == sys.executable
        assert given["args"] == ["-m", "agoramesh", "mcp", "--server", agents.url]
        assert await asyncio.to_thread(node.stop) == 0, node.stderr
    finally:
        node.reap()
