"""The CLI as a user or an MCP host runs it: ``agoramesh mcp`` (its HTTP ready line, its
stdout kept for JSON-RPC, how it stops, the one-line error without the ``mcp`` extra) and
``agoramesh node --type mcp``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client
from mcp_support import Agents, minimal_env

from agoramesh.bus.server import EmbeddedServer
from agoramesh.testing import NodeProcess, alive
from agoramesh.testing.cli import assert_one_line_error, cli
from agoramesh.testing.processes import AGORAMESH, CLIProcess, LineReader

TOOL_SERVER = Path(__file__).with_name("tool_server.py")

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_http_ready_line_and_signals(agents: Agents) -> None:
    server = CLIProcess("mcp", "--server", agents.url, "--http-port", "0", "--json")
    try:
        assert server.process.stdout is not None
        reader = LineReader(server.process.stdout)  # in a thread: the agents answer meanwhile
        ready = json.loads(await asyncio.to_thread(reader.readline, time.monotonic() + 60))
        assert ready["event"] == "ready" and ready["url"].endswith("/mcp")
        assert ready["server"] == agents.url and ready["tools"] == 8
        async with Client(ready["url"], mode="legacy") as client:
            result = await client.call_tool("echo", {"text": "over http"})
            assert result.structured_content["result"] == {"echo": {"text": "over http"}}
        started = time.monotonic()
        await asyncio.to_thread(server._stop, signal.SIGTERM, 20)
        assert server.process.returncode == 0, server.stderr
        assert time.monotonic() - started < 10
    finally:
        server.reap()


async def test_stdio_stops_on_a_signal_with_stdin_open(agents: Agents) -> None:
    """A SIGTERM while the host still holds stdin open stops it at once; stdout stays empty."""
    process = await asyncio.create_subprocess_exec(
        *AGORAMESH, "mcp", "--server", agents.url, "--log-level", "info",
        env={"HOME": os.environ.get("HOME", "/"), "PATH": os.environ.get("PATH", ""),
             **minimal_env()},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        async with asyncio.timeout(60):
            while b"serving MCP on stdio" not in (line := await process.stderr.readline()):
                assert line, "it exited before serving"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out, err = await process.communicate()
        assert time.monotonic() - started < 5
        assert process.returncode == 0, err
        assert out == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_without_the_mcp_extra(tmp_path: Path) -> None:
    """The SDK missing (here: an ``mcp`` that cannot be imported first on the path)."""
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run([*AGORAMESH, "mcp", "--server", "nats://127.0.0.1:1"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(result, r"needs the MCP SDK: pip install 'agoramesh\[mcp\]' "
                                  r"\(mcp missing\)")
    assert result.stdout == ""
    result = subprocess.run([*AGORAMESH, "node", "--type", "mcp", "--name", "x", "--connect",
                             "nats://127.0.0.1:1", "--mcp-url", "http://127.0.0.1:1/mcp"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(result, r"the mcp backend needs an extra package: pip install "
                                  r"'agoramesh\[mcp\]' \(mcp missing\)")


def test_bad_options() -> None:
    assert_one_line_error(cli("mcp", "--timeout", "0"), "--timeout must be positive")
    assert_one_line_error(cli("mcp", "--api-token", "a-token-of-24-characters"),
                          "--api-token needs --http-port")


def test_node_type_mcp(js_server: EmbeddedServer, tmp_path: Path) -> None:
    """``node --type mcp`` runs the server, offers its tools; ``submit`` reaches one."""
    url, pidfile = js_server.client_url, tmp_path / "pid"
    command = shlex.join([sys.executable, str(TOOL_SERVER), "stdio", str(pidfile)])
    node = NodeProcess(tmp_path / "home", "--type", "mcp", "--name", "toolbox", "--connect", url,
                       "--mcp-command", command, "--heartbeat", "0.2")
    try:
        assert node.ready["type"] == "mcp"
        assert node.ready["capabilities"] == ["explode", "slow.square"]
        result = cli("submit", "slow.square", '{"n": 4}', "--server", url, "--json")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["status"] == "COMPLETED" and answer["result"]["square"] == 16
        failed = cli("submit", "explode", "{}", "--server", url, "--json")
        assert failed.returncode == 1 and json.loads(failed.stdout)["error"] == {
            "type": "BackendError", "message": "kaboom: no reason"}
        tool_pid = int(pidfile.read_text())
        assert node.stop() == 0, node.stderr
        assert not alive(tool_pid)
    finally:
        node.reap()


def test_node_flags_of_other_types() -> None:
    assert_one_line_error(cli("node", "--type", "mcp", "--name", "x"),
                          r"--type mcp needs its MCP server: --mcp-command or --mcp-url")
    assert_one_line_error(cli("node", "--name", "x", "--mcp-url", "http://127.0.0.1:1/mcp"),
                          r"--mcp-command and --mcp-url are for --type mcp")
    assert_one_line_error(cli("node", "--name", "x", "--mesh-tools"),
                          r"--mesh-tools is for --type claude-code or codex")


def test_node_type_mcp_over_http_with_a_token(js_server: EmbeddedServer, tmp_path: Path) -> None:
    """``--mcp-url`` to a server behind a bearer token: ``$AGORAMESH_MCP_TOKEN`` gets the node
    in; without it the node does not start, and says the server answered 401."""
    url, pidfile = js_server.client_url, tmp_path / "http.pid"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(TOOL_SERVER), "http", str(port),
                               str(pidfile), "tool-token"])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        assert pidfile.exists(), "the tool server did not start"
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        refused = cli("node", "--type", "mcp", "--name", "toolbox", "--connect", url,
                      "--mcp-url", mcp_url, "--api-key", "another-token")
        assert refused.returncode == 1
        last = refused.stderr.strip().splitlines()[-1]
        assert re.fullmatch(r"agoramesh: error: the MCP server \S+ is not reachable: HTTP 401 "
                            r"Unauthorized \(its token: --api-key or \$AGORAMESH_MCP_TOKEN\): "
                            r"Server returned an error response", last), refused.stderr
        node = NodeProcess(tmp_path / "home", "--type", "mcp", "--name", "toolbox",
                           "--connect", url, "--mcp-url", mcp_url, "--heartbeat", "0.2",
                           env={"AGORAMESH_MCP_TOKEN": "tool-token"})
        try:
            assert node.ready["capabilities"] == ["explode", "slow.square"]
            result = cli("submit", "slow.square", '{"n": 5}', "--server", url, "--json")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["result"]["square"] == 25
            assert node.stop() == 0, node.stderr
        finally:
            node.reap()
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_token_for_a_stdio_server_is_refused() -> None:
    assert_one_line_error(cli("node", "--type", "mcp", "--name", "x", "--mcp-command", "true",
                              "--api-key", "a-token"),
                          r"--api-key is the token of an MCP server over HTTP \(--mcp-url\)")
