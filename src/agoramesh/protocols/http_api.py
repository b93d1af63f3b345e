"""The HTTP API (M-6): the mesh for clients that do not speak NATS, on any node.

An :class:`HttpApi` serves one :class:`Dispatcher` (a node's, or a client's
from :func:`~agoramesh.protocols.dispatch.client_dispatcher`). JSON in, JSON
out; request bodies must be JSON objects and unknown fields are refused.

=======  =====================  ==========================================================
method   path                   answer (200)
=======  =====================  ==========================================================
GET      ``/api/health``        ``{"status": "ok", "agents": n, "agent_id": id | null}``
GET      ``/api/agents``        ``{"agents": [card + {"status": {...} | null}]}``;
                                ``?capability=PATTERN`` keeps the agents offering it
POST     ``/api/tasks``         ``{capability, parameters?, strategy?: auction|direct,
                                agent_id?, timeout?, priority?}`` → the task result
                                ``{task_id, status, result, error, execution_time_ms,
                                tokens_used, cost_usd, agent_id}`` (a FAILED task is
                                still 200: the request was served)
POST     ``/api/collaborate``   ``{mode, topic, agents, rounds, requirements}`` → the
                                mode's result, e.g. ``{debate_history, consensus, …}``
                                (request: :mod:`agoramesh.protocols.collaboration_request`;
                                result: :mod:`agoramesh.protocols.collaboration`)
=======  =====================  ==========================================================

With a ``token``, every request but ``GET /api/health`` must carry
``Authorization: Bearer <token>``; without it, or with another token, the
answer is 401 with ``WWW-Authenticate: Bearer`` before the request is routed
or its body read. Without a token the API is open to whoever reaches it.

Errors are ``{"error": {"type", "message"}}``, never a stack trace:
400 invalid JSON, not an object, unknown fields, wrong types, bad mode; 401
a missing or wrong token; 404
unknown path; 405 wrong method (with ``Allow``); 413 a body over
``max_body``; 503 nobody can take the work (no responders, no bidders, every
bidder declined, not connected) or too many requests in progress; 504 a
deadline passed; 502 another failure on the mesh; 500 a bug here (logged).
Every handler's wait is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from agoramesh._web import WebServer
from agoramesh.bus.ingress import encode_json
from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    AuctionFailed,
    ConfigError,
    InvalidInput,
    NoBidders,
    NoResponders,
    NotConnected,
    Overloaded,
    SubjectError,
    WorkflowInvalid,
    error_to_wire,
)
from agoramesh.protocols.collaboration import Collaboration
from agoramesh.protocols.collaboration_request import CollaborationRequest
from agoramesh.protocols.dispatch import Dispatcher, Strategy

__all__ = ("MAX_BODY", "MIN_TOKEN_LENGTH", "HttpApi", "status_for", "validate_token")

log = logging.getLogger("agoramesh.http")

MAX_BODY = 1024 * 1024
MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: what a bearer token may be made of, so any client can send it.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")
_OPEN_ROUTES = frozenset({("GET", "/api/health"), ("HEAD", "/api/health")})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TASK_FIELDS = ("capability", "parameters", "strategy", "agent_id", "timeout", "priority")


def status_for(error: BaseException) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(error, InvalidInput | SubjectError | ConfigError | WorkflowInvalid):
        return 400
    if isinstance(error, AccessDenied):
        return 403
    if isinstance(error, NoResponders | NoBidders | AuctionFailed | NotConnected | Overloaded):
        return 503
    if isinstance(error, TimeoutError):  # BusTimeout and asyncio's own
        return 504
    if isinstance(error, AgoraError):
        return 502
    return 500


def _json(value: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=encode_json(value), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, type_name: str, message: str, **headers: str) -> web.Response:
    return _json({"error": {"type": type_name, "message": message}}, status, **headers)


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"the body is not valid JSON: {name} is not a number")


def validate_token(token: str) -> str:
    """``token`` if it may be the API's bearer token, else a one-line :class:`ConfigError`.

    The message never contains the token.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the HTTP API token must be at least {MIN_TOKEN_LENGTH} characters "
                          f"(e.g. from `openssl rand -hex 32`)")
    if not set(token) <= _TOKEN_CHARS:
        raise ConfigError("the HTTP API token may only contain letters, digits and - . _ ~ + / =")
    return token


class HttpApi(WebServer):
    """An aiohttp server over a Dispatcher: ``await start()`` … ``await stop()``.

    ``port=0`` picks a free port; ``.port`` and ``.url`` tell which once
    started. ``timeout`` bounds every request, ``task_timeout`` is the default
    wait of ``POST /api/tasks``; at most ``max_concurrent`` POSTs run at once.
    ``token``: the bearer token every route but ``GET /api/health`` requires
    (see :func:`validate_token`); None leaves the API open. ``unauthorized``
    counts the requests refused for a missing or wrong one.
    Stopping gives requests in progress 2 s to finish.
    """

    what = serves = "the HTTP API"

    def __init__(self, dispatcher: Dispatcher, *, host: str = "127.0.0.1", port: int = 0,
                 agent_id: str | None = None, timeout: float = 120.0, task_timeout: float = 30.0,
                 max_body: int = MAX_BODY, max_concurrent: int = 32,
                 token: str | None = None) -> None:
        if timeout <= 0 or task_timeout <= 0 or max_body < 1:
            raise ConfigError("timeouts and max_body must be positive")
        self._token = None if token is None else validate_token(token).encode()
        super().__init__(host=host, port=port, shutdown_timeout=2.0)
        self.dispatcher = dispatcher
        self.agent_id = agent_id
        self.timeout = timeout
        self.task_timeout = min(task_timeout, timeout)
        self.max_body = max_body
        self.max_concurrent = max_concurrent
        self._in_progress = 0
        self.unauthorized = 0

    def application(self) -> web.Application:
        """The aiohttp application (routes, the JSON error and the token middleware)."""
        app = web.Application(client_max_size=self.max_body,
                              middlewares=[self._errors, self._authenticate])
        app.router.add_get("/api/health", self._health)
        app.router.add_get("/api/agents", self._agents)
        app.router.add_post("/api/tasks", self._tasks)
        app.router.add_post("/api/collaborate", self._collaborate)
        return app

    # --- middleware and handlers --------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            message = {404: f"no route {request.path}",
                       405: f"{request.method} is not allowed on {request.path}",
                       413: f"the body is larger than {self.max_body} bytes"
                       }.get(exc.status, exc.text or exc.reason)
            return _error(exc.status, exc.reason.replace(" ", ""), message, **extra)
        except AgoraError as exc:
            status = status_for(exc)
            if status >= 500:
                log.info("%s %s failed: %s", request.method, request.path, exc)
            wire = error_to_wire(exc)
            return _error(status, wire["type"], " ".join(wire["message"].split())[:2000])
        except TimeoutError:
            return _error(504, "BusTimeout", f"no answer within {self.timeout:g}s")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "InternalError", "internal error; see the node's log")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._token is None or (request.method, request.path) in _OPEN_ROUTES:
            return await handler(request)
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        # Bytes, so any header (even one aiohttp decoded with surrogates) compares in constant time.
        if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip(" ").encode("utf-8", "surrogatepass"), self._token):
            return await handler(request)
        self.unauthorized += 1
        message = ("the bearer token is not valid" if scheme.lower() == "bearer" and credentials
                   else "this API needs an 'Authorization: Bearer <token>' header")
        return _error(401, "Unauthorized", message, **{"WWW-Authenticate": "Bearer"})

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "agents": len(self.dispatcher.agents()),
                      "agent_id": self.agent_id})

    async def _agents(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"capability"})
        if unknown:
            raise InvalidInput(f"unknown query parameter(s) {', '.join(unknown)[:200]}")
        pattern = request.query.get("capability")
        cards = (self.dispatcher.agents() if pattern is None
                 else self.dispatcher.select(f"capability:{pattern}"))
        listed = []
        for card in cards:
            entry = self.dispatcher.directory.get(card.id)
            listed.append({**card.as_dict(), "status": entry.status.as_dict() if entry else None})
        return _json({"agents": listed})

    async def _tasks(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        unknown = sorted(str(key) for key in body if key not in _TASK_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown task field(s) {', '.join(unknown)[:200]}; "
                               f"expected {', '.join(_TASK_FIELDS)}")
        try:
            capability = validate_capability(body.get("capability"))
        except SubjectError as exc:
            raise InvalidInput(f"'capability': {exc}") from None
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        try:
            strategy = Strategy(body.get("strategy", Strategy.AUCTION))
        except ValueError:
            raise InvalidInput("'strategy' must be 'auction' or 'direct'") from None
        agent_id = body.get("agent_id")
        if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
            raise InvalidInput("'agent_id' must be an agent id string")
        wait = body.get("timeout", self.task_timeout)
        if not isinstance(wait, int | float) or isinstance(wait, bool) \
                or not 0 < wait <= self.timeout:
            raise InvalidInput(f"'timeout' must be a number of seconds above 0 and at most "
                               f"{self.timeout:g}")
        priority = body.get("priority", 5)
        if type(priority) is not int or not 0 <= priority <= 10:
            raise InvalidInput("'priority' must be an integer from 0 to 10")
        async with self._slot(wait):
            result = await self.dispatcher.submit(capability, parameters, agent_id=agent_id,
                                                  strategy=strategy, timeout=float(wait),
                                                  priority=priority)
        return _json(result.as_dict())

    async def _collaborate(self, request: web.Request) -> web.Response:
        collaboration_request = CollaborationRequest.from_dict(await self._body(request))
        collaboration = Collaboration(self.dispatcher, timeout=self.timeout,
                                      task_timeout=self.task_timeout)
        async with self._slot(self.timeout):
            result = await collaboration.run(collaboration_request)
        return _json(result)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body,
                                                actual_size=request.content_length)
        raw = await request.read()
        try:
            value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise InvalidInput("the body is not valid UTF-8") from None
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidInput(f"the body must be a JSON object, got {type(value).__name__}")
        return value

    @contextlib.asynccontextmanager
    async def _slot(self, wait: float) -> AsyncIterator[None]:
        """One POST in progress, bounded by ``wait`` plus a second of slack for the reply."""
        if self._in_progress >= self.max_concurrent:
            raise Overloaded(f"{self._in_progress} requests in progress; try again later")
        self._in_progress += 1
        try:
            async with asyncio.timeout(wait + 1.0):
                yield
        finally:
            self._in_progress -= 1
