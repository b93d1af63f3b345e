"""The mesh's agents as A2A agents: a2a-sdk's JSON-RPC server over a Dispatcher.

=====  ================================================  =================================
GET    ``/.well-known/agent-card.json``                  the whole mesh as one agent: a skill
                                                         per capability on the mesh
POST   ``/``                                             its JSON-RPC endpoint: a message is
                                                         auctioned among the agents offering
                                                         its skill
GET    ``/agents/<name or id>/.well-known/agent-card.json``  one agent (any the dispatcher
                                                         knows: hosted here or a peer)
POST   ``/agents/<name or id>/``                         its JSON-RPC endpoint: a message is
                                                         sent to that agent
=====  ================================================  =================================

The JSON-RPC endpoints are a2a-sdk's (``JsonRpcDispatcher``): A2A 1.0's
``SendMessage``, ``SendStreamingMessage`` (SSE), ``GetTask``, ``CancelTask``,
``ListTasks``, ``SubscribeToTask``, and with the SDK's 0.3 compatibility on the same
URL ``message/send``, ``message/stream``, ``tasks/get``, ``tasks/cancel``,
``tasks/resubscribe``. As in the SDK, a request is A2A 1.0 when it carries the
``A2A-Version: 1.0`` header (the official clients send it) and 0.3 without one. How a
message names its skill and carries its parameters is
:mod:`~agoramesh.bridges.a2a_parts`; how it runs is
:mod:`~agoramesh.bridges.a2a_executor`.

With a ``token`` (the HTTP API's, :func:`~agoramesh.api.server.validate_token`),
every request but the cards' GETs needs ``Authorization: Bearer <token>`` (a 401 with
``WWW-Authenticate: Bearer`` otherwise, before the body is read); the cards declare
the scheme. A POST body must be declared JSON (``application/json`` or
``application/*+json``; a 415 otherwise, before it is read), so a web page elsewhere
cannot make a browser post a task here without a CORS preflight, which is not
answered. A body over ``max_body`` is the protocol's ``Invalid Request`` ("Payload
too large", -32600) without being read past the limit. Malformed JSON, an unknown
method, wrong parameters get the SDK's JSON-RPC errors; the SDK's log records of
such client mistakes are DEBUG lines (bounded), not tracebacks.

It runs on uvicorn, a2a-sdk serving Starlette apps (:class:`~agoramesh.bridges.asgi.AsgiSite`).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoramesh.api.server import MAX_BODY, validate_token
from agoramesh.bridges.a2a_cards import agent_card, mesh_card
from agoramesh.bridges.a2a_executor import AGENT, MeshExecutor, MeshRequestHandler
from agoramesh.bridges.asgi import AsgiSite, BearerToken
from agoramesh.errors import ConfigError, NotConnected
from agoramesh.protocols.allocation.dispatch import Dispatcher

__all__ = ("A2AServer",)

log = logging.getLogger("agoramesh.a2a")

_CARD = "/.well-known/agent-card.json"
#: a2a-sdk's loggers that report a client's mistakes (and the message each begins with).
_CLIENT_MISTAKES = {
    "a2a.server.routes.jsonrpc_dispatcher": ("Failed to validate", "Failed to parse",
                                             "Request Error"),
    "a2a.compat.v0_3.jsonrpc_adapter": ("Failed to validate",),
    "a2a.utils.version_validator": ("Version mismatch",),
}
_RECORD_TEXT = 300


class _ClientMistakes(logging.Filter):
    """A record of the SDK about a client's bad request: one bounded DEBUG line."""

    def __init__(self, openings: tuple[str, ...]) -> None:
        super().__init__()
        self.openings = openings

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.openings):
            message = " ".join(record.getMessage().split())
            record.msg, record.args = message[:_RECORD_TEXT], None
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _quiet_client_mistakes() -> None:
    for name, openings in _CLIENT_MISTAKES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ClientMistakes) for f in logger.filters):
            logger.addFilter(_ClientMistakes(openings))


class _Gate:
    """The body rules, in front of the app (pure ASGI): declared JSON, at most ``max_body``."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.method == "POST" and not _is_json(request.headers.get("content-type", "")):
            response = JSONResponse({"error": {"type": "UnsupportedMediaType", "message": (
                "the body must be JSON: send Content-Type: application/json")}},
                status_code=415)
            await response(scope, receive, send)
            return
        await self.app(scope, self._limited(request, receive), send)

    def _limited(self, request: Request, receive: Receive) -> Receive:
        declared = request.headers.get("content-length", "")
        size = 0

        async def limited() -> Message:
            nonlocal size
            if declared.isdigit() and int(declared) > self.max_body:
                raise HTTPException(status_code=413)  # a2a-sdk answers it in JSON-RPC
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise HTTPException(status_code=413)
            return message

        return limited


def _card_get(method: str, path: str) -> bool:
    """An agent card's GET: open to anyone, as the card declares the token it asks for."""
    return method in ("GET", "HEAD") and path.endswith(_CARD)


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, any parameters, any case: what a
    browser cannot send to another site without asking first (CORS preflight)."""
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or (
        subtype.endswith("+json") and len(subtype) > len("+json")))


class _Context(DefaultServerCallContextBuilder):
    """The SDK's call context, plus the agent the request's path names."""

    def build(self, request: Request) -> Any:
        context = super().build(request)
        context.state[AGENT] = request.path_params.get("agent")
        return context


class A2AServer:
    """A2A over ``dispatcher``'s mesh on ``host:port``: ``await start()`` … ``await stop()``.

    ``port=0`` picks a free port (``.port``, ``.url`` once started). ``token``: the
    bearer token (None: open to whoever reaches it). ``task_timeout`` bounds each
    task (a message's ``metadata.timeout`` may ask for less); the last ``max_tasks``
    tasks are kept for ``GetTask``; at most ``max_connections`` connections and
    requests at once (uvicorn answers 503 beyond). Stopping cancels the tasks
    still running (their mesh tasks too) and gives connections 2 s to close.
    """

    def __init__(self, dispatcher: Dispatcher, *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, max_body: int = MAX_BODY,
                 task_timeout: float = 300.0, max_tasks: int = 10_000,
                 max_connections: int = 256) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {port}")
        if task_timeout <= 0 or max_body < 1 or max_tasks < 1 or max_connections < 1:
            raise ConfigError("task_timeout, max_body, max_tasks and max_connections "
                              "must be positive")
        self.dispatcher = dispatcher
        self.host = host
        self._requested_port = port
        self._token = None if token is None else validate_token(token)
        self.max_body = max_body
        self.max_connections = max_connections
        self.max_tasks = max_tasks
        self.executor = MeshExecutor(dispatcher, task_timeout=task_timeout)
        self.handler: MeshRequestHandler | None = None
        self._guard: BearerToken | None = None
        self._site: AsgiSite | None = None
        self.port: int | None = None

    @property
    def unauthorized(self) -> int:
        """Requests refused for a missing or wrong token."""
        return 0 if self._guard is None else self._guard.unauthorized

    @property
    def url(self) -> str:
        """``http://host:port`` once started (the mesh's card is at ``url + /.well-known/…``)."""
        if self.port is None:
            raise NotConnected("the A2A server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def application(self) -> ASGIApp:
        """The ASGI app: the routes of the module docstring behind the token and size gate
        (with a request handler, and so a task store, of its own)."""
        self.handler = MeshRequestHandler(self.executor, self._card(None, "http://localhost/"),
                                          max_tasks=self.max_tasks)
        rpc = JsonRpcDispatcher(self.handler, context_builder=_Context(),
                                enable_v0_3_compat=True)
        app = Starlette(routes=[
            Route(_CARD, self._mesh_card, methods=["GET"]),
            Route("/agents/{agent}" + _CARD, self._agent_card, methods=["GET"]),
            Route("/", rpc.handle_requests, methods=["POST"]),
            Route("/agents/{agent}", rpc.handle_requests, methods=["POST"]),
            Route("/agents/{agent}/", rpc.handle_requests, methods=["POST"]),
        ])
        gated: ASGIApp = _Gate(app, max_body=self.max_body)
        if self._token is not None:
            gated = self._guard = BearerToken(gated, self._token, serves="A2A",
                                              exempt=_card_get)
        return gated

    def _card(self, agent: str | None, base: str) -> Any:
        secured = self._token is not None
        if agent is None:
            return mesh_card(self.dispatcher.agents(), base, secured=secured)
        card = self.executor.agent(agent)
        if card is None:
            return None
        return agent_card(card, f"{base}agents/{quote(agent, safe='')}/", secured=secured)

    async def _mesh_card(self, request: Request) -> Response:
        return JSONResponse(agent_card_to_dict(self._card(None, str(request.base_url))))

    async def _agent_card(self, request: Request) -> Response:
        agent = request.path_params["agent"]
        card = self._card(agent, str(request.base_url))
        if card is None:
            return JSONResponse({"error": {"type": "NotFound", "message": (
                f"no single agent named or with id {agent[:80]!r} on the mesh")}},
                status_code=404)
        return JSONResponse(agent_card_to_dict(card))

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        if self._site is not None:
            return
        _quiet_client_mistakes()
        site = AsgiSite(self.application(), host=self.host, port=self._requested_port,
                        max_connections=self.max_connections, serves="A2A")
        await site.start()
        self._site, self.port = site, site.port
        log.info("the A2A server listening on %s", self.url)

    async def stop(self) -> None:
        """Cancel the tasks still running, stop listening, let connections close."""
        site, self._site, self.port = self._site, None, None
        if site is None:
            return
        site.closing()
        if self.handler is not None:
            await self.handler.aclose()
        await site.stop()

    async def __aenter__(self) -> A2AServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
