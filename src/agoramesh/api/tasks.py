"""The task routes of the HTTP API: ``POST /api/tasks`` and ``GET /api/tasks/{id}``.

A task is run where the client asks (``strategy``, ``agent_id``) and its result
answered, or it is durable (:mod:`agoramesh.protocols.jobs.jobs`: stored in JetStream,
run by whichever node takes it, its result stored once by task id) when the POST has
an ``Idempotency-Key`` header, whose value is its task id (1-128 of ``A-Z a-z 0-9 _ =
-``), or ``"durable": true`` (a fresh id); ``"durable": false`` with a key,
``strategy: direct`` or ``agent_id`` are a 400. Its ``timeout``, if given, becomes its
deadline; its ``callback``, if given, is a subject the agent that runs it also
publishes the final result on (PROTOCOL.md §15). The answer is 202 at once; with
``?wait=SECONDS`` (at most ``timeout``) the result if it is stored in time (200), else
the 202. The key is the idempotency key end to end, so the same key twice runs the
task once: a result already stored under it is answered (``duplicate: true``) without
submitting anything; a key the stream has seen within its duplicate window
(``duplicate: true``) whose job is still there (queued or running) is compared with
the request, and another capability, other parameters or another callback are a 409
``Conflict``. That is all that is checked: a finished job is gone from the stream and
its result does not say what task it was for, so a key reused for another task after
the first one finished answers the first one's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from agoramesh.api.json_http import error_response, json_response, only_query, read_json
from agoramesh.bus.envelope import is_boxed, looks_like_envelope
from agoramesh.bus.envelope import parse as parse_envelope
from agoramesh.bus.ingress import decode_json, looks_like_json
from agoramesh.bus.jetstream import valid_task_id
from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import (
    AgoraError,
    BusTimeout,
    InvalidRequest,
    InvalidTask,
    JobNotFound,
    NotConnected,
    OversizeEnvelope,
    SubjectError,
)
from agoramesh.nodes.task import Task, TaskResult, validate_callback
from agoramesh.protocols.allocation.dispatch import Strategy
from agoramesh.protocols.jobs.jobs import JobReceipt

if TYPE_CHECKING:
    from agoramesh.api.server import HttpApi

__all__ = ("IDEMPOTENCY_KEY", "TaskRoutes")

#: The header that makes a POST /api/tasks durable; its value is the task id.
IDEMPOTENCY_KEY = "Idempotency-Key"
_TASK_FIELDS = ("capability", "parameters", "strategy", "agent_id", "timeout", "priority",
                "durable", "callback")
# How long a durable POST or result read may take to reach JetStream (and create the
# job store where it is missing), within the API's own timeout.
_JOBS_TIMEOUT = 10.0
# Room a task needs on the mesh beyond its own encoding: the envelope's fields,
# signature and encryption box, and what a call for proposals or an award adds.
_ENVELOPE_ROOM = 4096


def _task_id(given: str, what: str) -> str:
    """``given`` if it is a valid durable task id, else an InvalidRequest starting ``what``."""
    try:
        return valid_task_id(given)
    except InvalidTask:
        raise InvalidRequest(f"{what} 1-128 letters, digits, '_', '=' or '-', "
                             f"got {given[:60]!r}") from None


def _queued_task(data: bytes, capability: str, max_bytes: int) -> Task | None:
    """A job's task as the stream holds it, or None if it cannot be read.

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
        return Task.from_dict(body, capability=capability)
    except (AgoraError, TypeError, ValueError):
        return None


class TaskRoutes:
    """The handlers of ``/api/tasks`` for one :class:`~agoramesh.api.server.HttpApi`,
    whose dispatcher, durable jobs, limits and slots they use."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /api/tasks``: run a task and answer its result, or store a durable one."""
        api = self.api
        only_query(request, "wait")
        body = await read_json(request, api.max_body)
        unknown = sorted(str(key) for key in body if key not in _TASK_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown task field(s) {', '.join(unknown)[:200]}; "
                                 f"expected {', '.join(_TASK_FIELDS)}")
        try:
            capability = validate_capability(body.get("capability"))
        except SubjectError as exc:
            raise InvalidRequest(f"'capability': {exc}") from None
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidRequest("'parameters' must be an object")
        try:
            strategy = Strategy(body.get("strategy", Strategy.AUCTION))
        except ValueError:
            raise InvalidRequest("'strategy' must be 'auction' or 'direct'") from None
        agent_id = body.get("agent_id")
        if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
            raise InvalidRequest("'agent_id' must be an agent id string")
        timeout = body.get("timeout")
        if "timeout" in body and (not isinstance(timeout, int | float)
                                  or isinstance(timeout, bool) or not 0 < timeout <= api.timeout):
            raise InvalidRequest(f"'timeout' must be a number of seconds above 0 and at most "
                                 f"{api.timeout:g}")
        priority = body.get("priority", 5)
        if type(priority) is not int or not 0 <= priority <= 10:
            raise InvalidRequest("'priority' must be an integer from 0 to 10")
        callback = body.get("callback")
        if callback is not None:
            try:
                callback = validate_callback(callback)
            except InvalidTask as exc:
                raise InvalidRequest(f"'callback': {exc}") from None
        durable, task_id = self._durability(request, body)
        wait = self._wait(request)
        if durable and (strategy is not Strategy.AUCTION or agent_id is not None):
            raise InvalidRequest("'strategy' and 'agent_id' do not apply to a durable task: the "
                                 "node that takes it from the job stream auctions it")
        if not durable and wait is not None:
            raise InvalidRequest(f"'?wait' is for durable tasks (an {IDEMPOTENCY_KEY} header or "
                                 f"\"durable\": true); any other task is waited for ('timeout')")
        too_large = self._oversize(capability, parameters)
        if too_large is not None:
            return too_large
        if durable:
            return await self._durable(capability, parameters, task_id=task_id,
                                       priority=priority, timeout=timeout, wait=wait,
                                       callback=callback)
        wait_for = float(api.task_timeout if timeout is None else timeout)
        async with api.slot(wait_for):
            result = await api.dispatcher.submit(capability, parameters, agent_id=agent_id,
                                                 strategy=strategy, timeout=wait_for,
                                                 priority=priority, callback=callback)
        return json_response(result.as_dict())

    async def result(self, request: web.Request) -> web.Response:
        """``GET /api/tasks/{task_id}``: a durable task's stored result (404 while none)."""
        api = self.api
        only_query(request, "wait")
        task_id = _task_id(request.match_info["task_id"], "a durable task id is")
        wait = self._wait(request)
        loop = asyncio.get_running_loop()
        ends = loop.time() + api.timeout
        async with api.slot(api.timeout):
            await api.jobs.js.ensure(timeout=min(_JOBS_TIMEOUT, api.timeout))
            result = await api.jobs.result(task_id)
            if result is None and wait is not None:
                result = await self._await_result(task_id, min(wait, ends - loop.time()))
        if result is None:
            raise JobNotFound(f"no result for task {task_id} yet: it is queued, running or "
                              f"unknown, or its result expired")
        return json_response(result.as_dict())

    @staticmethod
    def _durability(request: web.Request, body: dict[str, Any]) -> tuple[bool, str | None]:
        """Whether the task is durable, and its task id if the client chose it."""
        durable = body.get("durable")
        if durable is not None and not isinstance(durable, bool):
            raise InvalidRequest("'durable' must be true or false")
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None:
            return bool(durable), None
        if durable is False:
            raise InvalidRequest(f"an {IDEMPOTENCY_KEY} header makes the task durable, and the "
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
        if not 0 < wait <= self.api.timeout:  # False for NaN
            raise InvalidRequest(f"'wait' must be a number of seconds above 0 and at most "
                                 f"{self.api.timeout:g}, got {given[:40]!r}")
        return wait

    async def _durable(self, capability: str, parameters: dict[str, Any], *,
                       task_id: str | None, priority: int, timeout: float | None,
                       wait: float | None, callback: str | None) -> web.Response:
        """Store the task as a job; 202 at once, or its result if it comes within ``wait``.

        With a task id (the Idempotency-Key): a result stored under it is answered
        without submitting anything, and a job still in the stream under it must be
        the same task (capability and parameters), else 409.
        """
        api = self.api
        jobs = api.jobs
        loop = asyncio.get_running_loop()
        ends = loop.time() + api.timeout
        reach = min(_JOBS_TIMEOUT, api.timeout)
        async with api.slot(api.timeout):
            result: TaskResult | None = None
            if task_id is not None:
                await jobs.js.ensure(timeout=reach)
                result = await jobs.result(task_id)
            if result is not None:
                job_id, duplicate = task_id, True
            else:
                receipt = await jobs.submit(
                    capability, parameters, task_id=task_id, priority=priority, timeout=reach,
                    deadline=None if timeout is None else time.time() + timeout,
                    callback=callback)
                job_id, duplicate = receipt.task_id, receipt.duplicate
                if duplicate:
                    conflict = await self._conflict(receipt, capability, parameters, callback)
                    if conflict is not None:
                        return error_response(409, "Conflict", conflict)
                if wait is not None:
                    result = await self._await_result(job_id, min(wait, ends - loop.time()))
        if result is not None and wait is not None:
            return json_response(result.as_dict())
        location = f"/api/tasks/{job_id}"
        return json_response({"task_id": job_id, "status": "PENDING", "duplicate": duplicate,
                              "result_url": location}, 202, Location=location)

    async def _conflict(self, receipt: JobReceipt, capability: str,
                        parameters: dict[str, Any], callback: str | None) -> str | None:
        """Why the job the stream already holds under this task id is another task, or None.

        Only a job still in the stream (queued or running) can be compared: once done,
        a work queue keeps nothing of it, and its result does not say what it was for.
        """
        jobs = self.api.jobs
        stored = await jobs.js.get_message(jobs.js.names.stream, seq=receipt.seq)
        if stored is None or stored.headers.get("Nats-Msg-Id") != receipt.task_id:
            return None
        bus = self.api.dispatcher.bus
        theirs = bus.subjects.capability_of(stored.subject)
        prefix = f"{IDEMPOTENCY_KEY} {receipt.task_id!r} is in use by a queued or running task"
        if theirs is None:
            return None
        if theirs != capability:
            return f"{prefix} of capability {theirs!r}, not {capability!r}"
        queued = _queued_task(stored.data, theirs, bus.config.envelope.max_bytes)
        if queued is not None and queued.parameters != parameters:
            return f"{prefix} with other parameters"
        if queued is not None and queued.callback != callback:
            return f"{prefix} with another callback ({queued.callback or 'none'})"
        return None

    async def _await_result(self, task_id: str, wait: float) -> TaskResult | None:
        """The result of ``task_id`` if it is stored within ``wait`` seconds, else None."""
        if wait <= 0:
            return None
        try:
            return await self.api.jobs.wait(task_id, timeout=wait)
        except BusTimeout:
            return None

    def _oversize(self, capability: str, parameters: dict[str, Any]) -> web.Response | None:
        """A 413 for a task that cannot be sent in one message on the mesh, else None.

        Checked here, before sending, because an OversizeEnvelope raised by the
        dispatcher cannot be told from one an agent answered with (a 502). A
        body within ``max_body`` can still be too large once encoded: msgpack
        writes each JSON number of a few characters in up to 9 bytes.
        """
        bus = self.api.dispatcher.bus
        limit = bus.config.envelope.max_bytes
        with contextlib.suppress(NotConnected):  # submit answers NotConnected itself
            limit = min(limit, bus.nats.max_payload)  # a server of our own, or one we joined
        try:
            encoded = len(msgpack.packb({"task_type": capability, "parameters": parameters},
                                        use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # an integer beyond 64 bits
            raise InvalidRequest(f"'parameters' cannot be sent on the mesh: {exc}") from None
        if encoded + _ENVELOPE_ROOM <= limit:
            return None
        message = (f"the task is {encoded} bytes once encoded for the mesh; with its envelope "
                   f"it must fit in {limit} bytes (the mesh's message limit)")
        return error_response(413, OversizeEnvelope.__name__, message)
