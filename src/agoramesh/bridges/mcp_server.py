"""The mesh as MCP tools: the server behind ``agoramesh mcp``.

:class:`MeshMcpServer` is an MCP server (the SDK's low-level ``Server``)
over a :class:`~agoramesh.bridges.mesh_client.MeshClient`. Its tools are the
fixed ``mesh_*`` tools (list the agents, submit a task, read a durable job's
result, run a collaboration, run a workflow) and one tool per capability on
the mesh (:mod:`~agoramesh.bridges.mcp_catalog`); what a call does on the
mesh is :mod:`~agoramesh.bridges.mcp_calls`.

- The tool list follows the mesh. When agents join or leave and the
  capability tools change, every client is told: on the handshake versions
  (up to 2025-11-25) with ``notifications/tools/list_changed`` on each
  session that has listed the tools (``listChanged`` is declared in the
  initialization options), and on 2026-07-28 through the
  ``subscriptions/listen`` streams that asked for it. A burst of joins is one
  notification.
- Arguments are checked against the tool's input schema before anything is
  sent: a bad one is a tool error naming the field. An unknown tool is a
  JSON-RPC error (-32602, ``Unknown tool: NAME``), as the MCP specification
  has it; every other failure, the mesh's errors included, is a tool result
  with ``isError`` and the error's type and one line as its text.
- A call with a progress token gets a progress notification for each thing
  that happens on the mesh (see :mod:`~agoramesh.bridges.mcp_calls`). A call
  the client cancels (``notifications/cancelled``, or an HTTP client gone) is
  cancelled on the mesh.

Transports: :meth:`MeshMcpServer.serve_stdio` here, streamable HTTP in
:mod:`~agoramesh.bridges.mcp_http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from agoramesh._version import __version__
from agoramesh.bridges.mcp_calls import Answer, MeshCalls, Note, Run, failure
from agoramesh.bridges.mcp_catalog import FIXED_TOOLS, ToolSpec, capability_tools
from agoramesh.bridges.mcp_fast import FastCalls
from agoramesh.bridges.mcp_stdio import stdio_streams
from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.errors import AgoraError

__all__ = ("INSTRUCTIONS", "MeshMcpServer", "Report")

log = logging.getLogger("agoramesh.mcp")

INSTRUCTIONS = (
    "Tools of an agoramesh mesh: a network of AI agents that bid for tasks. mesh_agents lists "
    "the agents and their capabilities; each capability on the mesh is also a tool of its own "
    "(its name with '.' as '_'), which auctions the task among the agents offering it and "
    "returns the winner's output. mesh_submit sends a task with more control (direct, to a "
    "named agent, durable); mesh_collaborate and mesh_workflow run several agents together.")

#: How long a change of membership waits for more before the clients are told.
_SETTLE = 0.05
#: Sessions remembered for list-changed notifications (HTTP sessions that ended included).
_MAX_SESSIONS = 1024

_Handler = Callable[[Mapping[str, Any], Note | None], Run]
#: Sends one progress notification: its count (from 1) and its message.
Report = Callable[[int, str], Awaitable[None]]


class _Server(Server[Any]):
    """The SDK's low-level server, declaring ``listChanged`` for tools however it is run: the
    streamable HTTP manager asks it for its initialization options itself."""

    def create_initialization_options(
            self, notification_options: NotificationOptions | None = None,
            experimental_capabilities: dict[str, dict[str, Any]] | None = None,
            extensions: dict[str, dict[str, Any]] | None = None) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities, extensions)


class MeshMcpServer:
    """The MCP server of one :class:`MeshClient` (started by the caller).

    ``task_timeout``: how long a task, collaboration or workflow may take unless
    the call says otherwise; ``name``: the server's name in the handshake.
    """

    def __init__(self, mesh: MeshClient, *, task_timeout: float = 120.0,
                 name: str = "agoramesh") -> None:
        self.mesh = mesh
        self.calls = MeshCalls(mesh, task_timeout=task_timeout)
        self._fixed = {spec.name: spec for spec in FIXED_TOOLS}
        self._runs: dict[str, _Handler] = {
            "mesh_submit": self.calls.submit, "mesh_result": self.calls.result,
            "mesh_collaborate": self.calls.collaborate, "mesh_workflow": self.calls.workflow}
        self._tools: dict[str, ToolSpec] = {}
        self._all: dict[str, ToolSpec] = {}
        self._listed: list[types.Tool] = []
        self._events = InMemorySubscriptionBus()
        self._sessions: OrderedDict[str | None, ServerSession] = OrderedDict()
        self._settling: asyncio.Task[None] | None = None
        #: list-changed notifications sent (one per change, whatever the number of clients).
        self.changes = 0
        self.server: Server[Any] = _Server(
            name, version=__version__, instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._events))
        self._update(self._catalog())
        mesh.on_change.append(self._changed)

    async def serve_stdio(self, *, fast: bool = True) -> None:
        """Serve one client over stdin and stdout until stdin ends (or this is cancelled).

        ``fast``: the common ``tools/call`` is answered by :class:`FastCalls`, without the
        SDK's dispatcher; False leaves every call to the SDK.
        """
        shortcut = (lambda write: FastCalls(self, write)) if fast else None
        async with stdio_streams(shortcut=shortcut) as (read, write):
            log.info("serving MCP on stdio for %s", self.mesh.config.servers[0])
            await self.server.run(read, write, self.server.create_initialization_options())

    @property
    def tools(self) -> dict[str, ToolSpec]:
        """Every tool offered now, by name: the fixed ones, then the capabilities'."""
        return self._all

    # -- the tool list -----------------------------------------------------------------

    def _catalog(self) -> dict[str, ToolSpec]:
        return capability_tools(self.mesh.dispatcher.agents(), reserved=self._fixed)

    def _update(self, tools: dict[str, ToolSpec]) -> bool:
        """Make ``tools`` the capability tools; True if that changed what clients see."""
        if tools == self._tools and self._listed:
            return False
        self._tools = tools
        self._all = {**self._fixed, **tools}
        self._listed = [_tool(spec) for spec in self._all.values()]
        return True

    def _changed(self) -> None:
        if self._settling is None or self._settling.done():
            self._settling = asyncio.ensure_future(self._settle())
            self.mesh.keep(self._settling)

    async def _settle(self) -> None:
        await asyncio.sleep(_SETTLE)
        if self._update(self._catalog()):
            await self._announce()

    async def _announce(self) -> None:
        """Tell every client the tool list changed."""
        self.changes += 1
        for session in list(self._sessions.values()):
            try:
                await session.send_tool_list_changed()
            except Exception as exc:  # a session that ended: its transport says how
                log.debug("list-changed not sent: %s", exc)
        await self._events.publish(ToolsListChanged())

    def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Keep the session of a handshake-era client that listed the tools, to notify it."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # told through its subscriptions/listen stream, if it opened one
        request = ctx.request
        key = request.headers.get("mcp-session-id") if request is not None else None
        self._sessions[key] = ctx.session
        self._sessions.move_to_end(key)
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        self._remember(ctx)
        return types.ListToolsResult(tools=self._listed)

    # -- calls -------------------------------------------------------------------------

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = self.tool(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        # Progress only for a call that asked: without, the mesh is spared the streaming.
        session = ctx.session
        report = (None if not ctx.meta or ctx.meta.get("progress_token") is None
                  else lambda count, note: session.report_progress(count, None, note))
        answer = await self.answer(spec, params.arguments or {}, report)
        return types.CallToolResult(content=[types.TextContent(type="text", text=answer.text)],
                                    structured_content=answer.structured, is_error=answer.error)

    def tool(self, name: str) -> ToolSpec | None:
        """The tool called ``name``, looking at the mesh again if there is none (an agent
        that just joined)."""
        spec = self.tools.get(name)
        if spec is None and self._update(self._catalog()):
            self.mesh.run(self._announce(), "announce")
            spec = self.tools.get(name)
        return spec

    async def answer(self, spec: ToolSpec, arguments: Mapping[str, Any],
                     report: Report | None) -> Answer:
        """What a call of ``spec`` answers: its arguments checked, its work run on the mesh
        (each note to ``report`` as progress, if given), every agoramesh error a failure."""
        notes: asyncio.Queue[str | None] | None = None if report is None else asyncio.Queue()
        note = None if notes is None else notes.put_nowait
        try:
            spec.check(arguments)
            if spec.capability is not None:
                run = self.calls.capability(spec.capability, dict(arguments), note)
            elif spec.name in self._runs:
                run = self._runs[spec.name](arguments, note)
            else:
                return self.calls.agents(arguments)
            return await self._follow(run, notes, report)
        except AgoraError as exc:
            return failure(exc)

    async def _follow(self, run: Run, notes: asyncio.Queue[str | None] | None,
                      report: Report | None) -> Answer:
        """Await ``run``, sending its ``notes`` as progress; a cancelled call cancels the run."""
        work = asyncio.ensure_future(run.work)
        self.mesh.keep(work)
        pump = (None if notes is None or report is None
                else asyncio.ensure_future(_progress(notes, report)))
        try:
            answer = await asyncio.shield(work)
        except BaseException:
            if not work.done():
                run.cancel(work)  # the work ends on its own, telling the mesh to stop
            if pump is not None:
                pump.cancel()
            raise
        if notes is not None and pump is not None:
            notes.put_nowait(None)
            await pump
        return answer


async def _progress(notes: asyncio.Queue[str | None], report: Report) -> None:
    """Each note as a progress notification (none unless the call asked), until None."""
    count = 0
    while (note := await notes.get()) is not None:
        count += 1
        with contextlib.suppress(Exception):  # progress is advisory: a gone client is fine
            await report(count, note)


def _tool(spec: ToolSpec) -> types.Tool:
    annotations = types.ToolAnnotations(read_only_hint=True) if spec.read_only else None
    return types.Tool(name=spec.name, description=spec.description,
                      input_schema=dict(spec.input_schema), annotations=annotations)
