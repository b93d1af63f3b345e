"""The HTTP API (M-6): the mesh for clients that do not speak NATS, on any node.

An :class:`HttpApi` serves one :class:`Dispatcher` (a node's, or a client's
from :func:`~agoramesh.protocols.dispatch.client_dispatcher`). JSON in, JSON
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
                                durable (below): 202 ``{task_id, status: "PENDING",
                                duplicate, result_url}`` + ``Location``
GET      ``/api/tasks/{id}``    a durable task's stored result (the task result above);
                                404 ``JobNotFound`` while there is none;
                                ``?wait=SECONDS`` waits for it
POST     ``/api/collaborate``   ``{mode, topic, agents, rounds, requirements}`` → the
                                mode's result, e.g. ``{debate_history, consensus, …}``
                                (request: :mod:`agoramesh.protocols.collaboration_request`;
                                result: :mod:`agoramesh.protocols.collaboration`)
=======  =====================  ==========================================================

A task is durable (:mod:`agoramesh.protocols.jobs`: stored in JetStream, run
by whichever node takes it, its result stored once by task id) when the POST
has an ``Idempotency-Key`` header, whose value is its task id (1-128 of
``A-Z a-z 0-9 _ = -``), or ``"durable": true`` (a fresh id); ``"durable":
false`` with a key, ``strategy: direct`` or ``agent_id`` are a 400. Its
``timeout``, if given, becomes its deadline. The answer is 202 at once;
with ``?wait=SECONDS`` (at most ``timeout``) the result if it is stored in
time (200), else the 202. The key is the idempotency key end to end, so the
same key twice runs the task once: a result already stored under it is
answered (``duplicate: true``) without submitting anything; a key the stream
has seen within its duplicate window (``duplicate: true``) whose job is still
there (queued or running) is compared with the request, and another
capability or other parameters are a 409 ``Conflict``. That is all that is
checked: a finished job is gone from the stream and its result does not say
what task it was for, so a key reused for another task after the first one
finished answers the first one's result.

With a ``token``, every request but ``GET /api/health`` must carry
``Authorization: Bearer <token>``; without it, or with another token, the
answer is 401 with ``WWW-Authenticate: Bearer`` before the request is routed
or its body read. Without a token the API is open to whoever reaches it.

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
import hmac
import json
import logging
import math
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from agoramesh._web import CLIENT_TEXT, WebServer
from agoramesh.bus.envelope import is_boxed, looks_like_envelope
from agoramesh.bus.envelope import parse as parse_envelope
from agoramesh.bus.ingress import decode_json, encode_json, looks_like_json
from agoramesh.bus.jetstream import valid_task_id
from agoramesh.bus.subjects import validate_capability
from agoramesh.config import JobsConfig
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    AuctionFailed,
    BusTimeout,
    ConfigError,
    InvalidInput,
    JetStreamUnavailable,
    JobNotFound,
    NoBidders,
    NoResponders,
    NotConnected,
    Overloaded,
    OversizeEnvelope,
    StoreFull,
    SubjectError,
    WorkflowInvalid,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult
from agoramesh.protocols.allocation.dispatch import Dispatcher, Strategy
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.collaboration.request import CollaborationRequest
from agoramesh.protocols.jobs.jobs import JobReceipt, Jobs

__all__ = ("IDEMPOTENCY_KEY", "MAX_BODY", "MIN_TOKEN_LENGTH", "HttpApi", "status_for",
           "validate_token")

log = logging.getLogger("agoramesh.http")

MAX_BODY = 1024 * 1024
MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: what a bearer token may be made of, so any client can send it.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")
_OPEN_ROUTES = frozenset({("GET", "/api/health"), ("HEAD", "/api/health")})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TASK_FIELDS = ("capability", "parameters", "strategy", "agent_id", "timeout", "priority",
                "durable")
#: The header that makes a POST /api/tasks durable; its value is the task id.
IDEMPOTENCY_KEY = "Idempotency-Key"
# How long a durable POST or result read may take to reach JetStream (and create the
# job store where it is missing), within the API's own timeout.
_JOBS_TIMEOUT = 10.0
# Room a task needs on the mesh beyond its own encoding: the envelope's fields,
# signature and encryption box, and what a call for proposals or an award adds.
_ENVELOPE_ROOM = 4096
# What reading a body raises when the client hung up or sent a broken body.
_BODY_LOST = (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError,
              aiohttp.ClientPayloadError)


def status_for(error: BaseException) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(error, InvalidInput | SubjectError | ConfigError | WorkflowInvalid):
        return 400
    if isinstance(error, AccessDenied):
        return 403
    if isinstance(error, JobNotFound):
        return 404
    if isinstance(error, NoResponders | NoBidders | AuctionFailed | NotConnected | Overloaded
                  | JetStreamUnavailable | StoreFull):
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


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, any parameters, any case."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or (
        subtype.endswith("+json") and len(subtype) > len("+json")))


def _only_query(request: web.Request, *allowed: str) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown query parameter(s) {', '.join(unknown)[:200]}")


def _task_id(given: str, what: str) -> str:
    """``given`` if it is a valid durable task id, else an InvalidInput starting ``what``."""
    try:
        return valid_task_id(given)
    except InvalidInput:
        raise InvalidInput(f"{what} 1-128 letters, digits, '_', '=' or '-', "
                           f"got {given[:60]!r}") from None


def _job_parameters(data: bytes, capability: str, max_bytes: int) -> dict[str, Any] | None:
    """The parameters of a job as the stream holds it, or None if they cannot be read.

    Read for comparison only: the envelope is parsed, not verified (nothing is
    admitted, so the node's replay protection never sees it).
    """
    try:
        if looks_like_envelope(data):
            body = parse_envelope(data, max_bytes=max_bytes).body
        elif looks_like_json(data):
            body = decode_json(data, max_bytes=max_bytes)
        else:
            return None
        if is_boxed(body):
            return None
        return Task.from_dict(body, task_type=capability).parameters
    except (AgoraError, TypeError, ValueError):
        return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(getattr(error, "message", None) or error).split()) \
        or type(error).__name__
    return text if len(text) <= CLIENT_TEXT else text[:CLIENT_TEXT] + "…"


class _BodyLost(Exception):
    """The request's body did not arrive whole: the client hung up, or broke its encoding."""


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
    one. ``jobs_config``: the durable jobs' settings (their JetStream domain; the
    limits of a job store this API creates), default :class:`JobsConfig`.
    Stopping gives requests in progress 2 s to finish.
    """

    what = serves = "the HTTP API"

    def __init__(self, dispatcher: Dispatcher, *, host: str = "127.0.0.1", port: int = 0,
                 agent_id: str | None = None, timeout: float = 120.0, task_timeout: float = 30.0,
                 max_body: int = MAX_BODY, max_concurrent: int = 32,
                 token: str | None = None, jobs_config: JobsConfig | None = None) -> None:
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
        self._jobs_config = jobs_config
        self._jobs: Jobs | None = None

    def application(self) -> web.Application:
        """The aiohttp application (routes, the JSON error and the token middleware)."""
        app = web.Application(client_max_size=self.max_body,
                              middlewares=[self._errors, self._authenticate])
        app.router.add_get("/api/health", self._health)
        app.router.add_get("/api/agents", self._agents)
        app.router.add_post("/api/tasks", self._tasks)
        app.router.add_get("/api/tasks/{task_id}", self._task_result)
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
        except _BodyLost as exc:  # the client's doing, and it has likely gone: no trace
            log.debug("%s %s: the body did not arrive: %s", request.method, request.path, exc)
            return _error(400, "InvalidInput", f"the body did not arrive whole: {exc}")
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
        _only_query(request, "capability")
        pattern = request.query.get("capability")
        cards = (self.dispatcher.agents() if pattern is None
                 else self.dispatcher.select(f"capability:{pattern}"))
        listed = []
        for card in cards:
            entry = self.dispatcher.directory.get(card.id)
            listed.append({**card.as_dict(), "status": entry.status.as_dict() if entry else None})
        return _json({"agents": listed})

    async def _tasks(self, request: web.Request) -> web.Response:
        _only_query(request, "wait")
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
        timeout = body.get("timeout")
        if "timeout" in body and (not isinstance(timeout, int | float)
                                  or isinstance(timeout, bool) or not 0 < timeout <= self.timeout):
            raise InvalidInput(f"'timeout' must be a number of seconds above 0 and at most "
                               f"{self.timeout:g}")
        priority = body.get("priority", 5)
        if type(priority) is not int or not 0 <= priority <= 10:
            raise InvalidInput("'priority' must be an integer from 0 to 10")
        durable, task_id = self._durability(request, body)
        wait = self._wait(request)
        if durable and (strategy is not Strategy.AUCTION or agent_id is not None):
            raise InvalidInput("'strategy' and 'agent_id' do not apply to a durable task: the "
                               "node that takes it from the job stream auctions it")
        if not durable and wait is not None:
            raise InvalidInput(f"'?wait' is for durable tasks (an {IDEMPOTENCY_KEY} header or "
                               f"\"durable\": true); any other task is waited for ('timeout')")
        too_large = self._oversize(capability, parameters)
        if too_large is not None:
            return too_large
        if durable:
            return await self._durable(capability, parameters, task_id=task_id,
                                       priority=priority, timeout=timeout, wait=wait)
        wait_for = float(self.task_timeout if timeout is None else timeout)
        async with self._slot(wait_for):
            result = await self.dispatcher.submit(capability, parameters, agent_id=agent_id,
                                                  strategy=strategy, timeout=wait_for,
                                                  priority=priority)
        return _json(result.as_dict())

    # --- durable tasks ---------------------------------------------------------------------

    @property
    def jobs(self) -> Jobs:
        """The durable jobs client of this API (made on first use, over the dispatcher's bus)."""
        if self._jobs is None:
            self._jobs = Jobs(self.dispatcher.bus, self._jobs_config)
        return self._jobs

    @staticmethod
    def _durability(request: web.Request, body: dict[str, Any]) -> tuple[bool, str | None]:
        """Whether the task is durable, and its task id if the client chose it."""
        durable = body.get("durable")
        if durable is not None and not isinstance(durable, bool):
            raise InvalidInput("'durable' must be true or false")
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None:
            return bool(durable), None
        if durable is False:
            raise InvalidInput(f"an {IDEMPOTENCY_KEY} header makes the task durable, and the "
                               f"body says \"durable\": false")
        return True, _task_id(key, f"the {IDEMPOTENCY_KEY} header is the durable task id:")

    def _wait(self, request: web.Request) -> float | None:
        """``?wait=SECONDS``: above 0 and at most ``timeout``; None without it."""
        given = request.query.get("wait")
        if given is None:
            return None
        try:
            wait = float(given)
        except ValueError:
            wait = math.nan
        if not 0 < wait <= self.timeout:  # False for NaN
            raise InvalidInput(f"'wait' must be a number of seconds above 0 and at most "
                               f"{self.timeout:g}, got {given[:40]!r}")
        return wait

    async def _durable(self, capability: str, parameters: dict[str, Any], *,
                       task_id: str | None, priority: int, timeout: float | None,
                       wait: float | None) -> web.Response:
        """Store the task as a job; 202 at once, or its result if it comes within ``wait``.

        With a task id (the Idempotency-Key): a result stored under it is answered
        without submitting anything, and a job still in the stream under it must be
        the same task (capability and parameters), else 409.
        """
        jobs = self.jobs
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.timeout
        reach = min(_JOBS_TIMEOUT, self.timeout)
        async with self._slot(self.timeout):
            result: TaskResult | None = None
            if task_id is not None:
                await jobs.js.ensure(timeout=reach)
                result = await jobs.result(task_id)
            if result is not None:
                job_id, duplicate = task_id, True
            else:
                receipt = await jobs.submit(
                    capability, parameters, task_id=task_id, priority=priority, timeout=reach,
                    deadline=None if timeout is None else time.time() + timeout)
                job_id, duplicate = receipt.task_id, receipt.duplicate
                if duplicate:
                    conflict = await self._conflict(receipt, capability, parameters)
                    if conflict is not None:
                        return _error(409, "Conflict", conflict)
                if wait is not None:
                    result = await self._await_result(job_id, min(wait, ends - loop.time()))
        if result is not None and wait is not None:
            return _json(result.as_dict())
        location = f"/api/tasks/{job_id}"
        return _json({"task_id": job_id, "status": "PENDING", "duplicate": duplicate,
                      "result_url": location}, 202, Location=location)

    async def _conflict(self, receipt: JobReceipt, capability: str,
                        parameters: dict[str, Any]) -> str | None:
        """Why the job the stream already holds under this task id is another task, or None.

        Only a job still in the stream (queued or running) can be compared: once done,
        a work queue keeps nothing of it, and its result does not say what it was for.
        """
        jobs = self.jobs
        stored = await jobs.js.get_message(jobs.js.names.stream, seq=receipt.seq)
        if stored is None or stored.headers.get("Nats-Msg-Id") != receipt.task_id:
            return None
        bus = self.dispatcher.bus
        theirs = bus.subjects.capability_of(stored.subject)
        prefix = f"{IDEMPOTENCY_KEY} {receipt.task_id!r} is in use by a queued or running task"
        if theirs is None:
            return None
        if theirs != capability:
            return f"{prefix} of capability {theirs!r}, not {capability!r}"
        queued = _job_parameters(stored.data, theirs, bus.config.envelope.max_bytes)
        if queued is not None and queued != parameters:
            return f"{prefix} with other parameters"
        return None

    async def _await_result(self, task_id: str, wait: float) -> TaskResult | None:
        """The result of ``task_id`` if it is stored within ``wait`` seconds, else None."""
        if wait <= 0:
            return None
        try:
            return await self.jobs.wait(task_id, timeout=wait)
        except BusTimeout:
            return None

    async def _task_result(self, request: web.Request) -> web.Response:
        _only_query(request, "wait")
        task_id = _task_id(request.match_info["task_id"], "a durable task id is")
        wait = self._wait(request)
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.timeout
        async with self._slot(self.timeout):
            await self.jobs.js.ensure(timeout=min(_JOBS_TIMEOUT, self.timeout))
            result = await self.jobs.result(task_id)
            if result is None and wait is not None:
                result = await self._await_result(task_id, min(wait, ends - loop.time()))
        if result is None:
            raise JobNotFound(f"no result for task {task_id} yet: it is queued, running or "
                              f"unknown, or its result expired")
        return _json(result.as_dict())

    async def _collaborate(self, request: web.Request) -> web.Response:
        collaboration_request = CollaborationRequest.from_dict(await self._body(request))
        collaboration = Collaboration(self.dispatcher, timeout=self.timeout,
                                      task_timeout=self.task_timeout)
        async with self._slot(self.timeout):
            result = await collaboration.run(collaboration_request)
        return _json(result)

    def _oversize(self, capability: str, parameters: dict[str, Any]) -> web.Response | None:
        """A 413 for a task that cannot be sent in one message on the mesh, else None.

        Checked here, before sending, because an OversizeEnvelope raised by the
        dispatcher cannot be told from one an agent answered with (a 502). A
        body within ``max_body`` can still be too large once encoded: msgpack
        writes each JSON number of a few characters in up to 9 bytes.
        """
        bus = self.dispatcher.bus
        limit = bus.config.envelope.max_bytes
        with contextlib.suppress(NotConnected):  # submit answers NotConnected itself
            limit = min(limit, bus.nats.max_payload)  # a server of our own, or one we joined
        try:
            encoded = len(msgpack.packb({"task_type": capability, "parameters": parameters},
                                        use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # an integer beyond 64 bits
            raise InvalidInput(f"'parameters' cannot be sent on the mesh: {exc}") from None
        if encoded + _ENVELOPE_ROOM <= limit:
            return None
        message = (f"the task is {encoded} bytes once encoded for the mesh; with its envelope "
                   f"it must fit in {limit} bytes (the mesh's message limit)")
        return _error(413, OversizeEnvelope.__name__, message)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        if content_type is None or not _is_json(content_type):
            given = ("no Content-Type" if content_type is None
                     else f"Content-Type {content_type[:100]!r}")
            raise web.HTTPUnsupportedMediaType(
                text=f"the body must be JSON and the request has {given}; "
                     f"send Content-Type: application/json")
        if request.content_length is not None and request.content_length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body,
                                                actual_size=request.content_length)
        try:
            raw = await request.read()
        except _BODY_LOST as exc:
            raise _BodyLost(_one_line(exc)) from None
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
