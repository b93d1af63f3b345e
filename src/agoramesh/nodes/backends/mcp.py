"""An MCP server's tools as an agent's capabilities (``agoramesh node --type mcp``).

The server is a child process spoken to over stdio (``config.command``: the
program and its arguments, ``--mcp-command``; it gets our environment plus
``config.env``, and ``config.workdir`` as its directory) or a streamable HTTP
endpoint (``config.base_url``, ``--mcp-url``; ``config.api_key`` is sent as its
bearer token, and an HTTP error it answers is named in the reason a connection
failed), through the official SDK's client. One connection serves the node's
life: a supervisor task opens it, pings it when idle, and when it is lost (the
child exited, the HTTP server went away) opens it again, after 0.1 s doubling
to 2 s between attempts; a stdio server that exited is started again. A task that arrives meanwhile
waits for the connection, up to ``config.timeout``, unless the server refused
our token (401, 403) on the last attempt: that fails at once.

Each tool is a capability (:func:`capability_name`: the tool's name with
anything but letters, digits, ``_``, ``-`` and ``.`` as ``_``), with the
tool's description and input schema (an invalid schema is replaced by
``{"type": "object"}`` and logged), fixed when the node starts: the tools of
a server that comes back with others are not offered until the node restarts.

A task is one ``tools/call`` with the task's parameters as arguments. The
server's progress messages are streamed as chunks; the output is the result's
structured content, else ``{"text": …}`` (its text blocks) with any other
blocks under ``content``. A tool error (``isError``) fails the task with a
:class:`BackendError` whose message is the server's text; a JSON-RPC error
with its message; a connection lost during the call with
:class:`BackendUnavailable` (not retried: the tool may have acted). A
cancelled task cancels the call (``notifications/cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import httpx2
import jsonschema
from mcp import Client, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agoramesh.bus.subjects import MAX_CAPABILITY_LENGTH
from agoramesh.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    UnknownCapability,
)
from agoramesh.nodes.backends.base import Backend, BackendConfig, ChatMessage
from agoramesh.nodes.capability import ANY_OBJECT, Capability
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage

__all__ = ("McpBackend", "capability_name")

log = logging.getLogger("agoramesh.backends")

_FIRST_PAUSE, _MAX_PAUSE = 0.1, 2.0
#: How often an idle connection is pinged, and how long a ping may take.
_PING_EVERY, _PING_TIMEOUT = 2.0, 5.0
#: How long aclose waits for the supervisor to end on its own: a ping under way (its watch
#: returns after it; a frozen server lets it time out), then the SDK's stdio shutdown at
#: its longest (a 0.5 s flush, 2 s for the server to exit, 2 s after the kill, 2 s to reap).
_CLOSE_WAIT = _PING_TIMEOUT + 7.0
_CLOSE_TRIES = 20  # then cancels of the supervisor, 0.1 s apart, before aclose gives up
_MAX_LEVELS = 16
_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def capability_name(tool: str) -> str:
    """The capability a tool named ``tool`` becomes: ``.``-separated tokens of letters,
    digits, ``_`` and ``-`` (anything else, and an empty token, is ``_``), at most 16 levels
    (the rest joined with ``_``) and 128 characters."""
    tokens = [_NOT_A_TOKEN.sub("_", token) or "_" for token in tool.split(".")]
    if len(tokens) > _MAX_LEVELS:
        tokens[_MAX_LEVELS - 1:] = ["_".join(tokens[_MAX_LEVELS - 1:])]
    return ".".join(tokens)[:MAX_CAPABILITY_LENGTH].rstrip(".") or "_"


def _capabilities(tools: Sequence[types.Tool]) -> dict[str, tuple[str, Capability]]:
    """Capability name → (tool name, capability); colliding names get a hash of the tool's."""
    mapped: dict[str, tuple[str, Capability]] = {}
    for tool in sorted(tools, key=lambda tool: tool.name):
        name = capability_name(tool.name)
        if name in mapped:
            digest = hashlib.blake2b(tool.name.encode(), digest_size=4).hexdigest()
            name = f"{name[:MAX_CAPABILITY_LENGTH - 9].rstrip('.')}_{digest}"
        schema: dict[str, Any] = dict(tool.input_schema)
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            log.warning("tool %s: its input schema is not valid JSON Schema (%s); any object "
                        "is taken", tool.name, exc.message)
            schema = dict(ANY_OBJECT)
        mapped[name] = (tool.name, Capability(
            name=name, description=tool.description or tool.title or "", input_schema=schema))
    return mapped


class _Refusal:
    """An async iterator that fails at once with ``error``."""

    def __init__(self, error: BackendError) -> None:
        self.error = error

    def __aiter__(self) -> _Refusal:
        return self

    async def __anext__(self) -> StreamItem:
        raise self.error


class McpBackend(Backend):
    """The tools of one MCP server (``type = "mcp"``); see the module docstring."""

    type = "mcp"

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        if bool(self.config.command) == bool(self.config.base_url):
            raise ConfigError("the mcp backend needs one MCP server: a command to run "
                              "(--mcp-command) or a streamable HTTP URL (--mcp-url)")
        self._client: Client | None = None
        self._up = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._generation = 0  # of the supervisor: one of an older one stops at its next try
        self._problem = "not connected yet"
        #: The attempt's last HTTP error (status, reason; the SDK reports only that one
        #: came), for the reason a connection failed; ``_denied``: the last failed attempt's
        #: was 401 or 403. ``_attempted`` is set when an attempt ends, up or not.
        self._refused: tuple[int, str] | None = None
        self._denied = False
        self._attempted = asyncio.Event()
        self._tools: dict[str, tuple[str, Capability]] = {}
        #: Connections opened so far (1 once up; each reconnection adds one).
        self.connections = 0

    @property
    def server(self) -> str:
        """The server, as the operator named it: its command line or its URL."""
        return " ".join(self.config.command) if self.config.command else str(self.config.base_url)

    async def offered(self, names: Sequence[str] = ()) -> tuple[Capability, ...]:
        """Connect, and the capabilities of the server's tools (those of ``names`` only, if
        given); ConfigError for a name no tool has, or a server without tools."""
        await self._connected()
        if not self._tools:
            raise ConfigError(f"the MCP server {self.server} offers no tools")
        unknown = [name for name in names if name not in self._tools]
        if unknown:
            raise ConfigError(f"the MCP server offers {', '.join(sorted(self._tools))}; "
                              f"not {', '.join(unknown)}")
        return tuple(self._tools[name][1] for name in names or sorted(self._tools))

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        client = await self._connected()
        if task.capability not in self._tools:
            raise UnknownCapability(f"the MCP server has no tool for {task.capability!r}")
        tool = self._tools[task.capability][0]
        notes: asyncio.Queue[str] = asyncio.Queue()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if message:
                notes.put_nowait(message)

        call = asyncio.ensure_future(client.call_tool(tool, dict(task.parameters),
                                                      progress_callback=on_progress))
        try:
            while not call.done() or not notes.empty():
                if notes.empty():
                    noted = asyncio.ensure_future(notes.get())
                    await asyncio.wait({call, noted}, return_when=asyncio.FIRST_COMPLETED)
                    if not noted.done():
                        noted.cancel()
                        continue
                    yield Chunk(noted.result())
                else:
                    yield Chunk(notes.get_nowait())
            result = call.result()
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                self._lost.set()
                raise BackendUnavailable(f"{tool}: the connection to the MCP server closed "
                                         f"during the call") from None
            raise BackendError(f"{tool}: {exc.error.message}") from None
        except (BackendError, UnknownCapability):
            raise
        except Exception as exc:  # the transport's own: the server is gone
            self._lost.set()
            raise BackendUnavailable(f"{tool}: the MCP server failed during the call: "
                                     f"{exc}") from None
        finally:
            if not call.done():
                call.cancel()
        if result.is_error:
            raise BackendError(_text(result) or f"the tool {tool} failed")
        yield Completion(output=_output(result), usage=Usage(), model=self.config.model)

    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        """An MCP server has tools, not a chat: the stream fails at once."""
        return _Refusal(BackendError("an MCP server has tools, not a chat: give the agent "
                                     "tasks of its tools' capabilities"))

    async def aclose(self) -> None:
        """Close the connection and stop reconnecting. A connection that is up closes in
        order (its watch returns: the SDK's shutdown, stdin closed, the server awaited and
        reaped, runs to its end, uncancelled); an attempt or a pause between attempts is
        cancelled. A cancellation the SDK's anyio scopes absorb (one landing as an attempt
        times out) does not keep the supervisor going: it ends at its next step anyway, and
        is cancelled again if it has not ended once the SDK's shutdown would have."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        self._generation += 1
        if self._up.is_set():
            self._lost.set()  # its watch returns: the SDK closes the connection in order
        else:
            supervisor.cancel()
        done, _ = await asyncio.wait({supervisor}, timeout=_CLOSE_WAIT)
        for _ in range(_CLOSE_TRIES):
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    supervisor.result()
                return
            supervisor.cancel()
            done, _ = await asyncio.wait({supervisor}, timeout=0.1)
        log.warning("MCP server %s: its connection did not close within %.0fs", self.server,
                    _CLOSE_WAIT + _CLOSE_TRIES * 0.1)

    # -- the connection ----------------------------------------------------------------

    async def _connected(self) -> Client:
        """The connection, once up (within ``config.timeout``), started if need be."""
        if self._supervisor is None:
            self._generation += 1
            self._supervisor = asyncio.ensure_future(self._supervise(self._generation))
        try:
            async with asyncio.timeout(self.config.timeout):
                # Until it is up, or refuses our token: no retry within a call mends that.
                while not self._up.is_set() and not self._denied:
                    self._attempted.clear()
                    await self._attempted.wait()
        except TimeoutError:
            pass
        if not self._up.is_set():
            raise BackendUnavailable(f"the MCP server {self.server} is not reachable: "
                                     f"{self._problem}")
        assert self._client is not None
        return self._client

    def _open(self, stack: contextlib.AsyncExitStack) -> Client:
        """A client for one attempt (its HTTP refusal, if any, this attempt's)."""
        self._refused, self._denied = None, False
        if self.config.base_url:
            key = self.config.api_key

            async def seen(response: httpx2.Response) -> None:
                if response.status_code >= 400:
                    self._refused = (response.status_code, response.reason_phrase)

            # The SDK's HTTP client type and default timeouts (a response stream may stay
            # open), with our token; a client handed to the transport is ours to close.
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"} if key else {},
                                      timeout=httpx2.Timeout(30.0, read=300.0),
                                      event_hooks={"response": [seen]})
            stack.push_async_callback(http.aclose)
            return Client(streamable_http_client(self.config.base_url, http_client=http),
                          mode="legacy")
        program, *arguments = self.config.command
        return Client(StdioServerParameters(
            command=program, args=arguments, env={**os.environ, **dict(self.config.env)},
            cwd=self.config.workdir), mode="legacy")

    async def _supervise(self, generation: int) -> None:
        """Keep a connection open, opening it again (with backoff) whenever it is lost, while
        ``generation`` is the current one (aclose ends it)."""
        pause = _FIRST_PAUSE
        while generation == self._generation:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with asyncio.timeout(self.config.timeout):
                        client = await stack.enter_async_context(self._open(stack))
                        tools = await _list_tools(client)
                    self._adopt(tools)
                    self._client, self._problem = client, ""
                    self.connections += 1
                    self._lost.clear()
                    self._up.set()
                    self._attempted.set()
                    pause = _FIRST_PAUSE
                    await self._watch(client, generation)
                    self._problem = "the connection was lost"
            except TimeoutError:
                self._problem = f"no answer within {self.config.timeout:g}s"
            except Exception as exc:
                self._problem = _describe(exc)
                if self._refused is not None:
                    status, reason = self._refused
                    self._denied = status in (401, 403)
                    hint = " (its token: --api-key or $AGORAMESH_MCP_TOKEN)" if self._denied else ""
                    self._problem = f"HTTP {status} {reason}{hint}: {self._problem}"
            finally:
                self._up.clear()
                self._client = None
                self._attempted.set()
            if generation != self._generation:
                return  # closed
            log.warning("MCP server %s: %s; connecting again in %.1fs", self.server,
                        self._problem, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def _adopt(self, tools: list[types.Tool]) -> None:
        mapped = _capabilities(tools)
        if not self._tools:
            self._tools = mapped
        elif mapped.keys() != self._tools.keys():
            log.warning("MCP server %s came back with other tools (%s); this node still offers "
                        "%s", self.server, ", ".join(sorted(mapped)), ", ".join(self._tools))

    async def _watch(self, client: Client, generation: int) -> None:
        """Return once the connection is lost (a call saw it, or a ping failed) or closed."""
        while generation == self._generation:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PING_EVERY):
                    await self._lost.wait()
                    return
            try:
                async with asyncio.timeout(_PING_TIMEOUT):
                    await client.send_ping()
            except Exception:
                return


async def _list_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools


def _describe(error: BaseException) -> str:
    """One line for a failure to connect (an exception group: its first leaf)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError):
        return error.error.message
    return " ".join(str(error).split()) or type(error).__name__


def _text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content
                     if isinstance(block, types.TextContent))


def _output(result: types.CallToolResult) -> Any:
    if isinstance(result.structured_content, dict):
        return result.structured_content
    output: dict[str, Any] = {"text": _text(result)}
    others = [block.model_dump(mode="json", by_alias=True, exclude_none=True)
              for block in result.content if not isinstance(block, types.TextContent)]
    if others:
        output["content"] = others
    return output
