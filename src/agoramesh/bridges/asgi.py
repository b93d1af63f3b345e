"""One ASGI app on ``host:port`` with uvicorn: start, stop, its URL; and the bearer
token in front of it.

a2a-sdk and the MCP SDK serve Starlette (ASGI) apps and name no server; uvicorn is
the ASGI server both extras install. It runs here on a socket bound by us (a port
that cannot be bound is a one-line :class:`ConfigError`, ``port=0`` a free one),
without ``uvicorn.run``'s signal handlers or logging setup: the command that
starts a site keeps both. :class:`BearerToken` is the HTTP API's token rule for
such an app (the A2A server's and the MCP server's).
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections.abc import Callable

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agoramesh.errors import ConfigError, NotConnected

__all__ = ("AsgiSite", "BearerToken")


class BearerToken:
    """ASGI middleware: an HTTP request without ``Authorization: Bearer <token>`` is a
    401 with ``WWW-Authenticate: Bearer``, before its body is read.

    Tokens are compared in constant time; the answer never contains one.
    ``exempt(method, path)`` names the requests that need none (an A2A agent card);
    ``unauthorized`` counts the refusals. ``serves`` names the server in the answer.
    """

    def __init__(self, app: ASGIApp, token: str, *, serves: str,
                 exempt: Callable[[str, str], bool] | None = None) -> None:
        self.app = app
        self.token = token.encode("utf-8", "surrogatepass")
        self.serves = serves
        self.exempt = exempt
        self.unauthorized = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (
                self.exempt is not None and self.exempt(scope["method"], scope["path"])):
            given = next((value for name, value in scope["headers"]
                          if name == b"authorization"), b"")
            scheme, _, credentials = given.partition(b" ")
            if not (scheme.lower() == b"bearer"
                    and hmac.compare_digest(credentials.strip(b" "), self.token)):
                self.unauthorized += 1
                message = ("the bearer token is not valid" if scheme.lower() == b"bearer"
                           and credentials.strip(b" ") else
                           f"this {self.serves} server needs an 'Authorization: Bearer "
                           f"<token>' header")
                response = JSONResponse({"error": {"type": "Unauthorized", "message": message}},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AsgiSite:
    """``app`` served on ``host:port``: ``await start()`` … ``await stop()``.

    ``max_connections``: connections and requests at once (uvicorn answers 503
    beyond). Stopping gives connections ``grace`` seconds to close, then cancels
    what still runs (open event streams too). ``lifespan``: run the app's ASGI
    lifespan (startup before the first request, shutdown after the last), for an
    app that needs it, as the MCP SDK's does. ``serves`` names what is served, in
    errors.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = 256, grace: int = 2, lifespan: bool = False,
                 serves: str = "HTTP") -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {port}")
        self.app = app
        self.host = host
        self.max_connections = max_connections
        self.grace = grace
        self.lifespan = lifespan
        self.serves = serves
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._ticks: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self.port is None:
            raise NotConnected(f"the {self.serves} server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        if self._server is not None:
            return
        config = uvicorn.Config(self.app, log_config=None, access_log=False,
                                lifespan="on" if self.lifespan else "off",
                                timeout_graceful_shutdown=self.grace,
                                limit_concurrency=self.max_connections, server_header=False,
                                proxy_headers=False)
        config.load()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
            sock.setblocking(False)
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
        except OSError as exc:
            sock.close()
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            raise ConfigError(f"cannot serve {self.serves} on {self.host}:"
                              f"{self._requested_port}: {reason}") from None
        except SystemExit:  # uvicorn's answer to an app whose lifespan startup failed
            sock.close()
            raise ConfigError(f"the {self.serves} server's app failed to start "
                              f"(its lifespan startup)") from None
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock
        self.port = int(sock.getsockname()[1])
        # uvicorn's own loop: the Date header every second, and the end once asked.
        self._ticks = asyncio.ensure_future(server.main_loop())

    def closing(self) -> None:
        """Say no more to new requests' keep-alive (the site is about to stop)."""
        if self._server is not None:
            self._server.should_exit = True

    async def stop(self) -> None:
        """Stop listening; connections get ``grace`` seconds to close."""
        server, sock, ticks = self._server, self._socket, self._ticks
        self._server = self._socket = self._ticks = None
        self.port = None
        if server is None or sock is None:
            return
        server.should_exit = True
        if ticks is not None:
            await ticks
        await server.shutdown(sockets=[sock])

    async def __aenter__(self) -> AsgiSite:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
