"""Coding-agent CLIs run headless: Claude Code (``claude -p``) and Codex (``codex exec``).

Each call is one subprocess under :class:`~agoramesh.nodes.backends.command.ChildProcess`:
no shell, cwd ``config.workdir``, our environment plus ``config.env``, one
deadline (``config.timeout``) for the whole run, and the process group killed
however the stream ends. ``config.command[0]`` replaces the executable and
``config.command[1:]`` are extra flags (permission mode, sandbox, ...).

The prompt is the last argument, after ``--`` so that a prompt starting with
``-`` is not read as a flag; one too long for a single argument goes on stdin.
A chat is flattened into one prompt (``System: …``, ``User: …``).

Neither backend retries: both CLIs retry the API themselves, and re-running an
agent that may already have edited files is not a safe retry.

With an :class:`McpServer` as the ``mcp_server`` option (``agoramesh node
--mesh-tools``: the mesh's own ``agoramesh mcp``) the CLI is given that MCP
server for its run, in addition to those it is configured with: Claude Code
as ``--mcp-config`` JSON (``{"mcpServers": {NAME: {"type": "stdio",
"command", "args", "env"}}}``) with its tools allowed (``--allowedTools
mcp__NAME``, as print mode asks no one); Codex as ``-c`` overrides of
``mcp_servers.NAME.command``, ``.args``, ``.env`` (TOML values) and
``.tool_timeout_sec`` (the backend's timeout: a delegated task may take long).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agoramesh.errors import BackendBadResponse, BackendError
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.backends.command import ChildProcess
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Usage

__all__ = ("MCP_SERVER", "ClaudeCodeBackend", "CodexBackend", "McpServer")

# Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN); stay well below it.
_MAX_ARG_BYTES = 100_000
_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: The backend option naming the :class:`McpServer` a CLI agent is given.
MCP_SERVER = "mcp_server"


@dataclass(frozen=True, slots=True)
class McpServer:
    """An MCP server (stdio) a coding-agent CLI is given for its runs: the name its
    configuration files it under, the command that starts it, and environment variables it
    needs beyond those the CLI passes on."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _SERVER_NAME.fullmatch(self.name) or not self.command:
            raise BackendError(f"an MCP server for a CLI agent needs a name of letters, digits, "
                               f"'_' and '-' and a command, not {self.name!r} {self.command!r}")


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


class _AgentCLI(Backend):
    executable: ClassVar[str]
    subcommand: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str]

    @property
    def mcp_server(self) -> McpServer | None:
        server = self.config.option(MCP_SERVER)
        if server is not None and not isinstance(server, McpServer):
            raise BackendError(f"the {MCP_SERVER} option must be an McpServer, "
                               f"not {type(server).__name__}")
        return server

    def _child(self, flags: Sequence[str], prompt: str, *, stdin_arg: str | None
               ) -> ChildProcess:
        """The CLI with ``flags`` and the prompt: as the last argument, or on stdin."""
        executable, *extra = self.config.command or (self.executable,)
        if self.subcommand and tuple(extra[:len(self.subcommand)]) == self.subcommand:
            del extra[:len(self.subcommand)]  # the user wrote `codex exec …` in full
        argv = [executable, *self.subcommand, *extra, *flags]
        if self.config.model:
            argv += ["--model", self.config.model]
        stdin: bytes | None = None
        if len(prompt.encode()) <= _MAX_ARG_BYTES:
            argv += ["--", prompt]
        else:
            stdin = prompt.encode()
            argv += [stdin_arg] if stdin_arg else []
        return ChildProcess(argv, self.config, name=self.executable, stdin=stdin,
                            hint=self.install_hint)


class ClaudeCodeBackend(_AgentCLI):
    """Claude Code in print mode, read as ``stream-json`` (``type = "claude-code"``).

    Every text block of an assistant message is a :class:`Chunk`; the final
    ``result`` event is the :class:`Completion`, with the tokens (cache reads
    and writes counted as input) and the cost Claude Code reports.
    """

    type = "claude-code"
    executable = "claude"
    install_hint = "install Claude Code or pass its path"

    def mcp_flags(self) -> list[str]:
        """The flags that give Claude Code the ``mcp_server`` option's server, and its tools."""
        server = self.mcp_server
        if server is None:
            return []
        program, *arguments = server.command
        config = {"mcpServers": {server.name: {"type": "stdio", "command": program,
                                               "args": arguments, "env": dict(server.env)}}}
        return ["--mcp-config", json.dumps(config), "--allowedTools", f"mcp__{server.name}"]

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        flags = ["-p", "--output-format", "stream-json", "--verbose", *self.mcp_flags()]
        model = self.config.model
        completion: Completion | None = None
        async with self._child(flags, _prompt(messages), stdin_arg=None) as child:
            async for line in child:
                event = _event(line, child.name)
                kind = event.get("type")
                if kind == "system" and event.get("subtype") == "init":
                    model = model or _str(event.get("model"))
                elif kind == "assistant":
                    for text in _text_blocks(event):
                        yield Chunk(text)
                elif kind == "result":
                    completion = self._completion(event, model, child.name)
            await child.finish()
        if completion is None:
            raise BackendBadResponse(f"{self.executable} ended without a result")
        yield completion

    def _completion(self, event: dict[str, Any], model: str | None, name: str) -> Completion:
        if event.get("is_error") or event.get("subtype", "success") != "success":
            errors = event.get("errors")
            message = (_str(event.get("result"))
                       or ("; ".join(map(str, errors)) if isinstance(errors, list) else None)
                       or str(event.get("subtype") or "unknown error"))
            raise BackendError(f"{name}: {message}")
        result = event.get("result")
        if not isinstance(result, str):
            raise BackendBadResponse(f"{name} sent a result without text: {event!r:.200}")
        raw = event.get("usage")
        raw = raw if isinstance(raw, dict) else {}
        usage = Usage(
            input_tokens=_tokens(raw, "input_tokens", "cache_creation_input_tokens",
                                 "cache_read_input_tokens"),
            output_tokens=_tokens(raw, "output_tokens"))
        cost = event.get("total_cost_usd", event.get("cost_usd"))
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            usage = Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                          cost_usd=float(cost))
        else:
            usage = self.price(usage)
        return Completion(output=result, usage=usage, model=model)


class CodexBackend(_AgentCLI):
    """The Codex CLI's ``exec --json`` event stream (``type = "codex"``).

    Every completed ``agent_message`` item is a :class:`Chunk`; the last one is
    the :class:`Completion`'s text, with the tokens of ``turn.completed`` priced
    from the config (Codex does not report a cost).
    """

    type = "codex"
    executable = "codex"
    subcommand = ("exec",)  # config.command[1:] are flags of `codex exec`
    install_hint = "install the Codex CLI or pass its path"

    def mcp_flags(self) -> list[str]:
        """The ``-c`` overrides that give Codex the ``mcp_server`` option's server."""
        server = self.mcp_server
        if server is None:
            return []
        table = f"mcp_servers.{server.name}"
        program, *arguments = server.command
        settings = [f"{table}.command={_toml_string(program)}",
                    f"{table}.args=[{', '.join(map(_toml_string, arguments))}]",
                    f"{table}.tool_timeout_sec={float(self.config.timeout)!r}"]
        if server.env:
            pairs = ", ".join(f"{_toml_string(key)} = {_toml_string(value)}"
                              for key, value in server.env)
            settings.append(f"{table}.env={{{pairs}}}")
        return [flag for setting in settings for flag in ("-c", setting)]

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        usage = Usage()
        text = ""
        completed = False
        error: str | None = None  # `error` events also report retries that may still succeed
        async with self._child(["--json", *self.mcp_flags()], _prompt(messages),
                               stdin_arg="-") as child:
            async for line in child:
                event = _event(line, child.name)
                kind = event.get("type")
                if kind == "item.completed":
                    item = event.get("item")
                    if (isinstance(item, dict)
                            and item.get("type") in ("agent_message", "assistant_message")
                            and isinstance(item.get("text"), str) and item["text"]):
                        text = item["text"]
                        yield Chunk(text)
                elif kind == "turn.completed":
                    completed = True
                    raw = event.get("usage")
                    raw = raw if isinstance(raw, dict) else {}
                    usage += Usage(input_tokens=_tokens(raw, "input_tokens"),
                                   output_tokens=_tokens(raw, "output_tokens"))
                elif kind == "turn.failed":
                    failure = event.get("error")
                    message = failure.get("message") if isinstance(failure, dict) else failure
                    raise BackendError(f"{child.name}: {message or 'the turn failed'}")
                elif kind == "error":
                    error = str(event.get("message") or "unknown error")
            if not completed and error:
                raise BackendError(f"{child.name}: {error}")
            await child.finish()
        if not completed:
            raise BackendBadResponse(f"{self.executable} ended without completing its turn")
        yield Completion(output=text, usage=self.price(usage), model=self.config.model)


def _prompt(messages: Sequence[ChatMessage]) -> str:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{_ROLE_LABELS.get(m['role'], m['role'])}: {m['content']}"
                       for m in messages)


def _event(line: str, name: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        raise BackendBadResponse(f"{name} printed a line that is not JSON: {line[:200]!r}"
                                 ) from None
    if not isinstance(event, dict):
        raise BackendBadResponse(f"{name} printed JSON that is not an event: {line[:200]!r}")
    return event


def _text_blocks(event: dict[str, Any]) -> list[str]:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [block["text"] for block in content
            if isinstance(block, dict) and block.get("type") == "text"
            and isinstance(block.get("text"), str) and block["text"]]


def _tokens(usage: dict[str, Any], *keys: str) -> int:
    return sum(value for key in keys
               if type(value := usage.get(key)) is int and value > 0)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
