"""The MCP server over streamable HTTP (``agoramesh mcp --http-port``), at ``/mcp``.

The SDK's streamable HTTP app (stateful sessions, SSE for progress and
list-changed, the 2026-07-28 single exchanges too) served by uvicorn in this
process's event loop. As with the HTTP API, whoever reaches the port submits
work as this client, so it binds to loopback by default, where the SDK also
refuses requests whose ``Host`` or ``Origin`` is not loopback (DNS
rebinding); with a ``token`` every request needs ``Authorization: Bearer
<token>`` (compared in constant time), else 401. A body over ``max_body``
bytes is a 413 before it is read.
"""

from __future__ import annotations

from types import TracebackType

from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.types import ASGIApp

from agoramesh.bridges.asgi import AsgiSite, BearerToken
from agoramesh.bridges.mcp_server import MeshMcpServer
from agoramesh.errors import NotConnected

__all__ = ("McpHttp",)

PATH = "/mcp"


class McpHttp:
    """``async with McpHttp(server, port=0) as http:`` serves ``http.url`` until the block ends.

    ``port`` 0 picks a free one. Stopping gives requests in progress ``grace``
    seconds, then cancels them (open SSE streams included). ``unauthorized``
    counts the requests refused for a missing or wrong token.
    """

    def __init__(self, server: MeshMcpServer, *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, max_body: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
                 grace: int = 1) -> None:
        self.server = server
        self.host = host
        self.token = token
        self.max_body = max_body
        self.grace = grace
        self._port = port
        self._gate: BearerToken | None = None
        self._site: AsgiSite | None = None

    @property
    def port(self) -> int:
        if self._site is None or self._site.port is None:
            raise NotConnected("the MCP HTTP server is not started")
        return self._site.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    @property
    def unauthorized(self) -> int:
        return 0 if self._gate is None else self._gate.unauthorized

    async def __aenter__(self) -> McpHttp:
        app: ASGIApp = self.server.server.streamable_http_app(
            streamable_http_path=PATH, host=self.host, max_request_body_size=self.max_body)
        if self.token is not None:
            app = self._gate = BearerToken(app, self.token, serves="MCP")
        site = AsgiSite(app, host=self.host, port=self._port, grace=self.grace,
                        lifespan=True, serves="MCP")
        await site.start()
        self._site = site
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        site, self._site = self._site, None
        if site is not None:
            site.closing()
            await site.stop()
