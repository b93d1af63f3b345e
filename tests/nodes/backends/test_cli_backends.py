"""Claude Code and Codex backends against fake CLIs that print the real stream formats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from agoramesh.errors import BackendBadResponse, BackendError, BackendUnavailable
from agoramesh.nodes.backends.base import Backend, BackendConfig, collect
from agoramesh.nodes.backends.cli import MCP_SERVER, ClaudeCodeBackend, CodexBackend, McpServer
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage
from agoramesh.testing.processes import alive, assert_stopped
from agoramesh.testing.waiting import wait_until

pytestmark = pytest.mark.backends

# Shared by both fakes: record how we were run, then play FAKE_MODE.
PRELUDE = '''
import json, os, subprocess, sys, time

def emit(event):
    print(json.dumps(event), flush=True)

def record(**extra):
    info = {"argv": sys.argv[1:], "stdin": sys.stdin.read(), "cwd": os.getcwd(),
            "pid": os.getpid(), **extra}
    path = os.environ["FAKE_RECORD"]
    with open(path + ".tmp", "w") as fh:
        json.dump(info, fh)
    os.replace(path + ".tmp", path)

mode = os.environ.get("FAKE_MODE", "ok")
if mode == "orphan":
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record(helper=helper.pid)
else:
    record()
if mode in ("hang", "orphan"):
    time.sleep(60)
if mode == "late":  # a long run that records its end
    time.sleep(30)
    record(late=True)
if mode == "exit":
    print("starting up", file=sys.stderr)
    print("fatal: no credentials found", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "badjson":
    print("Welcome to the CLI!", flush=True)
    sys.exit(0)
'''

CLAUDE = PRELUDE + '''
emit({"type": "system", "subtype": "init", "session_id": "s1", "model": "claude-fake-1",
      "cwd": os.getcwd(), "tools": ["Bash", "Read"], "permissionMode": "default"})
def say(text):
    emit({"type": "assistant", "session_id": "s1", "parent_tool_use_id": None,
          "message": {"id": "msg_1", "type": "message", "role": "assistant",
                      "model": "claude-fake-1", "content": [{"type": "text", "text": text}],
                      "usage": {"input_tokens": 3, "output_tokens": 2}}})
say("Hello, ")
if mode == "stall":
    time.sleep(60)
emit({"type": "assistant", "message": {"role": "assistant", "content": [
    {"type": "thinking", "thinking": "let me look"},
    {"type": "tool_use", "id": "tu_1", "name": "Bash", "input": {"command": "ls"}}]}})
emit({"type": "user", "message": {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "tu_1", "content": "a.py"}]}})
say("world.")
if mode == "error":
    emit({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
          "result": "API Error: 529 overloaded", "session_id": "s1", "total_cost_usd": 0})
    sys.exit(1)
if mode == "max_turns":
    emit({"type": "result", "subtype": "error_max_turns", "is_error": True, "num_turns": 2,
          "session_id": "s1", "total_cost_usd": 0.01})
    sys.exit(1)
emit({"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1200,
      "num_turns": 2, "result": "Hello, world.", "session_id": "s1",
      "total_cost_usd": 0.0123,
      "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1000, "output_tokens": 42,
                "service_tier": "standard"}})
'''

CODEX = PRELUDE + '''
emit({"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"})
emit({"type": "turn.started"})
emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning",
                                         "text": "**Looking at the files**"}})
emit({"type": "item.completed", "item": {"id": "item_1", "type": "agent_message",
                                         "text": "Let me check."}})
if mode == "stall":
    time.sleep(60)
if mode == "retry":
    emit({"type": "error", "message": "Reconnecting... 1/5"})
emit({"type": "item.started", "item": {"id": "item_2", "type": "command_execution",
      "command": "bash -lc ls", "aggregated_output": "", "exit_code": None,
      "status": "in_progress"}})
emit({"type": "item.completed", "item": {"id": "item_2", "type": "command_execution",
      "command": "bash -lc ls", "aggregated_output": "a.py\\n", "exit_code": 0,
      "status": "completed"}})
if mode == "error":
    emit({"type": "error", "message": "unexpected status 401 Unauthorized"})
    emit({"type": "turn.failed", "error": {"message": "unexpected status 401 Unauthorized"}})
    sys.exit(1)
if mode == "stream_error":
    emit({"type": "error", "message": "stream disconnected before completion"})
    sys.exit(1)
emit({"type": "item.completed", "item": {"id": "item_3", "type": "agent_message",
                                         "text": "There is one file: a.py."}})
emit({"type": "turn.completed",
      "usage": {"input_tokens": 1200, "cached_input_tokens": 200, "output_tokens": 345}})
'''


def fake(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return path


def backend(tmp_path: Path, kind: str, mode: str = "ok", **settings: Any) -> Backend:
    executable = fake(tmp_path / "bin", "claude" if kind == "claude-code" else "codex",
                      CLAUDE if kind == "claude-code" else CODEX)
    settings.setdefault("command", (str(executable),))
    env = (("FAKE_RECORD", str(tmp_path / "record.json")), ("FAKE_MODE", mode))
    return create_backend(kind, BackendConfig(env=env, **settings))


def recorded(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "record.json").read_text())
    return data


async def items(stream: Any) -> list[StreamItem]:
    return [item async for item in stream]


async def test_claude_streams_text_blocks_then_the_result(tmp_path: Path) -> None:
    claude = backend(tmp_path, "claude-code", model="claude-opus-test", workdir=tmp_path)
    assert isinstance(claude, ClaudeCodeBackend)
    got = await items(claude.chat([{"role": "user", "content": "-say hello"}]))
    assert got == [Chunk("Hello, "), Chunk("world."), Completion(
        output="Hello, world.", model="claude-opus-test",
        usage=Usage(input_tokens=1110, output_tokens=42, cost_usd=0.0123))]
    run = recorded(tmp_path)
    assert run["argv"] == ["-p", "--output-format", "stream-json", "--verbose",
                           "--model", "claude-opus-test", "--", "-say hello"]
    assert run["stdin"] == ""
    assert Path(run["cwd"]) == tmp_path
    assert not alive(run["pid"])


async def test_claude_execute_wraps_the_text_and_passes_extra_flags(tmp_path: Path) -> None:
    executable = fake(tmp_path / "bin", "claude", CLAUDE)
    claude = backend(tmp_path, "claude-code", system_prompt="Be brief.",
                     command=(str(executable), "--permission-mode", "plan"))
    completion = await collect(claude.execute(Task(capability="greet",
                                                   parameters={"prompt": "hi"})))
    assert completion.output == {"text": "Hello, world."}
    assert completion.model == "claude-fake-1"  # from the init event when none is configured
    assert recorded(tmp_path)["argv"] == [
        "--permission-mode", "plan", "-p", "--output-format", "stream-json", "--verbose",
        "--", "System: Be brief.\n\nUser: hi"]


async def test_a_prompt_too_long_for_argv_goes_on_stdin(tmp_path: Path) -> None:
    prompt = "x" * 200_000
    await collect(backend(tmp_path, "claude-code").chat([{"role": "user", "content": prompt}]))
    run = recorded(tmp_path)
    assert run["argv"][-1] == "--verbose"
    assert run["stdin"] == prompt
    await collect(backend(tmp_path, "codex").chat([{"role": "user", "content": prompt}]))
    run = recorded(tmp_path)
    assert run["argv"][-1] == "-"
    assert run["stdin"] == prompt


@pytest.mark.parametrize(("mode", "message"), [
    ("error", "claude: API Error: 529 overloaded"),
    ("max_turns", "claude: error_max_turns"),
])
async def test_claude_error_results_raise(tmp_path: Path, mode: str, message: str) -> None:
    stream = backend(tmp_path, "claude-code", mode).chat([{"role": "user", "content": "hi"}])
    with pytest.raises(BackendError) as caught:
        await collect(stream)
    assert str(caught.value) == message
    assert not alive(recorded(tmp_path)["pid"])


async def test_codex_streams_agent_messages_and_reports_usage(tmp_path: Path) -> None:
    codex = backend(tmp_path, "codex", model="gpt-test", input_price_per_1k=1.0,
                    output_price_per_1k=2.0,
                    command=(str(fake(tmp_path / "bin", "codex", CODEX)), "exec",
                             "--skip-git-repo-check"))
    assert isinstance(codex, CodexBackend)
    got = await items(codex.chat([{"role": "user", "content": "list the files"}]))
    assert got == [Chunk("Let me check."), Chunk("There is one file: a.py."), Completion(
        output="There is one file: a.py.", model="gpt-test",
        usage=Usage(input_tokens=1200, output_tokens=345, cost_usd=1.89))]
    assert recorded(tmp_path)["argv"] == [
        "exec", "--skip-git-repo-check", "--json", "--model", "gpt-test", "--",
        "list the files"]


MESH = McpServer(name="agoramesh", command=("/opt/agoramesh/bin/python", "-m", "agoramesh",
                                             "mcp", "--server", "nats://10.0.0.5:4222"),
                 env=(("AGORAMESH_PREFIX", "team \"a\"\x7f"),))


async def test_claude_is_given_the_mcp_server_as_json(tmp_path: Path) -> None:
    await collect(backend(tmp_path, "claude-code", model="m", options=((MCP_SERVER, MESH),))
                  .chat([{"role": "user", "content": "delegate"}]))
    argv = recorded(tmp_path)["argv"]
    assert argv[:4] == ["-p", "--output-format", "stream-json", "--verbose"]
    assert argv[4] == "--mcp-config" and argv[6:] == [
        "--allowedTools", "mcp__agoramesh", "--model", "m", "--", "delegate"]
    assert json.loads(argv[5]) == {"mcpServers": {"agoramesh": {
        "type": "stdio", "command": "/opt/agoramesh/bin/python",
        "args": ["-m", "agoramesh", "mcp", "--server", "nats://10.0.0.5:4222"],
        "env": {"AGORAMESH_PREFIX": "team \"a\"\x7f"}}}}


async def test_codex_is_given_the_mcp_server_as_config_overrides(tmp_path: Path) -> None:
    await collect(backend(tmp_path, "codex", timeout=600.0, options=((MCP_SERVER, MESH),))
                  .chat([{"role": "user", "content": "delegate"}]))
    argv = recorded(tmp_path)["argv"]
    assert argv[:2] == ["exec", "--json"] and argv[-2:] == ["--", "delegate"]
    flags = argv[2:-2]
    assert flags[::2] == ["-c"] * 4
    settings = dict(setting.split("=", 1) for setting in flags[1::2])
    values = {key: tomllib.loads(f"value = {value}")["value"] for key, value in settings.items()}
    assert values == {
        "mcp_servers.agoramesh.command": "/opt/agoramesh/bin/python",
        "mcp_servers.agoramesh.args": ["-m", "agoramesh", "mcp", "--server",
                                       "nats://10.0.0.5:4222"],
        "mcp_servers.agoramesh.tool_timeout_sec": 600.0,
        "mcp_servers.agoramesh.env": {"AGORAMESH_PREFIX": "team \"a\"\x7f"}}


async def test_mcp_server_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="must be an McpServer, not dict"):
        await collect(backend(tmp_path, "claude-code", options=((MCP_SERVER, {"x": 1}),))
                      .chat([{"role": "user", "content": "hi"}]))
    with pytest.raises(BackendError, match="needs a name of letters"):
        McpServer(name="a.b", command=("x",))
    with pytest.raises(BackendError, match="needs a name of letters"):
        McpServer(name="mesh", command=())


async def test_codex_error_events_that_were_retried_do_not_fail_the_turn(
        tmp_path: Path) -> None:
    completion = await collect(backend(tmp_path, "codex", "retry").chat(
        [{"role": "user", "content": "hi"}]))
    assert completion.output == "There is one file: a.py."


@pytest.mark.parametrize(("mode", "message"), [
    ("error", "codex: unexpected status 401 Unauthorized"),
    ("stream_error", "codex: stream disconnected before completion"),
])
async def test_codex_failures_raise_with_their_message(tmp_path: Path, mode: str,
                                                       message: str) -> None:
    with pytest.raises(BackendError) as caught:
        await collect(backend(tmp_path, "codex", mode).chat([{"role": "user", "content": "hi"}]))
    assert str(caught.value) == message


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
async def test_a_failed_exit_quotes_stderr(tmp_path: Path, kind: str) -> None:
    with pytest.raises(BackendError) as caught:
        await collect(backend(tmp_path, kind, "exit").chat([{"role": "user", "content": "hi"}]))
    name = "claude" if kind == "claude-code" else "codex"
    assert str(caught.value) == (
        f"{name} exited with code 3: starting up\nfatal: no credentials found")


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
async def test_a_line_that_is_not_json_is_a_bad_response(tmp_path: Path, kind: str) -> None:
    with pytest.raises(BackendBadResponse, match="not JSON: 'Welcome to the CLI!'"):
        await collect(backend(tmp_path, kind, "badjson").chat(
            [{"role": "user", "content": "hi"}]))
    assert not alive(recorded(tmp_path)["pid"])


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
async def test_a_hanging_cli_times_out_and_is_killed(tmp_path: Path, kind: str) -> None:
    stream = backend(tmp_path, kind, "hang", timeout=0.5).chat(
        [{"role": "user", "content": "hi"}])
    with pytest.raises(BackendUnavailable, match=r"timed out after 0\.5s"):
        await collect(stream)
    pid = recorded(tmp_path)["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_the_whole_process_group_is_killed(tmp_path: Path) -> None:
    stream = backend(tmp_path, "claude-code", "orphan", timeout=0.5).chat(
        [{"role": "user", "content": "hi"}])
    with pytest.raises(BackendUnavailable):
        await collect(stream)
    run = recorded(tmp_path)
    # The helper was the fake's child: once killed, only its (zombie) entry may linger.
    await wait_until(lambda: not alive(run["helper"]), timeout=5.0)
    assert_stopped([run["pid"], run["helper"]])


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
async def test_stopping_early_kills_the_cli(tmp_path: Path, kind: str) -> None:
    stream = backend(tmp_path, kind, "stall").chat([{"role": "user", "content": "hi"}])
    assert isinstance(stream, AsyncGenerator)
    async for item in stream:
        assert isinstance(item, Chunk)
        break
    assert alive(recorded(tmp_path)["pid"])
    await stream.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(recorded(tmp_path)["pid"], 0)


async def test_stopping_execute_early_kills_the_cli(tmp_path: Path) -> None:
    stream = backend(tmp_path, "claude-code", "stall").execute(Task(capability="greet"))
    assert isinstance(stream, AsyncGenerator)
    assert await anext(stream) == Chunk("Hello, ")
    await stream.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(recorded(tmp_path)["pid"], 0)


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
@pytest.mark.parametrize("size", [10, 200_000])  # the prompt as an argument, or on stdin
def test_the_cli_dies_with_its_node(tmp_path: Path, kill_node: Callable[..., None],
                                    size: int) -> None:
    claude = fake(tmp_path / "bin", "claude", CLAUDE)
    record = tmp_path / "record.json"
    env = {"FAKE_RECORD": str(record), "FAKE_MODE": "late"}

    def child_pid() -> int | None:
        return int(recorded(tmp_path)["pid"]) if record.exists() else None

    kill_node("claude-code", claude, env, child_pid, size=size)
    run = recorded(tmp_path)
    assert "late" not in run
    assert len(run["stdin"]) == (size if size > 100_000 else 0)


async def test_cancelling_the_task_kills_the_cli(tmp_path: Path) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend(tmp_path, "codex", "stall").chat(
                [{"role": "user", "content": "hi"}]):
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(recorded(tmp_path)["pid"], 0)


@pytest.mark.parametrize(("kind", "message"), [
    ("claude-code", "claude-not-here-xyz not found on PATH; "
                    "install Claude Code or pass its path"),
    ("codex", "claude-not-here-xyz not found on PATH; install the Codex CLI or pass its path"),
])
async def test_a_missing_executable_is_a_clear_error(kind: str, message: str) -> None:
    stream = create_backend(kind, BackendConfig(command=("claude-not-here-xyz",))).chat(
        [{"role": "user", "content": "hi"}])
    with pytest.raises(BackendError) as caught:
        await collect(stream)
    assert str(caught.value) == message


async def test_the_default_executable_is_looked_up_on_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path / "bin", "claude", CLAUDE)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    completion = await collect(ClaudeCodeBackend().chat([{"role": "user", "content": "hi"}]))
    assert completion.output == "Hello, world."
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match=r"^claude not found on PATH; install Claude Code"):
        await collect(ClaudeCodeBackend().chat([{"role": "user", "content": "hi"}]))


async def test_a_missing_workdir_is_named(tmp_path: Path) -> None:
    claude = backend(tmp_path, "claude-code", workdir=tmp_path / "gone")
    with pytest.raises(BackendError, match=r"workdir .*gone does not exist"):
        await collect(claude.chat([{"role": "user", "content": "hi"}]))
