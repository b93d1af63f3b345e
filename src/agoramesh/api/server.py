"""The HTTP API (M-6): the mesh for clients that do not speak NATS, on any node.

An :class:`HttpApi` serves one :class:`Dispatcher` (a node's, or a client's
from :func:`~agoramesh.protocols.allocation.dispatch.client_dispatcher`). JSON in, JSON
out; request bodies must be JSON objects sent as ``Content-Type:
application/json`` (or any ``application/*+json``), and unknown fields are
refused.

=======  =====================  ==========================================================
method   path                   answer (200)
=======  =====================  ==========================================================
GET      ``/api/health``        ``{"status": "ok", "agents": n, "agent_id": id | null}``
GET      ``/api/agents``        ``{"agents": [card + {"status": {...} | null}]}``;
                                ``?capability=PATTERN`` keeps the agents offering it
POST     ``/api/tasks``         ``{capability, parameters?, strategy?: auction|direct,
                                agent_id?, timeout?, priority?, durable?}`` → the task
                                result ``{task_id, status, result, error,
                                execution_time_ms, tokens_used, cost_usd, agent_id}`` (a
                                FAILED task is still 200: the request was served);
                                durable: 202 ``{task_id, status: "PENDING",
                                duplicate, result_url}`` + ``Location``
GET      ``/api/tasks/{id}``    a durable task's stored result (the task result above);
                                404 ``JobNotFound`` while there is none;
                                ``?wait=SECONDS`` waits for it
POST     ``/api/collaborate``   ``{mode, topic, agents, rounds, requirements}`` → the
                                mode's result, e.g. ``{debate_history, consensus, …}``
                                (request: :mod:`agoramesh.protocols.collaboration.request`;
                                result: :mod:`agoramesh.protocols.collaboration`)
POST     ``/api/workflows``     ``{workflow, inputs?, strategy?}`` → the workflow's result
                                (:mod:`agoramesh.api.workflows`)
GET      ``/login``             the sign-in form; ``POST /login`` (form ``token``) sets the
                                session cookie, ``POST /logout`` clears it
                                (:mod:`agoramesh.api.session`)
=======  =====================  ==========================================================

``mounts`` add routes of their own: the web console (:mod:`agoramesh.console`) is
``GET /`` and its data. The collaborations and workflows run here are kept, as
they go, in :attr:`HttpApi.activity` (:mod:`agoramesh.api.activity`).

A durable task (an ``Idempotency-Key`` header or ``"durable": true``) is
described in :mod:`agoramesh.api.tasks`; the collaboration route is
:mod:`agoramesh.api.collaborate`; what every route shares (JSON bodies,
errors, :func:`~agoramesh.api.json_http.status_for`) is
:mod:`agoramesh.api.json_http`.

With a ``token``, every request but ``GET /api/health`` (and the sign-in
routes) must carry ``Authorization: Bearer <token>`` or the console's session
cookie; without it, or with another token, the answer is 401 with
``WWW-Authenticate: Bearer`` (``GET /``: 401 and the sign-in form) before the
request is routed or its body read; a POST the cookie authenticates without
``X-Agoramesh-Console: 1`` from this origin is a 403 (CSRF;
:mod:`agoramesh.api.session`). Without a token the API is open to whoever
reaches it.

Errors are ``{"error": {"type", "message"}}``, never a stack trace:
400 invalid JSON, not an object, unknown fields or query parameters, wrong
types, bad mode, a body cut short, a bad Idempotency-Key or task id; 401 a
missing or wrong token; 404 unknown path, or no result yet
(``JobNotFound``); 405 wrong method (with ``Allow``); 409 an
Idempotency-Key in use by another task (``Conflict``); 413 a body over
``max_body`` (``RequestEntityTooLarge``), or a task too large for one
message on the mesh once encoded (``OversizeEnvelope``: JSON numbers grow in
msgpack); 415 a POST body that is not declared JSON
(``UnsupportedMediaType``, before the body is read); 503 nobody can take
the work (no responders, no bidders, every bidder declined, not connected),
no JetStream for a durable task (``JetStreamUnavailable``), a full job store
(``StoreFull``), or too many requests in progress; 504 a deadline passed;
502 another failure on the mesh (an ``OversizeEnvelope`` an agent answered
with too); 500 a bug here (logged). Every handler's wait is bounded by
``timeout``. A client that hangs up before its body arrived is a DEBUG line
in the log, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import hdrs, web

from agoramesh.api.activity import Activity
from agoramesh.api.collaborate import collaborate
from agoramesh.api.json_http import (
    BodyLost,
    error_response,
    json_response,
    only_query,
    status_for,
)
from agoramesh.api.session import (
    CONSOLE_HEADER,
    PAGE_HEADERS,
    login_page,
    same_origin,
    set_session,
    valid_session,
)
from agoramesh.api.tasks import TaskRoutes
from agoramesh.api.web import WebServer
from agoramesh.api.workflows import run_workflow_route
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AgoraError,
    ConfigError,
    InvalidRequest,
    Overloaded,
    error_to_wire,
)
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.jobs.jobs import Jobs

__all__ = ("MAX_BODY", "MIN_TOKEN_LENGTH", "HttpApi", "validate_token")

log = logging.getLogger("agoramesh.http")

MAX_BODY = 1024 * 1024
MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: what a bearer token may be made of, so any client can send it.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")
_OPEN_ROUTES = frozenset({("GET", "/api/health"), ("HEAD", "/api/health"), ("GET", "/login"),
                          ("HEAD", "/login"), ("POST", "/login"), ("POST", "/logout")})
_READS = frozenset({"GET", "HEAD"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    wait of ``POST /api/tasks``; at most ``max_concurrent`` POSTs and result
    reads run at once. ``token``: the bearer token every route but ``GET
    /api/health`` requires (see :func:`validate_token`); None leaves the API
    open. ``unauthorized`` counts the requests refused for a missing or wrong
    one, ``forbidden`` the cookie-authenticated POSTs refused for CSRF. ``mounts``
    add routes to the application (the web console). ``jobs_config``: the
    durable jobs' settings (their JetStream domain; the limits of a job store
    this API creates), default :class:`JobsConfig`.
    Stopping gives requests in progress 2 s to finish.
    """

    what = serves = "the HTTP API"

    def __init__(self, dispatcher: Dispatcher, *, host: str = "127.0.0.1", port: int = 0,
                 agent_id: str | None = None, timeout: float = 120.0, task_timeout: float = 30.0,
                 max_body: int = MAX_BODY, max_concurrent: int = 32,
                 token: str | None = None, jobs_config: JobsConfig | None = None,
                 mounts: Sequence[Callable[[web.Application], None]] = ()) -> None:
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
        self.forbidden = 0
        #: The collaborations and workflows run here, as they go (the web console shows them).
        self.activity = Activity()
        #: Add routes of their own to the application (the web console, agoramesh.console).
        self.mounts = tuple(mounts)
        self._jobs_config = jobs_config
        self._jobs: Jobs | None = None

    def application(self) -> web.Application:
        """The aiohttp application (routes, the JSON error and the token middleware)."""
        app = web.Application(client_max_size=self.max_body,
                              middlewares=[self._errors, self._authenticate])
        app.router.add_get("/api/health", self._health)
        app.router.add_get("/api/agents", self._agents)
        tasks = TaskRoutes(self)
        app.router.add_post("/api/tasks", tasks.submit)
        app.router.add_get("/api/tasks/{task_id}", tasks.result)
        app.router.add_post("/api/collaborate", functools.partial(collaborate, self))
        app.router.add_post("/api/workflows", functools.partial(run_workflow_route, self))
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        for mount in self.mounts:
            mount(app)
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
            return error_response(exc.status, exc.reason.replace(" ", ""), message, **extra)
        except BodyLost as exc:  # the client's doing, and it has likely gone: no trace
            log.debug("%s %s: the body did not arrive: %s", request.method, request.path, exc)
            return error_response(400, InvalidRequest.__name__,
                                  f"the body did not arrive whole: {exc}")
        except AgoraError as exc:
            status = status_for(exc)
            if status >= 500:
                log.info("%s %s failed: %s", request.method, request.path, exc)
            wire = error_to_wire(exc)
            return error_response(status, wire["type"], " ".join(wire["message"].split())[:2000])
        except TimeoutError:
            return error_response(504, "BusTimeout", f"no answer within {self.timeout:g}s")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "InternalError", "internal error; see the node's log")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == "/" and "token" in request.query and request.method in _READS:
            return self._token_in_url(request, request.query["token"])
        if self._token is None or (request.method, request.path) in _OPEN_ROUTES:
            return await handler(request)
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        # Bytes, so any header (even one aiohttp decoded with surrogates) compares in constant time.
        if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip(" ").encode("utf-8", "surrogatepass"), self._token):
            return await handler(request)
        if valid_session(request, self._token):
            if request.method in _READS or (request.headers.get(CONSOLE_HEADER) == "1"
                                            and same_origin(request)):
                return await handler(request)
            self.forbidden += 1
            return error_response(403, "Forbidden", f"a request the session cookie "
                                  f"authenticates must carry '{CONSOLE_HEADER}: 1' and come "
                                  f"from this origin")
        self.unauthorized += 1
        if request.path == "/" and request.method in _READS:
            return login_page()
        message = ("the bearer token is not valid" if scheme.lower() == "bearer" and credentials
                   else "this API needs an 'Authorization: Bearer <token>' header")
        return error_response(401, "Unauthorized", message, **{"WWW-Authenticate": "Bearer"})

    def _token_in_url(self, request: web.Request, given: str) -> web.StreamResponse:
        """``/?token=…``: the right token sets the session cookie; either way the token
        leaves the address bar (a wrong one gets the sign-in form)."""
        if self._token is not None and not hmac.compare_digest(
                given.encode("utf-8", "surrogatepass"), self._token):
            self.unauthorized += 1
            return login_page(reason="wrong")
        response = web.Response(status=303, headers={hdrs.LOCATION: "/", **PAGE_HEADERS})
        if self._token is not None:
            set_session(response, request, self._token)
        return response

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if self._token is None or valid_session(request, self._token):
            return web.Response(status=303, headers={hdrs.LOCATION: "/", **PAGE_HEADERS})
        return login_page(status=200)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """``POST /login``: a form's token to the session cookie (module docstring)."""
        if self._token is None:
            return web.Response(status=303, headers={hdrs.LOCATION: "/", **PAGE_HEADERS})
        if not same_origin(request):
            self.forbidden += 1
            return login_page(status=403, reason="origin")
        if request.content_type != "application/x-www-form-urlencoded":
            raise web.HTTPUnsupportedMediaType(
                text="the sign-in form is sent as application/x-www-form-urlencoded")
        given = (await request.post()).get("token")
        if not isinstance(given, str) or not hmac.compare_digest(
                given.strip().encode("utf-8", "surrogatepass"), self._token):
            self.unauthorized += 1
            return login_page(reason="wrong")
        response = web.Response(status=303, headers={hdrs.LOCATION: "/", **PAGE_HEADERS})
        set_session(response, request, self._token)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={hdrs.LOCATION: "/login", **PAGE_HEADERS})
        set_session(response, request, None)
        return response

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "agents": len(self.dispatcher.agents()),
                              "agent_id": self.agent_id})

    async def _agents(self, request: web.Request) -> web.Response:
        only_query(request, "capability")
        pattern = request.query.get("capability")
        cards = (self.dispatcher.agents() if pattern is None
                 else self.dispatcher.select(f"capability:{pattern}"))
        listed = []
        for card in cards:
            entry = self.dispatcher.directory.get(card.id)
            listed.append({**card.as_dict(), "status": entry.status.as_dict() if entry else None})
        return json_response({"agents": listed})

    @property
    def jobs(self) -> Jobs:
        """The durable jobs client of this API (made on first use, over the dispatcher's bus)."""
        if self._jobs is None:
            self._jobs = Jobs(self.dispatcher.bus, self._jobs_config)
        return self._jobs

    @contextlib.asynccontextmanager
    async def slot(self, wait: float) -> AsyncIterator[None]:
        """One POST or result read in progress, bounded by ``wait`` plus a second of slack for
        the reply; beyond ``max_concurrent`` of them, :class:`Overloaded`."""
        if self._in_progress >= self.max_concurrent:
            raise Overloaded(f"{self._in_progress} requests in progress; try again later")
        self._in_progress += 1
        try:
            async with asyncio.timeout(wait + 1.0):
                yield
        finally:
            self._in_progress -= 1
