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

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Iterator
from types import TracebackType

import uvicorn
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agoramesh.bridges.mcp_server import MeshMcpServer
from agoramesh.errors import ConfigError

__all__ = ("McpHttp",)

log = logging.getLogger("agoramesh.mcp")

PATH = "/mcp"


class _BearerToken:
    """ASGI middleware: HTTP requests without the bearer token are answered 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()
        self.unauthorized = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, credentials = given.partition(b" ")
            if not (scheme.lower() == b"bearer"
                    and hmac.compare_digest(credentials.strip(b" "), self.token)):
                self.unauthorized += 1
                response = JSONResponse(
                    {"error": {"type": "Unauthorized",
                               "message": "this MCP server needs 'Authorization: Bearer "
                                          "<token>'"}},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the command that runs it has them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class McpHttp:
    """``async with McpHttp(server, port=0) as http:`` serves ``http.url`` until the block ends.

    ``port`` 0 picks a free one. Stopping gives requests in progress ``grace``
    seconds, then cancels them (open SSE streams included).
    """

    def __init__(self, server: MeshMcpServer, *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, max_body: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
                 grace: float = 1.0) -> None:
        self.server = server
        self.host = host
        self.token = token
        self.max_body = max_body
        self.grace = grace
        self._port = port
        self._socket: socket.socket | None = None
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise ConfigError("the MCP HTTP server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    async def __aenter__(self) -> McpHttp:
        app: ASGIApp = self.server.server.streamable_http_app(
            streamable_http_path=PATH, host=self.host, max_request_body_size=self.max_body)
        if self.token is not None:
            app = _BearerToken(app, self.token)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot serve MCP on {self.host}:{self._port}: "
                              f"{exc.strerror or exc}") from None
        self._socket = sock
        self._uvicorn = _Uvicorn(uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=max(1, round(self.grace))))
        self._serving = asyncio.ensure_future(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._serving.done():
                await self._serving  # it failed: say why
                raise ConfigError("the MCP HTTP server stopped as it started")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                await asyncio.wait_for(self._serving, timeout=self.grace + 5.0)
            except TimeoutError:
                log.warning("the MCP HTTP server did not stop within %.0fs", self.grace + 5.0)
        if self._socket is not None:
            self._socket.close()
