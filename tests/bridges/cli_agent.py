"""A fake coding-agent CLI that uses the MCP server it is configured with, as the real ones do.

Installed as ``claude`` or ``codex`` (its name says which it plays), it reads the MCP server
from its flags the way that CLI would (Claude Code: ``--mcp-config`` JSON and
``--allowedTools mcp__NAME``; Codex: ``-c mcp_servers.NAME.*`` TOML overrides), records its
arguments in ``$FAKE_RECORD``, starts the server with the SDK's stdio client, calls the tool
its prompt names (the prompt is JSON: ``{"tool", "arguments"}``), and answers with the
tool's text in its own stream format.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters, types

PLAYS = Path(sys.argv[0]).name


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def claude_server(argv: list[str]) -> tuple[str, dict[str, Any]]:
    config = json.loads(argv[argv.index("--mcp-config") + 1])
    [(name, server)] = config["mcpServers"].items()
    assert argv[argv.index("--allowedTools") + 1] == f"mcp__{name}", argv
    return name, server


def codex_server(argv: list[str]) -> tuple[str, dict[str, Any]]:
    settings: dict[str, Any] = {}
    for flag, setting in itertools.pairwise(argv):
        if flag == "-c":
            key, _, value = setting.partition("=")
            settings[key] = tomllib.loads(f"value = {value}")["value"]
    [name] = {key.split(".")[1] for key in settings}
    table = f"mcp_servers.{name}"
    return name, {"command": settings[f"{table}.command"], "args": settings[f"{table}.args"],
                  "env": settings.get(f"{table}.env", {}),
                  "tool_timeout_sec": settings[f"{table}.tool_timeout_sec"]}


async def call(server: dict[str, Any], tool: str, arguments: dict[str, Any]) -> str:
    parameters = StdioServerParameters(command=server["command"], args=server["args"],
                                       env={**os.environ, **server["env"]})
    async with Client(parameters, mode="legacy") as client:
        listed = [listed.name for listed in (await client.list_tools()).tools]
        assert tool in listed, listed
        result = await client.call_tool(tool, arguments)
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    return ("ERROR " if result.is_error else "") + "".join(texts)


def main() -> None:
    argv = sys.argv[1:]
    prompt = argv[argv.index("--") + 1]
    name, server = claude_server(argv) if PLAYS == "claude" else codex_server(argv)
    with open(os.environ["FAKE_RECORD"], "w") as record:
        json.dump({"argv": argv, "server": {"name": name, **server}}, record)
    asked = json.loads(prompt)
    answer = asyncio.run(call(server, asked["tool"], asked["arguments"]))
    if PLAYS == "claude":
        emit({"type": "system", "subtype": "init", "model": "claude-fake", "tools": [
            f"mcp__{name}__{asked['tool']}"]})
        emit({"type": "assistant", "message": {"content": [{"type": "text", "text": answer}]}})
        emit({"type": "result", "subtype": "success", "is_error": False, "result": answer,
              "usage": {"input_tokens": 1, "output_tokens": 1}, "total_cost_usd": 0})
    else:
        emit({"type": "thread.started", "thread_id": "t1"})
        emit({"type": "item.completed", "item": {"id": "i1", "type": "agent_message",
                                                 "text": answer}})
        emit({"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}})


if __name__ == "__main__":
    main()
